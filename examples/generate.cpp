// specdec-generate: text generation on llama2.c checkpoints, autoregressive or speculative.
//
//   specdec-generate --model models/kjv-big.bin --tokenizer models/kjv2k-tokenizer.bin
//                    --prompt "In the beginning" --max-new-tokens 60
//   specdec-generate --model models/kjv-big.bin --draft models/kjv-little.bin
//                    --tokenizer models/kjv2k-tokenizer.bin --method sd --gamma 4 --prompt "And God said"
// (one command each; a line-continuation backslash in a // comment would splice lines)
//
// stdout carries only the generated continuation; progress and statistics go to stderr.
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <string_view>
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

constexpr std::string_view usage = R"(usage: specdec-generate --model PATH --tokenizer PATH [options]
  --prompt TEXT               prompt (default: empty, generation starts from BOS)
  --max-new-tokens N          tokens to generate (default 128)
  --temperature T             0 = greedy (default 0)
  --top-p P                   nucleus sampling mass in (0, 1] (default 1)
  --top-k K                   keep the K most likely tokens, 0 = off (default 0)
  --seed S                    random seed (default 0)
  --stats-json PATH           write timing, token counts and telemetry as JSON
  --draft PATH                draft (little) model checkpoint, needed by sd and bild
  --method ar|sd|bild         autoregressive, speculative decoding, Big Little Decoder (default ar)
  --gamma K                   sd: draft length; bild: cap on consecutive draft steps (default 4 / 10)
  --adaptive                  sd: choose the draft length online from the measured acceptance rate
  --fallback-threshold A      bild: fall back when the draft's max probability < A (default 0.6)
  --rollback-threshold A      bild: roll back where distance > A (default 5.0)
  --metric NAME               bild: distance metric (default ce)
  --threads N                 threads of each model, 0 = all cores (default 0)
  --format F                  target weights: fp32, bf16, fp16, q8_0 or w8a8 (default fp32)
  --draft-format F            draft weights, as --format (default fp32). The output of exact
                              speculative decoding depends on the target only, so a smaller
                              draft format is a free speed-up: w8a8 is fastest on kjv-little
  --kv-format F               target KV cache: fp32, bf16 or fp16 (default fp32); 16-bit halves
                              the cache and its reads, rounding each key and value once
  --draft-kv-format F         draft KV cache, as --kv-format (default fp32); like
                              --draft-format it cannot change exact speculative output
)";

struct cli_options {
  std::string model, tokenizer, draft, prompt, stats_json, method = "ar", metric = "ce";
  std::size_t max_new_tokens = 128;
  std::optional<std::size_t> gamma;
  bool adaptive = false;
  float fallback_threshold = 0.6f, rollback_threshold = 5.0f;
  specdec::sampling_params sampling{};
  std::uint64_t seed = 0;
  std::size_t threads = 0;
  specdec::cpu::weight_format format = specdec::cpu::weight_format::fp32;
  specdec::cpu::weight_format draft_format = specdec::cpu::weight_format::fp32;
  specdec::cpu::weight_format kv_format = specdec::cpu::weight_format::fp32;
  specdec::cpu::weight_format draft_kv_format = specdec::cpu::weight_format::fp32;
};

// A weight format for `flag`, or an error naming the flag.
specdec::cpu::weight_format parse_format(std::string_view flag, std::string_view text) {
  try {
    return specdec::cpu::parse_weight_format(text);
  } catch (const specdec::invalid_argument& e) {
    throw specdec::invalid_argument(std::string(flag) + ": " + e.what());
  }
}

// A KV cache format for `flag` (fp32, bf16 or fp16), or an error naming the flag.
specdec::cpu::weight_format parse_kv_format(std::string_view flag, std::string_view text) {
  const specdec::cpu::weight_format f = parse_format(flag, text);
  specdec::cpu::check_kv_format(f, flag);
  return f;
}

template <class T>
T parse_number(std::string_view flag, std::string_view text) {
  T value{};
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc{} || ptr != end)
    throw specdec::invalid_argument(std::string(flag) + ": expected a number, got '" + std::string(text) + "'");
  return value;
}

