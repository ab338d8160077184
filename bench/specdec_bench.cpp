// specdec-bench: end-to-end speculative decoding benchmark on draft -> target pairs.
//
// For a fixed prompt set it runs, for every model pair and thread count requested,
// autoregressive decoding of the target (the baseline), speculative decoding (greedy
// with a gamma sweep, confidence_stop, sampled, adaptive gamma) and BiLD over a sweep of thresholds, all
// in one process, each run paired prompt by prompt with a baseline run right before it
// (min over --repeats of both: the machine may be shared), and writes one JSON document and (with --csv) one CSV row per run:
// tokens/s, speedup over the baseline, acceptance, the speedup the analytic formula
// predicts from the measured acceptance rate and cost ratio, a refined prediction that
// uses the measured cost of a (gamma+1)-token target block instead of assuming it costs
// one forward, the speedup of the decode phase alone (after each generation's first step,
// i.e. without the prompt's prefill, which the formula does not model) and its ratio to
// the formula, the framework overhead (policy_seconds / total_seconds), whether greedy
// output is identical to the baseline, and for lossy methods the agreement with the
// target's greedy output and the target's perplexity of the generated text.
//
// Pairs: "little" = kjv-little (--draft-format) -> kjv-big (--format); "self" = kjv-big
// in --self-draft-format (default q8_0) -> kjv-big (--format): self-speculative decoding
// with the same weights at lower precision.
//
//   specdec-bench [--pairs little,self] [--threads 1,2] [--format fp32] [--draft-format fp32]
//                 [--self-draft-format q8_0] [--kv-format fp32] [--draft-kv-format fp32]
//                 [--draft models/kjv-little.bin]
//                 [--target models/kjv-big.bin] [--tokenizer models/kjv2k-tokenizer.bin]
//                 [--tokens 96] [--repeats 3] [--prompts models/kjv_val_openings.tsv]
//                 [--gammas 1,2,3,4,5,6,8,10] [--confidences 0.3,0.5] [--max-draft 8]
//                 [--quick] [--no-bild] [--json out.json] [--csv out.csv]
//
// --confidences: the thresholds of the lossless `confidence_stop` runs (empty list = none).
// The table on stderr also gives the mean in-loop milliseconds per draft and per target
// call (from the telemetry), next to the isolated costs printed above it.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "specdec/backend/cpu/tokenizer.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/decoder.hpp"
#include "specdec/distance.hpp"
#include "specdec/fallback.hpp"
#include "specdec/rollback.hpp"
#include "specdec/sampling.hpp"
#include "specdec/telemetry.hpp"

#include "args.hpp"
#include "held_out_prompts.hpp"
#include "speedup_formula.hpp"

