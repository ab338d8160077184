// Must NOT compile: a rollback policy without `static constexpr bool exact` is not a
// specdec::rollback_policy. The diagnostic must name the missing concept: declares_exactness.
#include <specdec/decoder.hpp>
#include <specdec/testing/archetypes.hpp>

struct accept_none {
#ifdef SPECDEC_COMPILE_FAIL_FIXED
  static constexpr bool exact = false;
#endif
  specdec::verify_result verify(const specdec::verify_input& in) {
    return {0, specdec::argmax(in.logits_row(0))};
  }
};

int main() {
  specdec::testing::markov_model draft, target;
  specdec::speculative_decoder<specdec::testing::markov_model, specdec::testing::markov_model,
                               specdec::fixed_gamma, accept_none>
      dec(draft, target, specdec::fixed_gamma{}, accept_none{});
  (void)dec;
}
