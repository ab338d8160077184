#pragma once
/// \file fallback.hpp
/// Fallback policies: when the draft (little) model hands control to the target (big).
///
/// A fallback policy sees each draft position as it is produced (its distribution q and
/// the sampled token) and answers with a `draft_action`. After every verification the
/// decoder reports the outcome through `observe`, so adaptive policies can learn.
///
/// Shipped policies (all aggregates: set knobs with designated initialisers, then call
/// `validate()`, which the decoders also do):
///
/// | policy                   | knobs (defaults)                                           |
/// |--------------------------|------------------------------------------------------------|
/// | `fixed_gamma`            | gamma = 4                                                  |
/// | `max_prob_fallback`      | alpha_fb = 0.6, max_draft = 10 (BiLD)                      |
/// | `confidence_stop`        | min_confidence = 0.4, max_draft = 8 (lossless early stop)  |
/// | `entropy_fallback`       | max_entropy = 1.5 nats, max_draft = 10                     |
/// | `adaptive_gamma`         | initial = 4, min_gamma = 1, max_gamma = 16                 |
/// | `expected_speedup_gamma` | max_gamma = 16, prior_acceptance = 0.7, prior_strength =   |
/// |                          | 10, decay = 0.98, cost_ratio = 0 (= measure online)        |
///
/// Every shipped policy has `reset()` (forget what was learnt; call before a new
/// generation) and `validate()`; see the `resettable` and `validatable_policy` concepts
/// and `reset_policy` / `validate_policy` for user policies that may lack them.
#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/sampling.hpp"
#include "specdec/token.hpp"
#include "specdec/validation.hpp"

namespace specdec {

/// What the draft loop does with the token it just sampled.
///
/// ```cpp
/// if (policy.decide(step) == specdec::draft_action::discard_and_stop) draft.truncate(n - 1);
/// ```
enum class draft_action {
  keep_and_continue,  ///< keep the token and draft another
  keep_and_stop,      ///< keep the token, then hand the block to the target
  discard_and_stop,   ///< drop the token (the target will write this position) and hand over
};

/// One draft position as the fallback policy sees it. `q` is only valid during `decide`.
///
/// ```cpp
/// specdec::draft_action a = policy.decide({.position = i, .q = q_row, .token = t});
/// ```
struct draft_step {
  std::size_t position;         ///< 0-based index within the current draft block
  /// The draft's confidence distribution at this position: the distribution the token was
  /// drawn from when sampling; under greedy decoding (where that is one-hot and says
  /// nothing about confidence) the draft's plain softmax (temperature 1).
  std::span<const float> q;
  token_id token;               ///< the drafted token
};

/// What one verification did, reported back to the fallback policy.
///
/// ```cpp
/// policy.observe({.proposed = 5, .accepted = 3, .draft_seconds = 0.004, .draft_forwards = 5,
///                 .target_seconds = 0.030});
/// ```
struct step_outcome {
  std::size_t proposed = 0;             ///< drafted tokens sent to the target
  std::size_t accepted = 0;             ///< of those, how many survived
  double draft_seconds = 0.0;           ///< wall time of this step's draft forwards
  std::size_t draft_forwards = 0;       ///< how many draft forward calls that was
  double target_seconds = 0.0;          ///< wall time of this step's target forward
  /// Rows of that target forward (0 = not reported): proposed + 1 for a plain verify
  /// block, more when it also consumed uncached context (the prompt, on the first step).
  std::size_t target_rows = 0;
  /// Of `draft_seconds`, the step's first draft forward (0 = not reported). After a
  /// target forward the draft's weights are out of cache, so the first call costs more
  /// than the next ones.
  double first_draft_seconds = 0.0;
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

/// Whether a policy looks at the draft distribution `q` of a `draft_step`. Under greedy
/// decoding the decoders compute the draft's full softmax only to show it to the policy
/// (the one-hot q carries no confidence); a policy whose decisions depend on the position
/// alone declares `static constexpr bool reads_confidence = false;` and is shown the
/// one-hot q instead, which saves a softmax over the vocabulary per drafted token. Policies
/// that declare nothing are assumed to read q.
///
/// ```cpp
/// struct every_other {  // decides by position only
///   static constexpr bool reads_confidence = false;
///   specdec::draft_action decide(const specdec::draft_step& s) const;
///   void observe(const specdec::step_outcome&) {}
/// };
/// static_assert(!specdec::reads_confidence_v<every_other>);
/// ```
template <class P>
inline constexpr bool reads_confidence_v = [] {
  if constexpr (requires { P::reads_confidence; }) {
    return static_cast<bool>(P::reads_confidence);
  } else {
    return true;
  }
}();

/// A fallback policy: decides per draft token, and observes verification outcomes.
/// See `fixed_gamma`, `max_prob_fallback` (BiLD), `entropy_fallback`,
/// `adaptive_gamma`, `expected_speedup_gamma`.
template <class P>
concept fallback_policy = has_draft_decision<P> && observes_outcomes<P>;

/// `p.reset()` forgets whatever the policy learnt, as before a new generation. Decoders
/// call it (through `reset_policy`) when present. Also used for rollback policies.
///
/// ```cpp
/// specdec::adaptive_gamma g{};
/// static_assert(specdec::resettable<specdec::adaptive_gamma>);
/// g.reset();  // back to g.initial
/// ```
template <class P>
concept resettable = requires(P& p) { p.reset(); };

/// A policy that checks its own knobs (the library-wide `validatable`).
///
/// ```cpp
/// static_assert(specdec::validatable_policy<specdec::fixed_gamma>);
/// ```
template <class P>
concept validatable_policy = validatable<P>;

/// Calls `p.reset()` if the policy has one; otherwise does nothing.
///
/// ```cpp
/// specdec::reset_policy(policy);  // at the start of every generation
/// ```
template <class P>
void reset_policy(P& p) {
  if constexpr (resettable<P>) p.reset();
}

/// `max_draft` value meaning "no cap on the draft length".
inline constexpr std::size_t no_cap = 0;

namespace detail::fallback_impl {

/// True when `position` is the last one a cap of `max_draft` allows (0 = no cap).
[[nodiscard]] constexpr bool at_cap(std::size_t position, std::size_t max_draft) noexcept {
  return max_draft != no_cap && position + 1 >= max_draft;
}

}  // namespace detail::fallback_impl

/// Classic speculative decoding: always draft exactly `gamma` tokens.
///
/// ```cpp
/// specdec::fixed_gamma policy{.gamma = 5};
/// policy.validate();
/// ```
struct fixed_gamma {
  static constexpr bool reads_confidence = false;  ///< decides by position and outcomes only
  std::size_t gamma = 4;  ///< tokens drafted per step; >= 1

