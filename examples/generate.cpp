// specdec-generate: text generation on llama2.c checkpoints, autoregressive or speculative.
//
//   specdec-generate --model models/kjv-big.bin --tokenizer models/kjv2k-tokenizer.bin
//                    --prompt "In the beginning" --max-new-tokens 60
//   specdec-generate --model models/kjv-big.bin --draft models/kjv-little.bin
//                    --tokenizer models/kjv2k-tokenizer.bin --method sd --gamma 4 --prompt "And God said"
// (one command each; a line-continuation backslash in a // comment would splice lines)
//
// stdout carries only the generated continuation; progress and statistics go to stderr.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "args.hpp"
#include "specdec/backend/cpu/tokenizer.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/decoder.hpp"
#include "specdec/distance.hpp"
#include "specdec/fallback.hpp"
#include "specdec/rollback.hpp"
#include "specdec/sampling.hpp"
#include "specdec/telemetry.hpp"
#include "specdec/tree.hpp"

namespace {

struct cli_options {
  std::string model, tokenizer, draft, prompt, stats_json, method = "ar", metric = "ce";
  std::size_t max_new_tokens = 128;
  std::optional<std::size_t> gamma;
  bool adaptive = false;
  float fallback_threshold = 0.6f, rollback_threshold = 5.0f;
  specdec::sampling_params sampling{};
  std::uint64_t seed = 0;
  std::size_t threads = 0;
  std::size_t memory_limit_mb = 0;
  specdec::cpu::weight_format format = specdec::cpu::weight_format::fp32;
  specdec::cpu::weight_format draft_format = specdec::cpu::weight_format::fp32;
  specdec::cpu::weight_format kv_format = specdec::cpu::weight_format::fp32;
  specdec::cpu::weight_format draft_kv_format = specdec::cpu::weight_format::fp32;
  specdec::cpu::tile_config tiles = specdec::cpu::tile_config::automatic;
};

// Parses argv into `o`; false when --help was printed.
bool parse(int argc, char** argv, cli_options& o) {
  namespace cli = specdec::cli;
  using cli::store;
  // Validates the sampling field just set, so that its error names the option.
  const auto sampling = [&o](auto& field, auto r) {
    return [&o, &field, r](std::string_view opt, std::string_view v) {
      field = cli::parse_number(opt, v, r);
      o.sampling.validate();
    };
  };
  cli::parser p("specdec-generate",
                "Generates text with a llama2.c checkpoint, autoregressively or speculatively with a draft.\n"
                "stdout carries only the generated text; progress and statistics go to stderr.");
  p.add("--model", "PATH", "target checkpoint", store(o.model), cli::required)
      .add("--tokenizer", "PATH", "tokenizer.bin of the model's vocabulary", store(o.tokenizer), cli::required)
      .add("--prompt", "TEXT", "prompt (default: empty, generation starts from BOS)", store(o.prompt))
      .add("--max-new-tokens", "N", "tokens to generate (default 128)",
           store(o.max_new_tokens, cli::between<std::size_t>(0, std::size_t{1} << 30)))
      .add("--temperature", "T", "0 = greedy (default 0)", sampling(o.sampling.temperature, cli::non_negative<float>()))
      .add("--top-p", "P", "nucleus sampling mass in (0, 1] (default 1)",
           sampling(o.sampling.top_p, cli::range<float>{.lo = 0, .hi = 1, .lo_open = true}))
      .add("--top-k", "K", "keep the K most likely tokens, 0 = off (default 0)",
           sampling(o.sampling.top_k, cli::non_negative<int>()))
      .add("--seed", "S", "random seed (default 0)", store(o.seed))
      .add("--stats-json", "PATH", "write timing, token counts and telemetry as JSON (checked before generating)",
           store(o.stats_json))
      .add("--draft", "PATH", "draft (little) model checkpoint, needed by sd and bild", store(o.draft))
      .add("--method", "ar|sd|bild", "autoregressive, speculative decoding, Big Little Decoder (default ar)",
           cli::store_choice(o.method, {"ar", "sd", "bild"}))
      .add("--gamma", "K",
           "sd: draft length, >= 1 (default 4);\nbild: cap on consecutive draft steps, 0 = no cap (default 10)",
           store(o.gamma, cli::between<std::size_t>(0, 1024)))
      .flag("--adaptive",
            "sd: choose the draft length online from the measured acceptance rate and\n"
            "block costs (priced by the target's verify-cost curve, timed at start-up)",
            o.adaptive)
      .add("--fallback-threshold", "A", "bild: fall back when the draft's max probability < A (default 0.6)",
           store(o.fallback_threshold, cli::between(0.0f, 1.0f)))
      .add("--rollback-threshold", "A", "bild: roll back where distance > A (default 5.0)",
           store(o.rollback_threshold, cli::non_negative<float>()))
      .add("--metric", "NAME", "bild: distance metric (default ce)", [&o](std::string_view, std::string_view v) {
        specdec::with_distance_metric(v, [](auto) {});  // throws, listing the names, for an unknown one
        o.metric = std::string(v);
      })
      .add("--threads", "N", "threads of each model, 0 = all cores (default 0)",
           store(o.threads, cli::between<std::size_t>(0, specdec::cpu::detail::thread_pool::max_threads)))
      .add("--memory-limit-mb", "MB",
           "bound on each model's KV cache and attention scratch, 0 = the\navailable memory (default 0)",
           store(o.memory_limit_mb, cli::between<std::size_t>(0, std::size_t{1} << 40)))
      .add("--format", "F", "target weights: fp32, bf16, fp16, q8_0 or w8a8 (default fp32)", cli::store_format(o.format))
      .add("--draft-format", "F",
           "draft weights, as --format (default fp32). The output of exact\nspeculative decoding depends on the target "
           "only, so a smaller\ndraft format is a free speed-up: w8a8 is fastest on kjv-little",
           cli::store_format(o.draft_format))
      .add("--kv-format", "F",
           "target KV cache: fp32, bf16 or fp16 (default fp32); 16-bit halves\nthe cache and its reads, rounding each "
           "key and value once",
           cli::store_format(o.kv_format, /*kv=*/true))
      .add("--draft-kv-format", "F",
           "draft KV cache, as --kv-format (default fp32); like\n--draft-format it cannot change exact speculative output",
           cli::store_format(o.draft_kv_format, /*kv=*/true))
      .add("--tiles", "NAME",
           "tile shapes of both models' weight products: auto, 4x6, 2x8, 2x12,\n1x6 or 2x8l2 (default auto: SPECDEC_TILES, else "
           "timed at load);\nspeed only, never a different output",
           [&o](std::string_view opt, std::string_view v) { o.tiles = specdec::cpu::parse_tile_config(v, opt); });
  if (!p.parse(argc, argv)) return false;
  if (o.method != "ar" && o.draft.empty())
    throw specdec::invalid_argument("--draft: --method " + o.method + " needs a draft model");
  if (o.method == "sd" && !o.adaptive && o.gamma == std::size_t{0})
    throw specdec::invalid_argument("--gamma: '0' is out of range for --method sd; expected a draft length >= 1");
  return true;
}

// A transformer over `path`; a thread that would not start is reported against --threads.
specdec::cpu::transformer load_model(const std::string& path, specdec::cpu::transformer_options options) {
  try {
    return specdec::cpu::transformer(path, options);
  } catch (const specdec::thread_start_error& e) {
    throw specdec::thread_start_error("--threads " + std::to_string(options.threads) + ": " + e.what());
  }
}

// The --stats-json document.
void write_stats_json(std::ostream& out, const cli_options& o, std::size_t prompt_tokens,
                      const specdec::generation_result& result, std::string_view tiles, std::string_view draft_tiles) {
  // Strings go through the library's JSON writer (telemetry.hpp): a path may hold `"` or `\`.
  using namespace specdec::detail;
  const auto& s = result.stats;
  std::string j = "{";
  append_json_key(j, "model");
  append_json_string(j, o.model);
  append_json_key(j, "draft");
  append_json_string(j, o.draft);
  append_json_key(j, "method");
  append_json_string(j, o.method);
  // The tile configurations in effect (timed, SPECDEC_TILES or --tiles): speed only.
  append_json_key(j, "tiles");
  append_json_string(j, tiles);
  append_json_key(j, "draft_tiles");
  append_json_string(j, draft_tiles);
  append_json_key(j, "prompt_tokens");
  append_json_number(j, prompt_tokens);
  append_json_key(j, "generated_tokens");
  append_json_number(j, result.tokens.size());
  append_json_key(j, "tokens_per_second");
  append_json_number(j, s.total_seconds > 0 ? double(result.tokens.size()) / s.total_seconds : 0.0);
  append_json_key(j, "stop_reason");
  append_json_string(j, specdec::to_string(result.stop_reason));
  append_json_key(j, "telemetry");
  j += s.to_json();
  j += "}\n";
  out << j;
}

// Runs `decoder.generate`, streaming decoded text to stdout as tokens are committed.
template <class Decoder>
specdec::generation_result run(Decoder& decoder, const specdec::cpu::tokenizer& tok,
                               const std::vector<specdec::token_id>& prompt, const cli_options& o) {
  specdec::generation_options gen{.max_new_tokens = o.max_new_tokens};
  // llama2.c checkpoints separate documents with BOS: a BOS ends this one.
  gen.stop_sequences.push_back({specdec::bos_token});
  specdec::token_id prev = prompt.back();
  auto on_token = [&](specdec::token_id t) {
    std::string piece = tok.decode_piece(prev, t);
    if (t != specdec::bos_token && t != specdec::eos_token) std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    prev = t;
  };
  return decoder.generate(prompt, gen, on_token);
}

}  // namespace

