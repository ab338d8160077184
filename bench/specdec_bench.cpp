// specdec-bench: end-to-end speculative decoding benchmark on a draft -> target pair.
//
// For a fixed prompt set it runs autoregressive decoding of the target (the baseline),
// speculative decoding (greedy and sampled, fixed and adaptive gamma) and BiLD over a
// sweep of thresholds, all in one process, and writes one JSON document with tokens/s,
// speedup over the baseline, acceptance rates, the speedup the analytic formula predicts
// from the measured acceptance rate and cost ratio, and for lossy methods the agreement
// with the target's greedy output and the target's perplexity of the generated text.
//
//   specdec-bench [--draft models/kjv-little.bin] [--target models/kjv-big.bin]
//                 [--tokenizer models/kjv2k-tokenizer.bin] [--tokens 96] [--repeats 1]
//                 [--prompts models/kjv_val_openings.tsv] [--quick] [--json out.json]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
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

namespace {

using specdec::token_id;
using specdec::cpu::transformer;

struct bench_options {
  std::string draft = SPECDEC_MODELS_DIR "/kjv-little.bin";
  std::string target = SPECDEC_MODELS_DIR "/kjv-big.bin";
  std::string tokenizer = SPECDEC_MODELS_DIR "/kjv2k-tokenizer.bin";
  std::string json = "specdec_bench.json";
  std::string prompts = SPECDEC_MODELS_DIR "/kjv_val_openings.tsv";
  std::size_t tokens = 96;
  int repeats = 1;
  bool quick = false;
};

// The first `words` words of the first verse of each held-out chapter (models/README.md).
std::vector<std::string> held_out_prompts(const std::string& path, std::size_t count, std::size_t words) {
  std::ifstream in(path);
  if (!in) throw specdec::invalid_argument("prompts file '" + path + "' cannot be opened");
  std::vector<std::string> out;
  std::string line;
  while (out.size() < count && std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::string verse = line.substr(line.rfind('\t') + 1);
    std::istringstream ws(verse);
    std::string w, prompt;
    for (std::size_t i = 0; i < words && ws >> w; ++i) prompt += (i ? " " : "") + w;
    out.push_back(prompt);
  }
  return out;
}

struct run_record {
  std::string method;
  std::string config;
  double seconds = 0;
  std::size_t tokens = 0;
  specdec::generation_stats stats;
  std::vector<std::vector<token_id>> outputs;
};

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Runs `make_and_generate(prompt)` over all prompts `repeats` times; keeps the last outputs.
template <class Generate>
run_record measure(std::string method, std::string config, const std::vector<std::vector<token_id>>& encoded,
                   int repeats, Generate&& generate) {
  run_record r{std::move(method), std::move(config)};
  for (int rep = 0; rep < repeats; ++rep) {
    r.outputs.clear();
    for (const auto& p : encoded) {
      const double t0 = now();
      specdec::generation_result res = generate(p);
      r.seconds += now() - t0;
      r.tokens += res.tokens.size();
      r.stats.merge(res.stats);
      r.outputs.push_back(std::move(res.tokens));
    }
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

// The analytic expected speedup of speculative decoding (Leviathan et al. 2023, eq. for
// walltime improvement): (1 - a^(g+1)) / ((1 - a) (g c + 1)).
double formula_speedup(double a, double gamma, double c) {
  const double tokens_per_call = a >= 1.0 ? gamma + 1.0 : (1.0 - std::pow(a, gamma + 1.0)) / (1.0 - a);
  return tokens_per_call / (gamma * c + 1.0);
}

}  // namespace

int main(int argc, char** argv) try {
  bench_options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw specdec::invalid_argument(a + ": expected a value");
      return argv[++i];
    };
    if (a == "--draft") o.draft = next();
    else if (a == "--target") o.target = next();
    else if (a == "--tokenizer") o.tokenizer = next();
    else if (a == "--json") o.json = next();
    else if (a == "--prompts") o.prompts = next();
    else if (a == "--tokens") o.tokens = std::stoul(next());
    else if (a == "--repeats") o.repeats = std::stoi(next());
    else if (a == "--quick") o.quick = true;
    else throw specdec::invalid_argument("unknown option '" + a + "'");
  }
  transformer target(o.target), draft(o.draft);
  specdec::cpu::tokenizer tok(o.tokenizer, target.vocab_size());
  std::vector<std::vector<token_id>> encoded;
  for (const auto& p : held_out_prompts(o.prompts, o.quick ? 3 : 12, 8)) encoded.push_back(tok.encode(p));
  const specdec::generation_options gen{.max_new_tokens = o.tokens, .stop_at_eos = false};
  const specdec::sampling_params greedy{}, sampled{.temperature = 1.0f};

