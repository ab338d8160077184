// Compile-only: <specdec/cpu.hpp> alone gives the generic library and the CPU backend.
#include <specdec/cpu.hpp>

static_assert(specdec::language_model<specdec::cpu::transformer>);
static_assert(specdec::batched_model<specdec::cpu::batched_transformer>);
static_assert(specdec::fallback_policy<specdec::fixed_gamma>);
static_assert(sizeof(specdec::hybrid::session_options) > 0);

// The example of the umbrella's file comment, checked but not instantiated (a template
// nobody calls: its code is never generated, which keeps this test cheap).
template <class = void>
std::vector<specdec::token_id> umbrella_cpu_example() {
  specdec::cpu::transformer big("models/kjv-big.bin"), little("models/kjv-little.bin");
  specdec::speculative_decoder dec(little, big, specdec::fixed_gamma{.gamma = 4}, specdec::greedy_match{});
  auto r = dec.generate(std::vector<specdec::token_id>{1}, {.max_new_tokens = 32});
  return r.tokens;
}