cli_options parse(int argc, char** argv) {
  cli_options o;
  std::vector<std::string_view> args(argv + 1, argv + argc);
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string_view a = args[i];
    auto value = [&]() -> std::string_view {
      if (i + 1 >= args.size()) throw specdec::invalid_argument(std::string(a) + ": expected a value");
      return args[++i];
    };
    if (a == "--help" || a == "-h") {
      std::cout << usage;
      std::exit(0);
    } else if (a == "--model") o.model = value();
    else if (a == "--tokenizer") o.tokenizer = value();
    else if (a == "--draft") o.draft = value();
    else if (a == "--prompt") o.prompt = value();
    else if (a == "--stats-json") o.stats_json = value();
    else if (a == "--method") o.method = value();
    else if (a == "--metric") o.metric = value();
    else if (a == "--max-new-tokens") o.max_new_tokens = parse_number<std::size_t>(a, value());
    else if (a == "--gamma") o.gamma = parse_number<std::size_t>(a, value());
    else if (a == "--adaptive") o.adaptive = true;
    else if (a == "--fallback-threshold") o.fallback_threshold = parse_number<float>(a, value());
    else if (a == "--rollback-threshold") o.rollback_threshold = parse_number<float>(a, value());
    else if (a == "--temperature") o.sampling.temperature = parse_number<float>(a, value());
    else if (a == "--top-p") o.sampling.top_p = parse_number<float>(a, value());
    else if (a == "--top-k") o.sampling.top_k = parse_number<int>(a, value());
    else if (a == "--seed") o.seed = parse_number<std::uint64_t>(a, value());
    else if (a == "--threads") o.threads = parse_number<std::size_t>(a, value());
    else if (a == "--format") o.format = parse_format(a, value());
    else if (a == "--draft-format") o.draft_format = parse_format(a, value());
    else if (a == "--kv-format") o.kv_format = parse_kv_format(a, value());
    else if (a == "--draft-kv-format") o.draft_kv_format = parse_kv_format(a, value());
    else throw specdec::invalid_argument("unknown option '" + std::string(a) + "' (see --help)");
  }
  if (o.model.empty()) throw specdec::invalid_argument("--model: a checkpoint path is required");
  if (o.tokenizer.empty()) throw specdec::invalid_argument("--tokenizer: a tokenizer path is required");
  if (o.method != "ar" && o.method != "sd" && o.method != "bild")
    throw specdec::invalid_argument("--method: expected ar, sd or bild, got '" + o.method + "'");
  if (o.method != "ar" && o.draft.empty())
    throw specdec::invalid_argument("--draft: --method " + o.method + " needs a draft model");
  o.sampling.validate();
  return o;
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
  const cli_options o = parse(argc, argv);
  using specdec::cpu::transformer;
  transformer target(o.model, {.threads = o.threads, .format = o.format, .kv_format = o.kv_format});
  specdec::cpu::tokenizer tok(o.tokenizer, target.vocab_size());
  const std::vector<specdec::token_id> prompt = tok.encode(o.prompt, /*add_bos=*/true);
  std::cerr << "specdec-generate: " << o.method << ", " << prompt.size() << " prompt tokens, model "
            << o.model << (o.draft.empty() ? "" : ", draft " + o.draft) << "\n";

  specdec::generation_result result;
  if (o.method == "ar") {
    specdec::autoregressive_decoder dec(target, o.sampling, o.seed);
    result = run(dec, tok, prompt, o);
  } else {
    transformer draft(o.draft, {.threads = o.threads, .format = o.draft_format, .kv_format = o.draft_kv_format});
    if (o.method == "sd") {
      if (o.adaptive) {
        specdec::speculative_decoder dec(draft, target, specdec::expected_speedup_gamma{},
                                         specdec::rejection_sampling{}, o.sampling, o.seed);
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
  if (!o.stats_json.empty()) {
    std::ofstream out(o.stats_json);
    if (!out) throw specdec::invalid_argument("--stats-json: cannot write '" + o.stats_json + "'");
    out << "{\"model\": \"" << o.model << "\", \"draft\": \"" << o.draft << "\", \"method\": \"" << o.method
        << "\", \"prompt_tokens\": " << prompt.size() << ", \"generated_tokens\": " << result.tokens.size()
        << ", \"tokens_per_second\": "
        << (s.total_seconds > 0 ? double(result.tokens.size()) / s.total_seconds : 0.0)
        << ", \"stop_reason\": \"" << result.stop_reason << "\", \"telemetry\": " << s.to_json() << "}\n";
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "specdec-generate: error: " << e.what() << "\n";
  return 1;
}