  void validate() const {
    if (gamma == 0) detail::fail_knob("fixed_gamma.gamma", "0", ">= 1");
  }
  [[nodiscard]] draft_action decide(const draft_step& s) const noexcept {
    return s.position + 1 >= gamma ? draft_action::keep_and_stop : draft_action::keep_and_continue;
  }
  void observe(const step_outcome&) noexcept {}
  void reset() noexcept {}
};

/// BiLD's fallback (arXiv 2302.07863, Sec. 3.2): the little model keeps drafting while it
/// is confident, and falls back to the big model as soon as its top probability
/// max_y q(y) drops below `alpha_fb`. The unconfident token is discarded: the big model
/// writes that position. Drafting also stops after `max_draft` kept tokens.
///
/// q is the distribution the token was drawn from; under greedy sampling that is one-hot,
/// so the criterion never fires. Decoders that want BiLD's behaviour with greedy decoding
/// should pass the draft's plain softmax as q.
///
/// ```cpp
/// specdec::max_prob_fallback policy{.alpha_fb = 0.5f, .max_draft = 8};
/// policy.validate();
/// ```
struct max_prob_fallback {
  float alpha_fb = 0.6f;         ///< fall back when max_y q(y) < alpha_fb; in [0, 1]
  std::size_t max_draft = 10;    ///< stop after this many kept tokens; `no_cap` (0) = none