namespace {

using specdec::bench::formula_speedup;
using specdec::bench::refined_speedup;

using specdec::token_id;
using specdec::cpu::transformer;

struct bench_options {
  std::vector<std::string> pairs{"little", "self"};
  std::vector<std::size_t> threads{0};
  specdec::cpu::weight_format format = specdec::cpu::weight_format::fp32;
  specdec::cpu::weight_format draft_format = specdec::cpu::weight_format::fp32;
  specdec::cpu::weight_format self_draft_format = specdec::cpu::weight_format::q8_0;
  specdec::cpu::weight_format kv_format = specdec::cpu::weight_format::fp32;        ///< target's KV cache
  specdec::cpu::weight_format draft_kv_format = specdec::cpu::weight_format::fp32;  ///< draft's KV cache
  std::string csv;
  bool bild = true;
  std::string draft = SPECDEC_MODELS_DIR "/kjv-little.bin";
  std::string target = SPECDEC_MODELS_DIR "/kjv-big.bin";
  std::string tokenizer = SPECDEC_MODELS_DIR "/kjv2k-tokenizer.bin";
  std::string json;  // written only when given
  std::string prompts = SPECDEC_MODELS_DIR "/kjv_val_openings.tsv";
  std::size_t tokens = 96;
  int repeats = 3;
  bool quick = false;
  std::vector<std::size_t> gammas;  // fixed-gamma sweep; empty = the default sweep
  std::vector<float> confidences{0.3f, 0.5f};  // confidence_stop sweep
  std::size_t max_draft = 8;                    // confidence_stop's cap
  std::optional<std::size_t> draft_threads;     // unset = the target's thread count
};

struct run_record {
  std::string method;
  std::string config;
  std::size_t gamma = 0;          // fixed gamma, 0 otherwise
  float alpha_fb = 0, alpha_rb = 0;  // BiLD thresholds, 0 otherwise
  double seconds = 0;
  std::size_t tokens = 0;
  specdec::generation_stats stats;
  std::vector<std::vector<token_id>> outputs;
  double ppl = 0;
  double base_seconds = 0;     // the paired autoregressive baseline runs
  std::size_t base_tokens = 0;
  // The decode phase (after each generation's first step, i.e. without the prompt's
  // prefill; see generation_stats::decode_tokens_per_second), best repeat per prompt.
  double decode_seconds = 0, base_decode_seconds = 0;
  std::size_t decode_tokens = 0, base_decode_tokens = 0;
};

// A generation's decode phase: seconds and tokens after its first step.
struct decode_phase {
  double seconds = 1e30;
  std::size_t tokens = 0;
  void keep_best(const specdec::generation_stats& s) {
    const double t = s.total_seconds - s.first_token_seconds;
    if (t < seconds) {
      seconds = t;
      tokens = s.tokens_emitted - s.first_step_tokens;
    }
  }
};

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Runs `generate(prompt)` over all prompts, each prompt `repeats` times, and right
// before each run the baseline `base(prompt)` on the same prompt: the two see the same
// machine conditions (the machine may be shared), and per prompt the minimum time over
// the repeats is kept for both. Speedups are then ratios of paired measurements. Keeps
// the outputs of the last repeat; the telemetry of all repeats is merged.
template <class Generate, class Baseline>
run_record measure(std::string method, std::string config, const std::vector<std::vector<token_id>>& encoded,
                   int repeats, Generate&& generate, Baseline&& base) {
  run_record r;
  r.method = std::move(method);
  r.config = std::move(config);
  for (const auto& p : encoded) {
    double best = 1e30, best_base = 1e30;
    std::size_t tokens = 0, base_tokens = 0;
    decode_phase decode, base_decode;
    std::vector<token_id> out;
    for (int rep = 0; rep < repeats; ++rep) {
      double t0 = now();
      specdec::generation_result b = base(p);
      best_base = std::min(best_base, now() - t0);
      base_tokens = b.tokens.size();
      base_decode.keep_best(b.stats);
      t0 = now();
      specdec::generation_result res = generate(p);
      best = std::min(best, now() - t0);
      tokens = res.tokens.size();
      decode.keep_best(res.stats);
      r.stats.merge(res.stats);
      out = std::move(res.tokens);
    }
    r.seconds += best;
    r.tokens += tokens;
    r.base_seconds += best_base;
    r.base_tokens += base_tokens;
    r.decode_seconds += decode.seconds;
    r.decode_tokens += decode.tokens;
    r.base_decode_seconds += base_decode.seconds;
    r.base_decode_tokens += base_decode.tokens;
    r.outputs.push_back(std::move(out));
  }
  return r;
}

// Mean negative log-likelihood per generated token under `model` (perplexity = exp of it).
double target_nll(transformer& model, const std::vector<token_id>& prompt, const std::vector<token_id>& gen) {
  if (gen.empty()) return 0.0;
  std::vector<token_id> all(prompt);
  all.insert(all.end(), gen.begin(), gen.end());
  all.resize(std::min(all.size(), model.context_length()));
  model.reset();
  specdec::logits_block out = model.forward(all);
  double nll = 0;
  std::size_t n = 0;
  std::vector<float> p(model.vocab_size());
  for (std::size_t i = prompt.size() - 1; i + 1 < all.size(); ++i) {
    specdec::softmax(out.row(i), p);
    nll -= std::log(std::max(1e-30, double(p[static_cast<std::size_t>(all[i + 1])])));
    ++n;
  }
  return n ? nll / double(n) : 0.0;
}

double agreement(const std::vector<std::vector<token_id>>& a, const std::vector<std::vector<token_id>>& b) {
  std::size_t same = 0, total = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    for (std::size_t j = 0; j < b[i].size(); ++j, ++total)
      if (j < a[i].size() && a[i][j] == b[i][j]) ++same;
  }
  return total ? double(same) / double(total) : 0.0;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Per-call seconds of a k-token forward at position `at` (min over repetitions).
double time_block(transformer& m, std::size_t k, std::size_t at, int calls, int reps) {
  std::vector<token_id> ctx(at), block(k);
  for (std::size_t i = 0; i < at; ++i) ctx[i] = static_cast<token_id>((i * 37 + 1) % m.vocab_size());
  for (std::size_t i = 0; i < k; ++i) block[i] = static_cast<token_id>((i * 101 + 7) % m.vocab_size());
  m.reset();
  m.forward(ctx);
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_seconds();
    for (int i = 0; i < calls; ++i) {
      m.truncate(at);
      m.forward(block);
    }
    best = std::min(best, (now_seconds() - t0) / calls);
  }
  m.reset();
  return best;
}

