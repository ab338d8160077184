// custom_model: a drafter specdec has never seen, a prompt-lookup (n-gram) drafter over the
// prompt's and the generated text's own tokens (examples/prompt_lookup_drafter.hpp): ids
// only, no model and no logits, used as the draft for the bundled kjv-big target, greedy.
//
//   build/bin/specdec-custom-model [MODELS_DIR] [PROMPT]
//
// Prints the text, acceptance statistics and the speedup over the target's autoregressive
// decoding measured in the same run; exits 1 if the greedy output differs from it.
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include <specdec/backend/cpu/tokenizer.hpp>
#include <specdec/backend/cpu/transformer.hpp>
#include <specdec/decoder.hpp>

#include "prompt_lookup_drafter.hpp"

int main(int argc, char** argv) try {
  const std::filesystem::path dir = argc > 1 ? argv[1] : SPECDEC_MODELS_DIR;
  // Repetitive text is where prompt lookup shines; the KJV is full of it.
  const std::string prompt = argc > 2 ? argv[2]
                                      : "And the LORD spake unto Moses, saying, Speak unto the children of "
                                        "Israel, and say unto them,";
  specdec::cpu::transformer target(dir / "kjv-big.bin");
  specdec::cpu::tokenizer tok(dir / "kjv2k-tokenizer.bin", target.vocab_size());
  example::prompt_lookup_drafter draft;
  const std::vector<specdec::token_id> ids = tok.encode(prompt);
  const specdec::generation_options opts{.max_new_tokens = 200};

  specdec::autoregressive_decoder ar(target);
  // Best of 3 wall times for both, so that a busy machine disturbs the ratio less.
  double ar_seconds = 1e300, sd_seconds = 1e300;
  specdec::generation_result want, got;
  // The drafter proposes only when it finds a match, up to 8 tokens at a time.
  specdec::speculative_decoder sd(draft, target, specdec::fixed_gamma{.gamma = 8}, specdec::greedy_match{});
  for (int run = 0; run < 3; ++run) {
    want = ar.generate(ids, opts);
    ar_seconds = std::min(ar_seconds, want.stats.total_seconds);
    got = sd.generate(ids, opts);
    sd_seconds = std::min(sd_seconds, got.stats.total_seconds);
  }

  std::cout << prompt << tok.decode(got.tokens) << "\n\n" << got.stats << "\n";
  const auto& s = got.stats;
  std::cout << "drafted " << s.draft_tokens_proposed << " tokens, accepted " << s.draft_tokens_accepted << " ("
            << 100.0 * s.acceptance_rate() << "%), " << s.mean_accepted_per_target_call()
            << " tokens per target call; " << s.target_calls << " target calls for " << s.tokens_emitted
            << " tokens (autoregressive: " << want.stats.target_calls << ")\n";
  std::cout << "autoregressive " << ar_seconds << " s, prompt lookup " << sd_seconds << " s: speedup "
            << ar_seconds / sd_seconds << "x\n";
  if (got.tokens != want.tokens) {
    std::cerr << "FAIL: greedy speculative output differs from the target's autoregressive output\n";
    return 1;
  }
  std::cout << "greedy exactness: OK\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "custom_model: " << e.what() << '\n';
  return 2;
}