  void validate() const {
    detail::check_range("max_prob_fallback.alpha_fb", alpha_fb, 0.0, 1.0,
                                       "in [0, 1]");
  }
  [[nodiscard]] draft_action decide(const draft_step& s) const {
    if (s.q.empty()) throw invalid_argument("max_prob_fallback::decide: empty distribution q");
    if (*std::ranges::max_element(s.q) < alpha_fb) return draft_action::discard_and_stop;
    return detail::fallback_impl::at_cap(s.position, max_draft) ? draft_action::keep_and_stop
                                                                : draft_action::keep_and_continue;
  }
  void observe(const step_outcome&) noexcept {}
  void reset() noexcept {}
};

/// Lossless early stopping on draft confidence (like the assistant confidence threshold of
/// Hugging Face's assisted generation): keep every drafted token, but stop drafting after
/// a token whose top probability max_y q(y) is below `min_confidence`, or after
/// `max_draft` tokens. Unlike `max_prob_fallback` the unconfident token is not thrown
/// away: its draft forward is already paid for, and verifying one more row costs the
/// target little. What it saves is the draft forwards after it, which would most likely
/// be rejected. The output distribution is the rollback policy's business, so with
/// `greedy_match` or `rejection_sampling` the output stays exactly the target's.
///
/// ```cpp
/// specdec::confidence_stop policy{.min_confidence = 0.5f, .max_draft = 8};
/// policy.validate();
/// ```
struct confidence_stop {
  float min_confidence = 0.4f;  ///< stop after a token with max_y q(y) < this; in [0, 1]
  std::size_t max_draft = 8;    ///< stop after this many tokens; >= 1

  void validate() const {
    detail::check_range("confidence_stop.min_confidence", min_confidence, 0.0, 1.0,
                                       "in [0, 1]");
    if (max_draft == 0) detail::fail_knob("confidence_stop.max_draft", "0", ">= 1");
  }
  [[nodiscard]] draft_action decide(const draft_step& s) const {
    if (s.q.empty()) throw invalid_argument("confidence_stop::decide: empty distribution q");
    if (s.position + 1 >= max_draft || *std::ranges::max_element(s.q) < min_confidence)
      return draft_action::keep_and_stop;
    return draft_action::keep_and_continue;
  }
  void observe(const step_outcome&) noexcept {}
  void reset() noexcept {}
};

/// Falls back to the target when the draft is uncertain in the entropy sense: if the
/// Shannon entropy H(q) (nats) of the draft distribution exceeds `max_entropy`, the token
/// is discarded and the target writes the position. Stops after `max_draft` kept tokens.
/// (A uniform distribution over n tokens has entropy ln n: 1.5 nats ~ uniform over 4.5.)
///
/// ```cpp
/// specdec::entropy_fallback policy{.max_entropy = 1.0f};
/// policy.validate();
/// ```
struct entropy_fallback {
  float max_entropy = 1.5f;     ///< discard when H(q) > max_entropy; >= 0 (+inf = never)
  std::size_t max_draft = 10;   ///< stop after this many kept tokens; `no_cap` (0) = none

  void validate() const {
    detail::check_range("entropy_fallback.max_entropy", max_entropy, 0.0,
                                       std::numeric_limits<double>::infinity(),
                                       ">= 0 (+inf allowed)");
  }
  [[nodiscard]] draft_action decide(const draft_step& s) const {
    if (entropy(s.q) > max_entropy) return draft_action::discard_and_stop;
    return detail::fallback_impl::at_cap(s.position, max_draft) ? draft_action::keep_and_stop
                                                                : draft_action::keep_and_continue;
  }
  void observe(const step_outcome&) noexcept {}
  void reset() noexcept {}
};

/// The classic adaptive draft length (as in Hugging Face's assisted generation): draft
/// `current_gamma()` tokens; after a verification, gamma += 2 if every proposed token was
/// accepted, otherwise gamma -= 1, clamped to [min_gamma, max_gamma]. Outcomes with
/// nothing proposed are ignored.
///
/// ```cpp
/// specdec::adaptive_gamma policy{.initial = 4, .min_gamma = 2, .max_gamma = 12};
/// policy.validate();
/// policy.observe({.proposed = 4, .accepted = 4});  // current_gamma() == 6
/// ```
struct adaptive_gamma {
  static constexpr bool reads_confidence = false;  ///< decides by position and outcomes only
  std::size_t initial = 4;     ///< gamma of the first step; in [min_gamma, max_gamma]
  std::size_t min_gamma = 1;   ///< >= 1
  std::size_t max_gamma = 16;  ///< >= min_gamma

  /// Learnt state: the current gamma, 0 before the first use. Public only so that the
  /// knobs above stay designated-initialisable; use `current_gamma()` and `reset()`.
  std::size_t gamma_ = 0;

