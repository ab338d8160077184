// A downstream program using the generic library alone (specdec::specdec, no Eigen),
// through its umbrella header, consumed as a package.
#include <specdec/specdec.hpp>
#include <specdec/testing/archetypes.hpp>

#include <cstdio>
#include <vector>

int main() {
  specdec::testing::markov_model target({.vocab = 8, .seed = 3});
  specdec::testing::markov_model draft({.vocab = 8, .seed = 4});
  std::vector<specdec::token_id> prompt{1, 2};
  specdec::speculative_decoder sd(draft, target, specdec::fixed_gamma{.gamma = 3}, specdec::greedy_match{});
  specdec::autoregressive_decoder ar(target);
  auto s = sd.generate(prompt, {.max_new_tokens = 12, .stop_at_eos = false});
  auto a = ar.generate(prompt, {.max_new_tokens = 12, .stop_at_eos = false});
  std::printf("consumer_generic: %zu tokens, %s the target's greedy output\n", s.tokens.size(),
              s.tokens == a.tokens ? "equal to" : "DIFFERENT FROM");
  return s.tokens.size() == 12 && s.tokens == a.tokens ? 0 : 1;
}