int main(int argc, char** argv) try {
  cli_options o;
  if (!parse(argc, argv, o)) return 0;
  // Opened (and so created) before anything is generated: an unwritable path fails now,
  // not after the whole generation.
  std::ofstream stats;
  specdec::cli::open_output("--stats-json", o.stats_json, stats);
  using specdec::cpu::transformer;
  const std::size_t memory_limit = o.memory_limit_mb << 20;
  transformer target = load_model(o.model, {.threads = o.threads, .format = o.format, .kv_format = o.kv_format,
                                            .memory_limit = memory_limit, .tiles = o.tiles});
  std::string draft_tiles;
  specdec::cpu::tokenizer tok(o.tokenizer, target.vocab_size());
  const std::vector<specdec::token_id> prompt = tok.encode(o.prompt, /*add_bos=*/true);
  std::cerr << "specdec-generate: " << o.method << ", " << prompt.size() << " prompt tokens, model "
            << o.model << (o.draft.empty() ? "" : ", draft " + o.draft) << "\n";

  specdec::generation_result result;
  if (o.method == "ar") {
    specdec::autoregressive_decoder dec(target, o.sampling, o.seed);
    result = run(dec, tok, prompt, o);
  } else {
    transformer draft = load_model(o.draft, {.threads = o.threads, .format = o.draft_format,
                                             .kv_format = o.draft_kv_format, .memory_limit = memory_limit,
                                             .tiles = o.tiles});
    draft_tiles = specdec::cpu::to_string(draft.options().tiles);
    // A draft with a shorter context would end the generation at its length, short of
    // what the target alone gives: refuse rather than return a silently shorter text.
    const std::size_t wanted = prompt.size() + o.max_new_tokens;
    if (draft.context_length() < target.context_length() && wanted > draft.context_length())
      throw specdec::invalid_argument(
          "--draft: '" + o.draft + "' holds a context of " + std::to_string(draft.context_length()) +
          " tokens, the target " + std::to_string(target.context_length()) + "; the prompt (" +
          std::to_string(prompt.size()) + " tokens) plus --max-new-tokens " + std::to_string(o.max_new_tokens) +
          " would stop at the draft's length; expected a draft with the target's context, or --max-new-tokens <= " +
          std::to_string(draft.context_length() > prompt.size() ? draft.context_length() - prompt.size() : 0));
    if (o.method == "sd") {
      if (o.adaptive) {
        // Seeded with the target's verify-cost curve of chain blocks, measured here: a draft
        // length the loop has not yet timed is priced by the host's curve, which is not
        // monotone on every host (fallback.hpp), not as the nearest timed one.
        specdec::expected_speedup_gamma policy;
        const specdec::verify_cost_options at{.trees = false};
        if (target.context_length() >= at.position + policy.max_gamma + 1)
          policy.block_seconds_prior = specdec::measure_verify_cost(target, policy.max_gamma + 1, at).chain;
        specdec::speculative_decoder dec(draft, target, std::move(policy), specdec::rejection_sampling{}, o.sampling,
                                         o.seed);
        result = run(dec, tok, prompt, o);
      } else {
        specdec::speculative_decoder dec(draft, target, specdec::fixed_gamma{.gamma = o.gamma.value_or(4)},
                                         specdec::rejection_sampling{}, o.sampling, o.seed);
        result = run(dec, tok, prompt, o);
      }
    } else {
      specdec::with_distance_metric(o.metric, [&](auto metric) {
        using metric_t = decltype(metric);
        specdec::speculative_decoder dec(
            draft, target,
            specdec::max_prob_fallback{.alpha_fb = o.fallback_threshold, .max_draft = o.gamma.value_or(10)},
            specdec::distance_rollback<metric_t>{.alpha_rb = o.rollback_threshold, .metric = metric},
            o.sampling, o.seed);
        result = run(dec, tok, prompt, o);
      });
    }
  }
  std::fputc('\n', stdout);
  std::fflush(stdout);

  const auto& s = result.stats;
  std::cerr << s << "\n";
  std::cerr << "specdec-generate: " << result.tokens.size() << " tokens in " << s.total_seconds << " s ("
            << (s.total_seconds > 0 ? double(result.tokens.size()) / s.total_seconds : 0.0)
            << " tokens/s), stop: " << result.stop_reason << "\n";
  if (stats.is_open()) {
    write_stats_json(stats, o, prompt.size(), result, specdec::cpu::to_string(target.options().tiles), draft_tiles);
    stats.close();
    if (!stats) throw specdec::invalid_argument("--stats-json: writing '" + o.stats_json + "' failed");
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "specdec-generate: error: " << e.what() << "\n";
  return 1;
}