  void validate() const {
    using detail::fail_knob;
    if (min_gamma == 0) fail_knob("adaptive_gamma.min_gamma", "0", ">= 1");
    if (max_gamma < min_gamma)
      fail_knob("adaptive_gamma.max_gamma", std::to_string(max_gamma),
           (">= min_gamma = " + std::to_string(min_gamma)).c_str());
    if (initial < min_gamma || initial > max_gamma)
      fail_knob("adaptive_gamma.initial", std::to_string(initial),
           ("in [min_gamma, max_gamma] = [" + std::to_string(min_gamma) + ", " +
            std::to_string(max_gamma) + "]")
               .c_str());
  }
  /// The draft length of the next step.
  [[nodiscard]] std::size_t current_gamma() const noexcept { return gamma_ == 0 ? initial : gamma_; }

  [[nodiscard]] draft_action decide(const draft_step& s) {
    start();
    return s.position + 1 >= gamma_ ? draft_action::keep_and_stop : draft_action::keep_and_continue;
  }
  void observe(const step_outcome& o) {
    start();
    if (o.proposed == 0) return;
    if (o.accepted >= o.proposed) {
      gamma_ = std::min(max_gamma, gamma_ + 2);
    } else {
      gamma_ = std::max(min_gamma, gamma_ - 1);
    }
  }
  void reset() noexcept { gamma_ = 0; }

 private:
  void start() {
    if (gamma_ != 0) return;
    validate();
    gamma_ = initial;
  }
};

/// Draft length chosen to maximise the expected speedup, learnt online.
///
/// Model (Leviathan et al. 2023, Sec. 3.4): each drafted token is accepted independently
/// with probability a, a draft forward costs c target forwards. Drafting g tokens yields
/// on average (1 - a^(g+1)) / (1 - a) tokens per step at cost g c + 1, so the expected
/// speedup over plain decoding is
///
///     S(g) = (1 - a^(g+1)) / ((1 - a)(g c + 1))   (= (g + 1) / (g c + 1) at a = 1).
///
/// Estimating a: every proposed position until the first rejection is a Bernoulli trial;
/// positions after the first rejection are never judged, so a step with `accepted <
/// proposed` contributes `accepted` successes and one failure, and a fully accepted step
/// contributes `proposed` successes and no failure (the maximum-likelihood counts for the
/// truncated geometric). The counts decay by `decay` per step (forgetting old context)
/// and are combined with a Beta prior of mean `prior_acceptance` and weight
/// `prior_strength` pseudo-trials:
///
///     a_hat = (prior_acceptance * prior_strength + successes)
///             / (prior_strength + successes + failures).
///
/// Estimating c (unless `cost_ratio` > 0 fixes it): decayed sums of draft seconds, draft
/// forwards, target seconds and target calls give c_hat = (draft seconds per draft
/// forward) / (target seconds per target call). Steps whose timings are zero are skipped;
/// until the first timed step `default_cost_ratio` is used.
///
/// After each observation the policy picks g in [1, max_gamma] maximising S(g) for
/// (a_hat, c_hat) (ties go to the smaller g), and drafts exactly g tokens.
///
/// Block cost (`learn_block_cost`, on by default when c is measured): S(g) assumes a
/// (g + 1)-token verify block costs one forward, whatever g. Real backends do not: on the
/// CPU backend the cost grows with k and jumps where the tile shape changes (see
/// bench/bench_forward.cpp, k:1..16). So the policy also keeps a decayed mean T(k) of the
/// target seconds of each block size k it has verified, and maximises
///
///     E(g) / (D(g) + T(g + 1)),   E(g) = (1 - a^(g+1)) / (1 - a),
///
/// where D(g) = d1 + (g - 1) d is the cost of drafting g tokens: d1 the mean first draft
/// forward of a step and d the mean of the others, when the decoder reports the first
/// one (`step_outcome::first_draft_seconds`; it runs cache-cold after the target's pass),
/// else g times the mean draft forward.
///
/// where an unseen T(k) is taken from the nearest smaller seen size (or the nearest larger
/// one): optimistic, so the policy tries one size past what it knows, measures it, and
/// returns if it was dearer. With equal T(k) for all k this is the same argmax as S(g).
/// That guess fails where a smaller block costs more than a larger one (on the AMD Zen 4
/// host, tiles timed at load can run 3 rows slower than 4): a policy that has verified
/// only 3 and 6 prices 4 at the dear 3 and never tries it. With `block_seconds_prior` (the
/// backend's curve measured at start-up) an unseen T(k) is the nearest seen size j's
/// learnt cost scaled by prior(k) / prior(j): the shape from the start-up measurement,
/// the level from the loop (which runs at other positions and cache states).
///
/// Across generations (`carry_over`, off by default): the decoders call `reset()` before
/// every generation, so each one starts again from the prior. A generation of ~100
/// tokens is only 20-30 steps, and when the acceptance is far above the prior (as with a
/// self-speculative pair, whose draft nearly always agrees) most of them go by before
/// gamma has climbed to where it pays. With `carry_over` a decoder serving many requests keeps what the last ones taught
/// (the decay still forgets old steps): `reset()` then keeps the learnt state. Sampled
/// output then depends on the earlier generations, so repeating a seed no longer repeats
/// the output (greedy output is the target's whatever gamma is; and a policy that
/// measures its costs online is not reproducible anyway).
///
/// ```cpp
/// specdec::expected_speedup_gamma policy{.max_gamma = 12, .cost_ratio = 0.05};
/// policy.validate();
/// double s = specdec::expected_speedup_gamma::expected_speedup(0.8, 4, 0.1);  // 2.401
/// ```
struct expected_speedup_gamma {
  static constexpr bool reads_confidence = false;  ///< decides by position and outcomes only
  std::size_t max_gamma = 16;     ///< largest draft length considered; >= 1
  double prior_acceptance = 0.7;  ///< prior mean of a; in [0, 1]
  double prior_strength = 10;     ///< prior weight in pseudo-trials; finite, >= 0
  double decay = 0.98;            ///< per-step forgetting factor of the counts; in (0, 1]
  double cost_ratio = 0;          ///< draft/target cost per forward; 0 = measure online; finite, >= 0
  bool learn_block_cost = true;   ///< with c measured online: learn the verify cost per block size
  /// Optional start-up costs of verify blocks: [k - 1] the seconds of a k-token block
  /// (e.g. `measure_verify_cost(target, max_gamma + 1, {.trees = false}).chain`, tree.hpp); only their
  /// ratios are used (see the type's doc). Each entry finite and > 0; empty: none.
  std::vector<double> block_seconds_prior{};
  bool carry_over = false;        ///< `reset()` keeps the learnt state (see the type's doc)

