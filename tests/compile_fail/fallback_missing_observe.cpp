// Must NOT compile: a fallback policy without `observe` is not a specdec::fallback_policy.
// The diagnostic must name the missing concept: observes_outcomes.
#include <specdec/decoder.hpp>
#include <specdec/testing/archetypes.hpp>

struct stop_after_two {
  specdec::draft_action decide(const specdec::draft_step& s) {
    return s.position + 1 >= 2 ? specdec::draft_action::keep_and_stop
                               : specdec::draft_action::keep_and_continue;
  }
#ifdef SPECDEC_COMPILE_FAIL_FIXED
  void observe(const specdec::step_outcome&) {}
#endif
};

int main() {
  specdec::testing::markov_model draft, target;
  specdec::speculative_decoder<specdec::testing::markov_model, specdec::testing::markov_model,
                               stop_after_two, specdec::greedy_match>
      dec(draft, target, stop_after_two{}, specdec::greedy_match{});
  (void)dec;
}