  // Cost ratio c: one draft forward over one target forward, measured here.
  auto time_forward = [](transformer& m, int n) {
    m.reset();
    std::vector<token_id> ctx{1, 100, 200, 300};
    m.forward(ctx);
    const double t0 = now();
    for (int i = 0; i < n; ++i) {
      m.truncate(4);
      specdec::forward_one(m, 400);
    }
    return (now() - t0) / n;
  };
  const double t_target = time_forward(target, 50), t_draft = time_forward(draft, 200);
  const double cost_ratio = t_draft / t_target;
  std::cerr << "specdec-bench: target forward " << t_target * 1e3 << " ms, draft " << t_draft * 1e3
            << " ms, cost ratio c = " << cost_ratio << "\n";

  std::vector<run_record> runs;
  auto ar = [&](const specdec::sampling_params& sp, std::string name) {
    specdec::autoregressive_decoder dec(target, sp, 1);
    return measure("ar", name, encoded, o.repeats, [&](const auto& p) { return dec.generate(p, gen); });
  };
  runs.push_back(ar(greedy, "greedy"));
  runs.reserve(64);  // records are referenced below while more are appended
  const std::size_t greedy_baseline = 0;
  runs.push_back(ar(sampled, "temperature=1"));
  const std::size_t sampled_baseline = 1;

  std::vector<std::size_t> gammas = o.quick ? std::vector<std::size_t>{4} : std::vector<std::size_t>{1, 2, 3, 4, 5, 6, 8};
  for (std::size_t g : gammas) {
    specdec::speculative_decoder dec(draft, target, specdec::fixed_gamma{.gamma = g}, specdec::greedy_match{}, greedy, 1);
    runs.push_back(measure("sd", "greedy gamma=" + std::to_string(g), encoded, o.repeats,
                           [&](const auto& p) { return dec.generate(p, gen); }));
  }
  {
    specdec::speculative_decoder dec(draft, target, specdec::fixed_gamma{.gamma = 4}, specdec::rejection_sampling{},
                                     sampled, 1);
    runs.push_back(measure("sd", "temperature=1 gamma=4", encoded, o.repeats,
                           [&](const auto& p) { return dec.generate(p, gen); }));
  }
  {
    specdec::speculative_decoder dec(draft, target, specdec::adaptive_gamma{}, specdec::greedy_match{}, greedy, 1);
    runs.push_back(measure("sd", "greedy adaptive_gamma(+2/-1)", encoded, o.repeats,
                           [&](const auto& p) { return dec.generate(p, gen); }));
  }
  {
    specdec::speculative_decoder dec(draft, target, specdec::expected_speedup_gamma{}, specdec::greedy_match{},
                                     greedy, 1);
    runs.push_back(measure("sd", "greedy expected_speedup_gamma", encoded, o.repeats,
                           [&](const auto& p) { return dec.generate(p, gen); }));
  }
  std::vector<float> fbs = o.quick ? std::vector<float>{0.6f} : std::vector<float>{0.3f, 0.5f, 0.6f, 0.7f, 0.8f, 0.9f};
  std::vector<float> rbs = o.quick ? std::vector<float>{5.0f} : std::vector<float>{1.0f, 2.0f, 3.0f, 5.0f, 8.0f};
  for (float fb : fbs) {
    for (float rb : rbs) {
      specdec::speculative_decoder dec(draft, target, specdec::max_prob_fallback{.alpha_fb = fb, .max_draft = 10},
                                       specdec::distance_rollback<>{.alpha_rb = rb}, greedy, 1);
      std::ostringstream name;
      name << "greedy alpha_fb=" << fb << " alpha_rb=" << rb;
      runs.push_back(measure("bild", name.str(), encoded, o.repeats,
                             [&](const auto& p) { return dec.generate(p, gen); }));
    }
  }