  /// The cost ratio assumed before any timing has been observed (when `cost_ratio` is 0).
  static constexpr double default_cost_ratio = 0.1;

  /// Learnt state. Public only so that the knobs above stay designated-initialisable;
  /// read it through the accessors and clear it with `reset()`.
  struct learnt_state {
    bool started = false;
    double successes = 0, failures = 0;                     // decayed acceptance counts
    double draft_seconds = 0, draft_forwards = 0;           // decayed draft timing
    double draft_steps = 0;                                 // decayed count of the steps in draft timing
    double first_draft_seconds = 0, first_draft_steps = 0;  // decayed, the steps' first draft forwards
    double target_seconds = 0, target_calls = 0;            // decayed target timing
    std::vector<double> block_seconds, block_calls;         // decayed, per verify block size
    std::size_t gamma = 0;
  } state_{};

  /// S(gamma) for acceptance rate a in [0, 1] and cost ratio c >= 0 (see the type's
  /// doc). Computed as the geometric sum 1 + a + ... + a^gamma, so a -> 1 is exact.
  /// expected_speedup(a, 0, c) == 1 (plain decoding).
  [[nodiscard]] static double expected_speedup(double a, std::size_t gamma, double c) {
    detail::check_range("expected_speedup.a", a, 0.0, 1.0, "in [0, 1]");
    detail::check_range("expected_speedup.c", c, 0.0,
                                       std::numeric_limits<double>::max(), "finite and >= 0");
    double tokens = 1.0;  // Horner: 1 + a (1 + a (1 + ...)), gamma times
    for (std::size_t i = 0; i < gamma; ++i) tokens = 1.0 + a * tokens;
    return tokens / (static_cast<double>(gamma) * c + 1.0);
  }