std::string csv_quote(const std::string& s) { return "\"" + s + "\""; }


struct pair_result {
  std::string pair, draft_path, target_path;
  std::string draft_format, target_format;
  std::size_t threads = 0;
  double t_target = 0, t_draft = 0, cost_ratio = 0;
  std::vector<double> block_cost;  // block_cost[k] = T(k tokens) / T(1 token), k = 0..12
  std::vector<run_record> runs;
};

// All runs of one pair at one thread count.
pair_result run_pair(const bench_options& o, const std::string& pair, std::size_t threads,
                     const std::vector<std::vector<token_id>>& encoded) {
  using specdec::cpu::weight_format;
  pair_result pr;
  pr.pair = pair;
  const bool self = pair == "self";
  if (!self && pair != "little")
    throw specdec::invalid_argument("--pairs: unknown pair '" + pair + "'; expected little or self");
  const weight_format df = self ? o.self_draft_format : o.draft_format;
  auto target_ck = std::make_shared<const specdec::cpu::checkpoint>(specdec::cpu::load_checkpoint(o.target));
  auto draft_ck = self ? target_ck
                       : std::make_shared<const specdec::cpu::checkpoint>(specdec::cpu::load_checkpoint(o.draft));
  transformer target(target_ck, {.threads = threads, .format = o.format, .kv_format = o.kv_format});
  transformer draft(draft_ck, {.threads = o.draft_threads.value_or(threads), .format = df, .kv_format = o.draft_kv_format});
  pr.draft_path = self ? o.target : o.draft;
  pr.target_path = o.target;
  // "bf16" or, with a 16-bit KV cache, "bf16+kv_fp16" (the CSV columns stay the same).
  const auto describe = [](weight_format w, weight_format kv) {
    std::string d(specdec::cpu::to_string(w));
    if (kv != weight_format::fp32) d += "+kv_" + std::string(specdec::cpu::to_string(kv));
    return d;
  };
  pr.draft_format = describe(df, o.draft_kv_format);
  pr.target_format = describe(o.format, o.kv_format);
  pr.threads = target.options().threads;

  const specdec::generation_options gen{.max_new_tokens = o.tokens, .stop_at_eos = false};
  const specdec::sampling_params greedy{}, sampled{.temperature = 1.0f};

  // Cost ratio c: one draft forward over one target forward, and the target's block
  // cost curve, at a position typical of the runs (prompt ~16 tokens + half the output).
  const std::size_t at = std::min<std::size_t>(16 + o.tokens / 2, target.context_length() - 16);
  pr.t_target = time_block(target, 1, at, 20, 7);
  pr.t_draft = time_block(draft, 1, at, 20, 7);
  pr.cost_ratio = pr.t_draft / pr.t_target;
  pr.block_cost.assign(13, 0.0);
  for (std::size_t k = 1; k <= 12; ++k) pr.block_cost[k] = time_block(target, k, at, 10, 5) / pr.t_target;
  std::cerr << "specdec-bench: pair " << pair << " (" << pr.draft_format << " draft -> " << pr.target_format
            << " target, " << pr.threads << " threads): target forward " << pr.t_target * 1e3 << " ms, draft "
            << pr.t_draft * 1e3 << " ms, c = " << pr.cost_ratio << ", block of 5 = " << pr.block_cost[5]
            << " x one token\n";

  std::vector<run_record>& runs = pr.runs;
  runs.reserve(64);
  specdec::autoregressive_decoder ar_greedy(target, greedy, 1), ar_sampled(target, sampled, 1);
  auto base_greedy = [&](const auto& p) { return ar_greedy.generate(p, gen); };
  auto base_sampled = [&](const auto& p) { return ar_sampled.generate(p, gen); };
  runs.push_back(measure("ar", "greedy", encoded, o.repeats, base_greedy, base_greedy));
  runs.push_back(measure("ar", "temperature=1", encoded, o.repeats, base_sampled, base_sampled));

  std::vector<std::size_t> gammas = !o.gammas.empty() ? o.gammas
                                     : o.quick         ? std::vector<std::size_t>{4}
                                                       : std::vector<std::size_t>{1, 2, 3, 4, 5, 6, 8, 10};
  for (std::size_t g : gammas) {
    specdec::speculative_decoder dec(draft, target, specdec::fixed_gamma{.gamma = g}, specdec::greedy_match{}, greedy, 1);
    runs.push_back(measure("sd", "greedy gamma=" + std::to_string(g), encoded, o.repeats,
                           [&](const auto& p) { return dec.generate(p, gen); }, base_greedy));
    runs.back().gamma = g;
  }
  for (float conf : o.confidences) {
    const specdec::confidence_stop stop{.min_confidence = conf, .max_draft = o.max_draft};
    specdec::speculative_decoder dec(draft, target, stop, specdec::greedy_match{}, greedy, 1);
    std::ostringstream name;
    name << "greedy confidence_stop(" << conf << ", max " << o.max_draft << ")";
    runs.push_back(measure("sd", name.str(), encoded, o.repeats, [&](const auto& p) { return dec.generate(p, gen); },
                           base_greedy));
  }
  {
    specdec::speculative_decoder dec(draft, target, specdec::fixed_gamma{.gamma = 4}, specdec::rejection_sampling{},
                                     sampled, 1);
    runs.push_back(measure("sd", "temperature=1 gamma=4", encoded, o.repeats,
                           [&](const auto& p) { return dec.generate(p, gen); }, base_sampled));
    runs.back().gamma = 4;
  }
  {
    specdec::speculative_decoder dec(draft, target, specdec::adaptive_gamma{}, specdec::greedy_match{}, greedy, 1);
    runs.push_back(measure("sd", "greedy adaptive_gamma(+2/-1)", encoded, o.repeats,
                           [&](const auto& p) { return dec.generate(p, gen); }, base_greedy));
  }
  {
    specdec::speculative_decoder dec(draft, target, specdec::expected_speedup_gamma{}, specdec::greedy_match{},
                                     greedy, 1);
    runs.push_back(measure("sd", "greedy expected_speedup_gamma", encoded, o.repeats,
                           [&](const auto& p) { return dec.generate(p, gen); }, base_greedy));
  }
  {
    // Seeded with the target's verify-cost curve measured here: an untimed block size is
    // priced by the curve's shape, not as the nearest timed size.
    const std::vector<double> curve = specdec::measure_verify_cost(target, 17, {.trees = false}).chain;
    specdec::speculative_decoder dec(draft, target, specdec::expected_speedup_gamma{.block_seconds_prior = curve},
                                     specdec::greedy_match{}, greedy, 1);
    runs.push_back(measure("sd", "greedy expected_speedup_gamma(curve)", encoded, o.repeats,
                           [&](const auto& p) { return dec.generate(p, gen); }, base_greedy));
  }
  {
    // The same policy serving all the prompts in turn, learning across them (carry_over).
    // measure() runs each prompt `repeats` times in a row, so the first repeat of a prompt
    // already starts from what the earlier prompts taught.
    specdec::speculative_decoder dec(draft, target, specdec::expected_speedup_gamma{.carry_over = true},
                                     specdec::greedy_match{}, greedy, 1);
    runs.push_back(measure("sd", "greedy expected_speedup_gamma(carry)", encoded, o.repeats,
                           [&](const auto& p) { return dec.generate(p, gen); }, base_greedy));
  }
  if (o.bild) {
    std::vector<float> fbs = o.quick ? std::vector<float>{0.6f} : std::vector<float>{0.3f, 0.5f, 0.7f, 0.9f};
    std::vector<float> rbs = o.quick ? std::vector<float>{5.0f} : std::vector<float>{1.0f, 3.0f, 8.0f};
    for (float fb : fbs) {
      for (float rb : rbs) {
        specdec::speculative_decoder dec(draft, target, specdec::max_prob_fallback{.alpha_fb = fb, .max_draft = 10},
                                         specdec::distance_rollback<>{.alpha_rb = rb}, greedy, 1);
        std::ostringstream name;
        name << "greedy alpha_fb=" << fb << " alpha_rb=" << rb;
        runs.push_back(measure("bild", name.str(), encoded, o.repeats,
                               [&](const auto& p) { return dec.generate(p, gen); }, base_greedy));
        runs.back().alpha_fb = fb;
        runs.back().alpha_rb = rb;
      }
    }
  }
  // Perplexity under the target needs the target model: compute it here, per run.
  for (auto& r : runs) {
    double nll = 0;
    for (std::size_t p = 0; p < encoded.size(); ++p) nll += target_nll(target, encoded[p], r.outputs[p]);
    r.ppl = std::exp(nll / double(encoded.size()));
  }
  return pr;
}

