// Compile-only: fallback and rollback policies, distance metrics and verifiers accept the
// shipped types and reject near misses.
#include <span>

#include "specdec/distance.hpp"
#include "specdec/fallback.hpp"
#include "specdec/rollback.hpp"
#include "specdec/testing/archetypes.hpp"
#include "specdec/validation.hpp"
#include "specdec/verifier.hpp"

namespace {
using specdec::token_id;

// ---- fallback ----
struct decides_only {
  specdec::draft_action decide(const specdec::draft_step&) { return specdec::draft_action::keep_and_stop; }
};
struct decides_and_observes : decides_only {
  void observe(const specdec::step_outcome&) {}
};
struct decides_bool {
  bool decide(const specdec::draft_step&) { return true; }
  void observe(const specdec::step_outcome&) {}
};
static_assert(specdec::fallback_policy<decides_and_observes>);
static_assert(!specdec::fallback_policy<decides_only>);
static_assert(!specdec::fallback_policy<decides_bool>);
static_assert(specdec::fallback_policy<specdec::fixed_gamma> && specdec::fallback_policy<specdec::max_prob_fallback>);
static_assert(!specdec::reads_confidence_v<specdec::fixed_gamma> && specdec::reads_confidence_v<decides_and_observes>);

// ---- rollback ----
struct verifies_without_exact {
  specdec::verify_result verify(const specdec::verify_input&) { return {}; }
};
struct verifies_with_exact : verifies_without_exact {
  static constexpr bool exact = true;
};
static_assert(specdec::rollback_policy<verifies_with_exact>);
static_assert(!specdec::rollback_policy<verifies_without_exact>);
static_assert(specdec::rollback_policy<specdec::rejection_sampling> && specdec::rollback_policy<specdec::greedy_match>);
static_assert(specdec::rollback_policy<specdec::distance_rollback<>>);

// ---- distance ----
struct unnamed_metric {
  float operator()(std::span<const float>, std::span<const float>, token_id) const { return 0; }
};
struct named_metric : unnamed_metric {
  static constexpr std::string_view name = "n";
};
static_assert(specdec::distance_metric<named_metric>);
static_assert(!specdec::distance_metric<unnamed_metric>);
static_assert(specdec::distance_metric<specdec::total_variation>);

// ---- validatable ----
struct checks_itself {
  void validate() const {}
};
struct checks_only_when_mutable {
  void validate() {}
};
static_assert(specdec::validatable<checks_itself>);
static_assert(!specdec::validatable<checks_only_when_mutable>);  // validate() must be const

// ---- verifier ----
struct verifier_base {
  static constexpr bool exact = true;
  std::size_t vocab_size() const { return 8; }
  std::size_t context_length() const { return 64; }
  std::size_t cache_length() const { return 0; }
  void reset() {}
  void sync(std::span<const token_id>) {}
};
struct complete_verifier : verifier_base {
  specdec::verdict verify(std::span<const token_id>, const specdec::draft_block&, const specdec::sampling_params&,
                          specdec::random_source&) {
    return {};
  }
};
struct verify_returns_result : verifier_base {
  specdec::verify_result verify(std::span<const token_id>, const specdec::draft_block&,
                                const specdec::sampling_params&, specdec::random_source&) {
    return {};
  }
};
static_assert(specdec::verifier<complete_verifier>);
static_assert(!specdec::verifier<verify_returns_result>);
static_assert(!specdec::verifier<verifier_base>);
static_assert(specdec::verifier<specdec::local_verifier<specdec::testing::markov_model, specdec::greedy_match>>);
static_assert(!specdec::verifier<specdec::testing::markov_model>);
// length_aware_verifier: a verifier with expect_length(n)
struct length_aware : complete_verifier {
  void expect_length(std::size_t) {}
};
struct length_without_verify : verifier_base {
  void expect_length(std::size_t) {}
};
static_assert(specdec::length_aware_verifier<length_aware>);
static_assert(!specdec::length_aware_verifier<complete_verifier>);
static_assert(!specdec::length_aware_verifier<length_without_verify>);  // not a verifier
}  // namespace