  /// The g in [1, max_gamma] maximising `expected_speedup(a, g, c)`; ties go to the smaller.
  [[nodiscard]] static std::size_t best_gamma(double a, double c, std::size_t max_gamma) {
    std::size_t best = 1;
    double best_s = expected_speedup(a, 1, c);
    for (std::size_t g = 2; g <= max_gamma; ++g) {
      const double s = expected_speedup(a, g, c);
      if (s > best_s) {
        best_s = s;
        best = g;
      }
    }
    return best;
  }

  void validate() const {
    using detail::check_range;
    using detail::fail_knob;
    constexpr double big = std::numeric_limits<double>::max();
    if (max_gamma == 0) fail_knob("expected_speedup_gamma.max_gamma", "0", ">= 1");
    check_range("expected_speedup_gamma.prior_acceptance", prior_acceptance, 0.0, 1.0, "in [0, 1]");
    check_range("expected_speedup_gamma.prior_strength", prior_strength, 0.0, big, "finite and >= 0");
    if (!(decay > 0.0 && decay <= 1.0))
      fail_knob("expected_speedup_gamma.decay", detail::format_value(decay), "in (0, 1]");
    check_range("expected_speedup_gamma.cost_ratio", cost_ratio, 0.0, big,
                "finite and >= 0 (0 = measure online)");
    for (std::size_t i = 0; i < block_seconds_prior.size(); ++i)
      detail::check_positive("expected_speedup_gamma.block_seconds_prior[" + std::to_string(i) + "]",
                             block_seconds_prior[i]);
  }

  /// The draft length of the next step.
  [[nodiscard]] std::size_t current_gamma() const {
    if (state_.started) return state_.gamma;
    validate();
    return choose();
  }
  /// The learnt mean target seconds of a k-token verify block (k >= 1), or, if no block of
  /// that size was timed, of the nearest smaller timed size, else the nearest larger one;
  /// 0 if no block was timed (see the type's doc).
  [[nodiscard]] double block_cost_estimate(std::size_t k) const noexcept {
    const auto& sec = state_.block_seconds;
    const auto& cnt = state_.block_calls;
    const auto mean = [&](std::size_t i) { return sec[i] / cnt[i]; };
    if (cnt.empty()) return 0.0;
    // The nearest timed size j scaled to k by the start-up curve where it covers both.
    const auto scaled = [&](std::size_t j) {
      const auto& prior = block_seconds_prior;
      if (j == k || k == 0 || j == 0 || k > prior.size() || j > prior.size()) return mean(j);
      return mean(j) * prior[k - 1] / prior[j - 1];
    };
    const std::size_t top = std::min(k, cnt.size() - 1);
    for (std::size_t i = top + 1; i-- > 0;)
      if (cnt[i] > 0.0) return scaled(i);
    for (std::size_t i = top + 1; i < cnt.size(); ++i)
      if (cnt[i] > 0.0) return scaled(i);
    return 0.0;
  }
  /// Posterior mean of the per-token acceptance rate.
  [[nodiscard]] double acceptance_estimate() const noexcept {
    const double n = prior_strength + state_.successes + state_.failures;
    if (!(n > 0.0)) return prior_acceptance;
    return (prior_acceptance * prior_strength + state_.successes) / n;
  }
  /// The cost ratio in use: `cost_ratio` if set, else the online estimate (or
  /// `default_cost_ratio` before any timed step).
  [[nodiscard]] double cost_ratio_estimate() const noexcept {
    if (cost_ratio > 0.0) return cost_ratio;
    if (!(state_.draft_forwards > 0.0 && state_.target_seconds > 0.0)) return default_cost_ratio;
    const double per_draft = state_.draft_seconds / state_.draft_forwards;
    const double per_target = state_.target_seconds / state_.target_calls;
    const double c = per_draft / per_target;
    return std::isfinite(c) && c >= 0.0 ? c : default_cost_ratio;
  }

  [[nodiscard]] draft_action decide(const draft_step& s) {
    start();
    return s.position + 1 >= state_.gamma ? draft_action::keep_and_stop
                                          : draft_action::keep_and_continue;
  }

