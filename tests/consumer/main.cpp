// A downstream program: the generic library and the CPU backend through the umbrella
// header <specdec/cpu.hpp>, consumed as a package.
#include <specdec/cpu.hpp>
#include <specdec/testing/archetypes.hpp>

#include <cstdio>
#include <vector>

static_assert(specdec::language_model<specdec::cpu::transformer>);
static_assert(specdec::batched_model<specdec::cpu::batched_transformer>);

int main() {
  specdec::testing::markov_model m({.vocab = 4, .seed = 3});
  std::vector<specdec::token_id> tokens{1, 2, 3};
  auto out = m.forward(tokens);
  std::printf("consumer: %zu rows of %zu logits\n", out.rows, out.vocab);
  return out.rows == 3 ? 0 : 1;
}
