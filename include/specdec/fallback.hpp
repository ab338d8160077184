#pragma once
/// \file fallback.hpp
/// Fallback policies: when the draft (little) model hands control to the target (big).
///
/// A fallback policy sees each draft position as it is produced (its distribution q and
/// the sampled token) and answers with a `draft_action`. After every verification the
/// decoder reports the outcome through `observe`, so adaptive policies can learn.
#include <concepts>
#include <cstddef>
#include <span>

#include "specdec/token.hpp"

namespace specdec {

/// What the draft loop does with the token it just sampled.
enum class draft_action {
  keep_and_continue,  ///< keep the token and draft another
  keep_and_stop,      ///< keep the token, then hand the block to the target
  discard_and_stop,   ///< drop the token (the target will write this position) and hand over
};

/// One draft position as the fallback policy sees it.
struct draft_step {
  std::size_t position;         ///< 0-based index within the current draft block
  std::span<const float> q;     ///< the distribution the token was drawn from
  token_id token;               ///< the drafted token
};

/// What one verification did, reported back to the fallback policy.
struct step_outcome {
  std::size_t proposed = 0;             ///< drafted tokens sent to the target
  std::size_t accepted = 0;             ///< of those, how many survived
  double draft_seconds = 0.0;           ///< wall time of this step's draft forwards
  std::size_t draft_forwards = 0;       ///< how many draft forward calls that was
  double target_seconds = 0.0;          ///< wall time of this step's target forward
};

/// `p.decide(step)` returns a `draft_action` for the token just drafted.
///
/// ```cpp
/// struct every_third {
///   specdec::draft_action decide(const specdec::draft_step& s) {
///     return s.position + 1 < 3 ? specdec::draft_action::keep_and_continue
///                               : specdec::draft_action::keep_and_stop;
///   }
///   void observe(const specdec::step_outcome&) {}
/// };
/// ```
template <class P>
concept has_draft_decision = requires(P& p, const draft_step& s) {
  { p.decide(s) } -> std::same_as<draft_action>;
};

/// `p.observe(outcome)` is told the result of each verification (may do nothing).
template <class P>
concept observes_outcomes = requires(P& p, const step_outcome& o) { p.observe(o); };

/// A fallback policy: decides per draft token, and observes verification outcomes.
/// See `fixed_gamma`, `max_prob_fallback` (BiLD), `entropy_fallback`,
/// `adaptive_gamma`, `expected_speedup_gamma`.
template <class P>
concept fallback_policy = has_draft_decision<P> && observes_outcomes<P>;

}  // namespace specdec