// Parses argv into `o`; false when --help was printed.
bool parse(int argc, char** argv, bench_options& o) {
  namespace cli = specdec::cli;
  using cli::store;
  const auto count = cli::between<std::size_t>(1, 1 << 20), threads = cli::between<std::size_t>(0, 4095);
  cli::parser p("specdec-bench", "Speculative decoding vs autoregressive decoding on the KJV pair; writes files only "
                                 "where --json / --csv say.");
  p.add("--pairs", "little,self",
        "draft -> target pairs (little: kjv-little -> kjv-big; self: kjv-big\nin --self-draft-format -> kjv-big)",
        [&o](std::string_view opt, std::string_view v) {
          o.pairs = cli::split_list(v);
          for (const auto& pair : o.pairs)
            if (pair != "little" && pair != "self") cli::fail(opt, pair, "is not a pair", "little or self");
          if (o.pairs.empty()) cli::fail(opt, v, "is empty", "a comma-separated list of little and self");
        })
      .add("--threads", "1,2", "thread counts (0 = all cores)", store(o.threads, threads))
      .add("--draft-threads", "N", "the draft's own thread count (default: the target's)", store(o.draft_threads, threads))
      .add("--format", "F", "target weights: fp32, bf16, fp16, q8_0, w8a8 (default fp32)", cli::store_format(o.format))
      .add("--draft-format", "F", "kjv-little weights (default fp32)", cli::store_format(o.draft_format))
      .add("--self-draft-format", "F", "the self pair's draft weights (default q8_0)", cli::store_format(o.self_draft_format))
      .add("--kv-format", "F", "target KV cache: fp32, bf16, fp16", cli::store_format(o.kv_format, true))
      .add("--draft-kv-format", "F", "the draft's KV cache", cli::store_format(o.draft_kv_format, true))
      .add("--gammas", "1,2,...", "fixed draft lengths (default 1,2,3,4,5,6,8,10)", store(o.gammas, cli::between<std::size_t>(1, 1024)))
      .add("--confidences", "0.3,0.5", "confidence_stop thresholds (an empty list: none)",
           [&o](std::string_view opt, std::string_view v) {
             o.confidences = cli::parse_list<float>(opt, v, cli::between(0.0f, 1.0f), /*allow_empty=*/true);
           })
      .add("--max-draft", "N", "confidence_stop's cap (default 8)", store(o.max_draft, cli::between<std::size_t>(1, 1024)))
      .flag("--no-bild", "skip the BiLD sweep", [&o] { o.bild = false; })
      .add("--tokens", "N", "new tokens per prompt (default 96)", store(o.tokens, count))
      .add("--repeats", "N", "best of N (default 3)", store(o.repeats, cli::between(1, 1000)))
      .add("--prompts", "PATH", "held-out prompts (TSV)", store(o.prompts))
      .add("--draft", "PATH", "draft checkpoint", store(o.draft))
      .add("--target", "PATH", "target checkpoint", store(o.target))
      .add("--tokenizer", "PATH", "tokenizer", store(o.tokenizer))
      .flag("--quick", "3 prompts, gamma 4 and one BiLD setting", o.quick)
      .add("--json", "PATH", "write the results as JSON", store(o.json))
      .add("--csv", "PATH", "write one CSV row per run", store(o.csv));
  return p.parse(argc, argv);
}

}  // namespace