  std::ofstream json(o.json);
  json << "{\n  \"target\": \"" << o.target << "\",\n  \"draft\": \"" << o.draft << "\",\n  \"prompts\": "
       << encoded.size() << ",\n  \"max_new_tokens\": " << o.tokens << ",\n  \"target_forward_seconds\": " << t_target
       << ",\n  \"draft_forward_seconds\": " << t_draft << ",\n  \"cost_ratio\": " << cost_ratio
       << ",\n  \"runs\": [\n";
  std::fprintf(stderr, "%-6s %-40s %9s %8s %8s %8s %9s %7s %8s\n", "method", "config", "tok/s", "speedup",
               "accept", "tok/call", "predicted", "agree", "ppl");
  for (std::size_t i = 0; i < runs.size(); ++i) {
    const run_record& r = runs[i];
    const bool is_sampled = r.config.find("temperature=1") != std::string::npos;
    const run_record& base = runs[is_sampled ? sampled_baseline : greedy_baseline];
    const double tps = r.seconds > 0 ? double(r.tokens) / r.seconds : 0;
    const double base_tps = base.seconds > 0 ? double(base.tokens) / base.seconds : 0;
    const double speedup = base_tps > 0 ? tps / base_tps : 0;
    // Per-token acceptance a: accepted trials over observed trials (each rollback ends one
    // block with one observed rejection).
    const double trials = double(r.stats.draft_tokens_accepted + r.stats.rollbacks);
    const double a = trials > 0 ? double(r.stats.draft_tokens_accepted) / trials : 0;
    const double mean_gamma = r.stats.target_calls ? double(r.stats.draft_tokens_proposed) / double(r.stats.target_calls) : 0;
    const double predicted = r.method == "ar" ? 1.0 : formula_speedup(a, mean_gamma, cost_ratio);
    double nll = 0;
    for (std::size_t p = 0; p < encoded.size(); ++p) nll += target_nll(target, encoded[p], r.outputs[p]);
    const double ppl = std::exp(nll / double(encoded.size()));
    const double agree = agreement(r.outputs, runs[greedy_baseline].outputs);
    std::fprintf(stderr, "%-6s %-40s %9.1f %8.2f %8.3f %8.2f %9.2f %7.3f %8.2f\n", r.method.c_str(), r.config.c_str(),
                 tps, speedup, r.stats.acceptance_rate(), r.stats.mean_accepted_per_target_call(), predicted, agree, ppl);
    json << "    {\"method\": \"" << r.method << "\", \"config\": \"" << r.config << "\", \"tokens\": " << r.tokens
         << ", \"seconds\": " << r.seconds << ", \"tokens_per_second\": " << tps << ", \"speedup\": " << speedup
         << ", \"per_token_acceptance\": " << a << ", \"mean_draft_length\": " << mean_gamma
         << ", \"predicted_speedup\": " << predicted
         << ", \"achieved_over_predicted\": " << (predicted > 0 ? speedup / predicted : 0)
         << ", \"agreement_with_target_greedy\": " << agree << ", \"target_perplexity\": " << ppl
         << ", \"telemetry\": " << r.stats.to_json() << "}" << (i + 1 < runs.size() ? "," : "") << "\n";
  }
  json << "  ]\n}\n";
  std::cerr << "specdec-bench: wrote " << o.json << "\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "specdec-bench: error: " << e.what() << "\n";
  return 1;
}