  void observe(const step_outcome& o) {
    start();
    if (o.proposed > 0) {
      const std::size_t acc = std::min(o.accepted, o.proposed);
      state_.successes = decay * state_.successes + static_cast<double>(acc);
      state_.failures = decay * state_.failures + (acc < o.proposed ? 1.0 : 0.0);
    }
    const bool timed = o.draft_forwards > 0 && o.draft_seconds > 0.0 && o.target_seconds > 0.0 &&
                       std::isfinite(o.draft_seconds) && std::isfinite(o.target_seconds);
    if (timed) {
      // The verify block: the drafts and the bonus row. A step whose forwards also
      // consumed the prompt (target_rows says so) is no sample of a k-token block's cost,
      // nor of what drafting costs: its first draft forward took the whole prompt too.
      const std::size_t k = o.proposed + 1;
      const bool plain = o.target_rows == 0 || o.target_rows == k;
      if (plain) {
        state_.draft_seconds = decay * state_.draft_seconds + o.draft_seconds;
        state_.draft_forwards = decay * state_.draft_forwards + static_cast<double>(o.draft_forwards);
        state_.draft_steps = decay * state_.draft_steps + 1.0;
        const bool first_timed = o.first_draft_seconds > 0.0 && o.first_draft_seconds <= o.draft_seconds;
        state_.first_draft_seconds =
            decay * state_.first_draft_seconds + (first_timed ? o.first_draft_seconds : 0.0);
        state_.first_draft_steps = decay * state_.first_draft_steps + (first_timed ? 1.0 : 0.0);
      }
      state_.target_seconds = decay * state_.target_seconds + o.target_seconds;
      state_.target_calls = decay * state_.target_calls + 1.0;
      if (plain && k < state_.block_calls.size()) {
        state_.block_seconds[k] = decay * state_.block_seconds[k] + o.target_seconds;
        state_.block_calls[k] = decay * state_.block_calls[k] + 1.0;
      }
    }
    state_.gamma = choose();
  }

  /// Forgets what was learnt, unless `carry_over`.
  void reset() noexcept {
    if (!carry_over) state_ = learnt_state{};
  }

 private:
  void start() {
    if (state_.started) return;
    validate();
    state_.started = true;
    if (learn_block_cost && !(cost_ratio > 0.0)) {
      state_.block_seconds.assign(max_gamma + 2, 0.0);
      state_.block_calls.assign(max_gamma + 2, 0.0);
    }
    state_.gamma = choose();
  }

  // argmax over g of E(g) / (D(g) + T(g + 1)) once a draft forward and a block were timed
  // (block costs are only learnt, by `start`, with learn_block_cost and c measured); the
  // plain S(g) otherwise.
  [[nodiscard]] std::size_t choose() const {
    const double a = acceptance_estimate();
    const bool blocks = state_.draft_forwards > 0.0 && block_cost_estimate(1) > 0.0;
    if (!blocks) return best_gamma(a, cost_ratio_estimate(), max_gamma);
    // D(g) = d1 + (g - 1) d: the first draft forward and the others apart when the first
    // ones were reported for every timed step and some steps drafted more than one
    // token; else g times the mean.
    double d1 = state_.draft_seconds / state_.draft_forwards, d = d1;
    const double rest_forwards = state_.draft_forwards - state_.first_draft_steps;
    const bool all_reported = state_.first_draft_steps >= state_.draft_steps * (1.0 - 1e-9);
    if (state_.first_draft_steps > 0.0 && all_reported && rest_forwards > 1e-9 * state_.draft_forwards) {
      const double rest = (state_.draft_seconds - state_.first_draft_seconds) / rest_forwards;
      const double first = state_.first_draft_seconds / state_.first_draft_steps;
      if (std::isfinite(rest) && std::isfinite(first) && rest > 0.0 && first > 0.0) d1 = first, d = rest;
    }
    std::size_t best = 1;
    double best_s = 0.0, e = 1.0;
    for (std::size_t g = 1; g <= max_gamma; ++g) {
      e = 1.0 + a * e;  // E(g) = 1 + a E(g - 1), E(0) = 1
      const double s = e / (d1 + static_cast<double>(g - 1) * d + block_cost_estimate(g + 1));
      if (std::isfinite(s) && s > best_s) {
        best_s = s;
        best = g;
      }
    }
    return best;
  }
};

static_assert(fallback_policy<fixed_gamma>);
static_assert(fallback_policy<max_prob_fallback>);
static_assert(fallback_policy<entropy_fallback>);
static_assert(fallback_policy<adaptive_gamma>);
static_assert(fallback_policy<expected_speedup_gamma>);
static_assert(resettable<adaptive_gamma> && resettable<expected_speedup_gamma>);

}  // namespace specdec