int main(int argc, char** argv) try {
  bench_options o;
  if (!parse(argc, argv, o)) return 0;
  // Output files are opened before the benchmark runs, so a bad path fails at once.
  std::ofstream json, csv;
  specdec::cli::open_output("--json", o.json, json);
  specdec::cli::open_output("--csv", o.csv, csv);
  std::size_t vocab = 0;
  {
    auto ck = specdec::cpu::load_checkpoint(o.target);
    vocab = std::size_t(ck.config.vocab_size);
  }
  specdec::cpu::tokenizer tok(o.tokenizer, vocab);
  std::vector<std::vector<token_id>> encoded;
  for (const auto& p : specdec::bench::held_out_prompts(o.prompts, o.quick ? 3 : 12, 8)) encoded.push_back(tok.encode(p));

  std::vector<pair_result> results;
  for (std::size_t threads : o.threads)
    for (const auto& pair : o.pairs) results.push_back(run_pair(o, pair, threads, encoded));

  if (csv.is_open()) {
    csv << "pair,draft_format,target_format,threads,method,config,gamma,alpha_fb,alpha_rb,tokens,seconds,"
           "tokens_per_second,baseline_tokens_per_second,speedup,per_token_acceptance,mean_draft_length,"
           "tokens_per_target_call,cost_ratio,block5_cost,predicted_speedup,refined_predicted_speedup,"
           "achieved_over_predicted,achieved_over_refined,overhead_fraction,identical_to_baseline,"
           "agreement_with_target_greedy,target_perplexity,decode_tokens_per_second,"
           "baseline_decode_tokens_per_second,decode_speedup,decode_achieved_over_predicted\n";
  }
  json << "{\n  \"prompts\": " << encoded.size() << ",\n  \"max_new_tokens\": " << o.tokens << ",\n  \"pairs\": [\n";
  for (std::size_t pi = 0; pi < results.size(); ++pi) {
    const pair_result& pr = results[pi];
    json << "  {\"pair\": \"" << pr.pair << "\", \"target\": \"" << pr.target_path << "\", \"draft\": \""
         << pr.draft_path << "\", \"target_format\": \"" << pr.target_format << "\", \"draft_format\": \""
         << pr.draft_format << "\", \"threads\": " << pr.threads << ", \"target_forward_seconds\": " << pr.t_target
         << ", \"draft_forward_seconds\": " << pr.t_draft << ", \"cost_ratio\": " << pr.cost_ratio
         << ", \"block_cost\": [";
    for (std::size_t k = 1; k < pr.block_cost.size(); ++k) json << (k > 1 ? ", " : "") << pr.block_cost[k];
    json << "],\n   \"runs\": [\n";
    std::fprintf(stderr, "\n== pair %s: %s %s -> %s %s, %zu threads ==\n", pr.pair.c_str(), pr.draft_path.c_str(),
                 pr.draft_format.c_str(), pr.target_path.c_str(), pr.target_format.c_str(), pr.threads);
    std::fprintf(stderr, "%-6s %-36s %8s %7s %7s %8s %7s %7s %7s %7s %7s %6s %7s %7s %5s %6s %7s\n", "method",
                 "config", "tok/s", "speedup", "accept", "tok/call", "formula", "refined", "ach/ref", "decode",
                 "dec/for", "ovhd%", "draft", "target", "same", "agree", "ppl");
    for (std::size_t i = 0; i < pr.runs.size(); ++i) {
      const run_record& r = pr.runs[i];
      const bool is_sampled = r.config.find("temperature=1") != std::string::npos;
      const double tps = r.seconds > 0 ? double(r.tokens) / r.seconds : 0;
      const double base_tps = r.base_seconds > 0 ? double(r.base_tokens) / r.base_seconds : 0;
      const double speedup = base_tps > 0 ? tps / base_tps : 0;
      // The same over the decode phase only (what the formula models: no prefill).
      const double decode_tps = r.decode_seconds > 0 ? double(r.decode_tokens) / r.decode_seconds : 0;
      const double base_decode_tps =
          r.base_decode_seconds > 0 ? double(r.base_decode_tokens) / r.base_decode_seconds : 0;
      const double decode_speedup = base_decode_tps > 0 ? decode_tps / base_decode_tps : 0;
      // Per-token acceptance a: accepted trials over observed trials (each rollback ends
      // one block with one observed rejection).
      const double trials = double(r.stats.draft_tokens_accepted + r.stats.rollbacks);
      const double a = trials > 0 ? double(r.stats.draft_tokens_accepted) / trials : 0;
      const double mean_gamma =
          r.stats.target_calls ? double(r.stats.draft_tokens_proposed) / double(r.stats.target_calls) : 0;
      const double per_call = r.stats.target_calls ? double(r.stats.tokens_emitted) / double(r.stats.target_calls) : 0;
      const double predicted = r.method == "ar" ? 1.0 : formula_speedup(a, mean_gamma, pr.cost_ratio);
      const double refined = r.method == "ar" ? 1.0 : refined_speedup(a, mean_gamma, pr.cost_ratio, pr.block_cost);
      const double overhead = r.stats.total_seconds > 0 ? r.stats.policy_seconds / r.stats.total_seconds : 0;
      const bool identical = !is_sampled && r.outputs == pr.runs[0].outputs;
      const double agree = agreement(r.outputs, pr.runs[0].outputs);
      // Mean in-loop milliseconds per draft call and per target call (all repeats).
      const double draft_ms = r.stats.draft_calls ? 1e3 * r.stats.draft_seconds / double(r.stats.draft_calls) : 0;
      const double target_ms = r.stats.target_calls ? 1e3 * r.stats.target_seconds / double(r.stats.target_calls) : 0;
      const double decode_over_predicted = predicted > 0 ? decode_speedup / predicted : 0;
      std::fprintf(stderr,
                   "%-6s %-36s %8.1f %7.2f %7.3f %8.2f %7.2f %7.2f %7.2f %7.2f %7.2f %6.2f %7.3f %7.3f %5s %6.3f %7.2f\n",
                   r.method.c_str(), r.config.c_str(), tps, speedup, a, per_call, predicted, refined,
                   refined > 0 ? speedup / refined : 0, decode_speedup, decode_over_predicted, 100 * overhead,
                   draft_ms, target_ms, is_sampled ? "-" : (identical ? "yes" : "no"), agree, r.ppl);
      json << "    {\"method\": \"" << r.method << "\", \"config\": \"" << r.config << "\", \"tokens\": " << r.tokens
           << ", \"seconds\": " << r.seconds << ", \"tokens_per_second\": " << tps << ", \"speedup\": " << speedup
           << ", \"per_token_acceptance\": " << a << ", \"mean_draft_length\": " << mean_gamma
           << ", \"predicted_speedup\": " << predicted << ", \"refined_predicted_speedup\": " << refined
           << ", \"achieved_over_predicted\": " << (predicted > 0 ? speedup / predicted : 0)
           << ", \"achieved_over_refined\": " << (refined > 0 ? speedup / refined : 0)
           << ", \"overhead_fraction\": " << overhead << ", \"identical_to_baseline\": "
           << (identical ? "true" : "false") << ", \"agreement_with_target_greedy\": " << agree
           << ", \"target_perplexity\": " << r.ppl << ", \"decode_tokens_per_second\": " << decode_tps
           << ", \"baseline_decode_tokens_per_second\": " << base_decode_tps
           << ", \"decode_speedup\": " << decode_speedup
           << ", \"decode_achieved_over_predicted\": " << decode_over_predicted
           << ", \"telemetry\": " << r.stats.to_json() << "}"
           << (i + 1 < pr.runs.size() ? "," : "") << "\n";
      if (csv.is_open()) {
        csv << pr.pair << ',' << pr.draft_format << ',' << pr.target_format << ',' << pr.threads << ',' << r.method
            << ',' << csv_quote(r.config) << ',' << r.gamma << ',' << r.alpha_fb << ',' << r.alpha_rb << ','
            << r.tokens << ',' << r.seconds << ',' << tps << ',' << base_tps << ',' << speedup << ',' << a << ','
            << mean_gamma << ',' << per_call << ',' << pr.cost_ratio << ',' << pr.block_cost[5] << ',' << predicted
            << ',' << refined << ',' << (predicted > 0 ? speedup / predicted : 0) << ','
            << (refined > 0 ? speedup / refined : 0) << ',' << overhead << ',' << (identical ? 1 : 0) << ','
            << agree << ',' << r.ppl << ',' << decode_tps << ',' << base_decode_tps << ',' << decode_speedup << ','
            << decode_over_predicted << '\n';
      }
    }
    json << "   ]}" << (pi + 1 < results.size() ? "," : "") << "\n";
  }
  json << "  ]\n}\n";
  if (!o.json.empty() || !o.csv.empty())
    std::cerr << "specdec-bench: wrote " << o.json << (o.json.empty() || o.csv.empty() ? "" : " and ") << o.csv << "\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "specdec-bench: error: " << e.what() << "\n";
  return 1;
}
