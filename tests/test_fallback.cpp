// Tests for include/specdec/fallback.hpp: the shared contract of every fallback policy
// (the public typed suite of specdec/testing/contracts.hpp), each policy's own rule on
// crafted draft distributions, and the concept's near-misses.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "specdec/fallback.hpp"
#include "specdec/testing/contracts.hpp"

namespace {
using specdec::draft_action;
using specdec::draft_step;
using specdec::step_outcome;

constexpr float nan_f = std::numeric_limits<float>::quiet_NaN();
constexpr double nan_d = std::numeric_limits<double>::quiet_NaN();
constexpr float inf_f = std::numeric_limits<float>::infinity();

// ---- concept checks, including near-misses ------------------------------------------

struct no_observe {
  draft_action decide(const draft_step&) { return draft_action::keep_and_stop; }
};
struct decide_returns_bool {
  bool decide(const draft_step&) { return true; }
  void observe(const step_outcome&) {}
};
struct decide_takes_position {
  draft_action decide(std::size_t) { return draft_action::keep_and_stop; }
  void observe(const step_outcome&) {}
};
struct minimal_policy {
  draft_action decide(const draft_step&) { return draft_action::keep_and_stop; }
  void observe(const step_outcome&) {}
};

static_assert(specdec::fallback_policy<specdec::fixed_gamma>);
static_assert(specdec::fallback_policy<specdec::max_prob_fallback>);
static_assert(specdec::fallback_policy<specdec::entropy_fallback>);
static_assert(specdec::fallback_policy<specdec::confidence_stop>);
static_assert(specdec::fallback_policy<specdec::adaptive_gamma>);
static_assert(specdec::fallback_policy<specdec::expected_speedup_gamma>);
static_assert(specdec::fallback_policy<minimal_policy>);
static_assert(!specdec::fallback_policy<no_observe>);
static_assert(specdec::has_draft_decision<no_observe> && !specdec::observes_outcomes<no_observe>);
static_assert(!specdec::fallback_policy<decide_returns_bool>);
static_assert(!specdec::has_draft_decision<decide_returns_bool>);
static_assert(!specdec::fallback_policy<decide_takes_position>);
static_assert(specdec::resettable<specdec::fixed_gamma> && !specdec::resettable<minimal_policy>);
static_assert(specdec::validatable_policy<specdec::expected_speedup_gamma> &&
              !specdec::validatable_policy<minimal_policy>);
// Knobs stay designated-initialisable (aggregates), like sampling_params.
static_assert(std::is_aggregate_v<specdec::adaptive_gamma>);
// Position-only policies let greedy decoders skip the draft's softmax; policies that read
// q, and policies that declare nothing, get it.
static_assert(!specdec::reads_confidence_v<specdec::fixed_gamma>);
static_assert(!specdec::reads_confidence_v<specdec::adaptive_gamma>);
static_assert(!specdec::reads_confidence_v<specdec::expected_speedup_gamma>);
static_assert(specdec::reads_confidence_v<specdec::max_prob_fallback>);
static_assert(specdec::reads_confidence_v<specdec::confidence_stop>);
static_assert(specdec::reads_confidence_v<specdec::entropy_fallback>);
static_assert(specdec::reads_confidence_v<minimal_policy>);
static_assert(std::is_aggregate_v<specdec::expected_speedup_gamma>);

// ---- helpers (shared with the public contract suite) ----------------------------------------

std::vector<float> uniform(std::size_t n, std::size_t vocab = 0) {
  return specdec::testing::uniform_distribution(n, vocab);
}
std::vector<float> one_hot(std::size_t vocab, std::size_t at) {
  return specdec::testing::one_hot_distribution(vocab, at);
}
using specdec::testing::random_distribution;
using specdec::testing::run_block;

}  // namespace

// ---- the shared contract (include/specdec/testing/contracts.hpp) ----------------------------
// Per-policy data: the most positions a block may last with the default knobs, and knob
// settings that validate() must reject (with the knob's name).

namespace specdec::testing {
template <>
struct fallback_traits<fixed_gamma> : default_fallback_traits<fixed_gamma> {
  static constexpr std::size_t cap = 4;
  static std::vector<std::pair<fixed_gamma, std::string>> bad_knobs() { return {{{.gamma = 0}, "gamma"}}; }
};
template <>
struct fallback_traits<max_prob_fallback> : default_fallback_traits<max_prob_fallback> {
  static constexpr std::size_t cap = 10;
  static std::vector<std::pair<max_prob_fallback, std::string>> bad_knobs() {
    constexpr float nan_f = std::numeric_limits<float>::quiet_NaN();
    constexpr float inf_f = std::numeric_limits<float>::infinity();
    return {{{.alpha_fb = nan_f}, "alpha_fb"},
            {{.alpha_fb = -0.1f}, "alpha_fb"},
            {{.alpha_fb = 1.5f}, "alpha_fb"},
            {{.alpha_fb = inf_f}, "alpha_fb"}};
  }
};
template <>
struct fallback_traits<confidence_stop> : default_fallback_traits<confidence_stop> {
  static constexpr std::size_t cap = 8;
  static std::vector<std::pair<confidence_stop, std::string>> bad_knobs() {
    constexpr float nan_f = std::numeric_limits<float>::quiet_NaN();
    return {{{.min_confidence = nan_f}, "min_confidence"},
            {{.min_confidence = -0.1f}, "min_confidence"},
            {{.min_confidence = 1.5f}, "min_confidence"},
            {{.min_confidence = 0.5f, .max_draft = 0}, "max_draft"}};
  }
};
template <>
struct fallback_traits<entropy_fallback> : default_fallback_traits<entropy_fallback> {
  static constexpr std::size_t cap = 10;
  static std::vector<std::pair<entropy_fallback, std::string>> bad_knobs() {
    constexpr float nan_f = std::numeric_limits<float>::quiet_NaN();
    return {{{.max_entropy = nan_f}, "max_entropy"}, {{.max_entropy = -1.0f}, "max_entropy"}};
  }
};
template <>
struct fallback_traits<adaptive_gamma> : default_fallback_traits<adaptive_gamma> {
  static constexpr std::size_t cap = 16;
  static constexpr bool validates_on_use = true;
  static std::vector<std::pair<adaptive_gamma, std::string>> bad_knobs() {
    return {{{.initial = 4, .min_gamma = 0}, "min_gamma"},
            {{.initial = 4, .min_gamma = 5, .max_gamma = 3}, "max_gamma"},
            {{.initial = 20, .min_gamma = 1, .max_gamma = 16}, "initial"},
            {{.initial = 1, .min_gamma = 2, .max_gamma = 16}, "initial"}};
  }
};
template <>
struct fallback_traits<expected_speedup_gamma> : default_fallback_traits<expected_speedup_gamma> {
  static constexpr std::size_t cap = 16;
  static constexpr bool validates_on_use = true;
  static std::vector<std::pair<expected_speedup_gamma, std::string>> bad_knobs() {
    constexpr double nan_d = std::numeric_limits<double>::quiet_NaN();
    return {{{.max_gamma = 0}, "max_gamma"},
            {{.prior_acceptance = nan_d}, "prior_acceptance"},
            {{.prior_acceptance = 1.01}, "prior_acceptance"},
            {{.prior_acceptance = -0.01}, "prior_acceptance"},
            {{.prior_strength = -1}, "prior_strength"},
            {{.prior_strength = nan_d}, "prior_strength"},
            {{.prior_strength = std::numeric_limits<double>::infinity()}, "prior_strength"},
            {{.decay = 0.0}, "decay"},
            {{.decay = 1.5}, "decay"},
            {{.decay = nan_d}, "decay"},
            {{.cost_ratio = -0.5}, "cost_ratio"},
            {{.cost_ratio = nan_d}, "cost_ratio"},
            {{.block_seconds_prior = {0.01, 0.0}}, "block_seconds_prior[1]"},
            {{.block_seconds_prior = {nan_d}}, "block_seconds_prior[0]"}};
  }
};
}  // namespace specdec::testing

SPECDEC_FALLBACK_CONTRACT_TESTS(shipped, specdec::fixed_gamma, specdec::max_prob_fallback,
                                specdec::confidence_stop, specdec::entropy_fallback, specdec::adaptive_gamma,
                                specdec::expected_speedup_gamma);

namespace {
using specdec::draft_action;
using specdec::draft_step;
using specdec::step_outcome;

// ---- fixed_gamma ------------------------------------------------------------------------

TEST(fixed_gamma, drafts_exactly_gamma_tokens) {
  for (std::size_t gamma : {1u, 2u, 4u, 7u}) {
    specdec::fixed_gamma policy{.gamma = gamma};
    auto [n, action] = run_block(policy, uniform(5));
    EXPECT_EQ(n, gamma);
    EXPECT_EQ(action, draft_action::keep_and_stop);
  }
}

// ---- max_prob_fallback (BiLD) -------------------------------------------------------------

TEST(max_prob_fallback, discards_when_the_top_probability_is_below_alpha) {
  specdec::max_prob_fallback policy{.alpha_fb = 0.6f, .max_draft = 10};
  const std::vector<float> unsure{0.5f, 0.3f, 0.2f};     // max 0.5 < 0.6
  const std::vector<float> sure{0.7f, 0.2f, 0.1f};       // max 0.7 >= 0.6
  const std::vector<float> boundary{0.6f, 0.4f, 0.0f};   // max == alpha: not below, keep
  for (std::size_t pos : {0u, 3u, 9u})
    EXPECT_EQ(policy.decide({pos, unsure, 1}), draft_action::discard_and_stop) << pos;
  EXPECT_EQ(policy.decide({0, sure, 0}), draft_action::keep_and_continue);
  EXPECT_EQ(policy.decide({8, sure, 0}), draft_action::keep_and_continue);
  EXPECT_EQ(policy.decide({9, sure, 0}), draft_action::keep_and_stop);  // 10th kept token
  EXPECT_EQ(policy.decide({2, boundary, 0}), draft_action::keep_and_continue);
  // The confident-then-unsure block: three kept tokens, the fourth discarded.
  std::size_t pos = 0;
  for (const auto* q : {&sure, &sure, &sure, &unsure}) {
    const auto a = policy.decide({pos, *q, 0});
    if (a != draft_action::keep_and_continue) {
      EXPECT_EQ(a, draft_action::discard_and_stop);
      break;
    }
    ++pos;
  }
  EXPECT_EQ(pos, 3u);
}

TEST(max_prob_fallback, extreme_alphas_and_no_cap) {
  const std::vector<float> flat = uniform(10);
  specdec::max_prob_fallback never{.alpha_fb = 0.0f, .max_draft = specdec::no_cap};
  EXPECT_NO_THROW(never.validate());
  EXPECT_EQ(never.decide({100000, flat, 0}), draft_action::keep_and_continue);
  specdec::max_prob_fallback always{.alpha_fb = 1.0f};
  EXPECT_EQ(always.decide({0, std::vector<float>{0.999f, 0.001f}, 0}), draft_action::discard_and_stop);
  EXPECT_EQ(always.decide({0, one_hot(4, 2), 2}), draft_action::keep_and_continue);
  EXPECT_THROW((void)always.decide({0, std::span<const float>{}, 0}), specdec::invalid_argument);
}

// ---- confidence_stop --------------------------------------------------------------------

TEST(confidence_stop, keeps_the_unconfident_token_and_stops_after_it) {
  specdec::confidence_stop policy{.min_confidence = 0.6f, .max_draft = 5};
  const std::vector<float> unsure{0.5f, 0.3f, 0.2f};    // max 0.5 < 0.6
  const std::vector<float> sure{0.7f, 0.2f, 0.1f};      // max 0.7 >= 0.6
  const std::vector<float> boundary{0.6f, 0.4f, 0.0f};  // max == threshold: not below
  // Never discards: an unconfident token is kept, and ends the block.
  for (std::size_t pos : {0u, 2u, 4u}) EXPECT_EQ(policy.decide({pos, unsure, 1}), draft_action::keep_and_stop) << pos;
  EXPECT_EQ(policy.decide({0, sure, 0}), draft_action::keep_and_continue);
  EXPECT_EQ(policy.decide({3, sure, 0}), draft_action::keep_and_continue);
  EXPECT_EQ(policy.decide({4, sure, 0}), draft_action::keep_and_stop);  // 5th token: the cap
  EXPECT_EQ(policy.decide({1, boundary, 0}), draft_action::keep_and_continue);
  // sure, sure, unsure: a block of three kept tokens.
  std::size_t kept = 0;
  for (const auto* q : {&sure, &sure, &unsure, &sure}) {
    const auto a = policy.decide({kept, *q, 0});
    ++kept;
    if (a != draft_action::keep_and_continue) break;
  }
  EXPECT_EQ(kept, 3u);
  EXPECT_THROW((void)policy.decide({0, std::span<const float>{}, 0}), specdec::invalid_argument);
}

TEST(confidence_stop, threshold_zero_is_fixed_gamma_of_max_draft) {
  specdec::confidence_stop policy{.min_confidence = 0.0f, .max_draft = 3};
  specdec::fixed_gamma gamma3{.gamma = 3};
  std::mt19937_64 rng(11);
  const std::vector<std::vector<float>> qs{uniform(50), one_hot(7, 3), random_distribution(rng, 20)};
  for (const auto& q : qs) EXPECT_EQ(run_block(policy, q), run_block(gamma3, q));
}

// ---- entropy_fallback -------------------------------------------------------------------

TEST(entropy_fallback, discards_above_the_entropy_threshold) {
  specdec::entropy_fallback policy{.max_entropy = 1.5f, .max_draft = 3};
  // Uniform over 4: H = ln 4 = 1.386 <= 1.5, kept. Uniform over 5: ln 5 = 1.609 > 1.5.
  EXPECT_EQ(policy.decide({0, uniform(4, 10), 0}), draft_action::keep_and_continue);
  EXPECT_EQ(policy.decide({0, uniform(5, 10), 0}), draft_action::discard_and_stop);
  EXPECT_EQ(policy.decide({2, uniform(4, 10), 0}), draft_action::keep_and_stop);  // cap 3
  EXPECT_EQ(policy.decide({2, uniform(5, 10), 0}), draft_action::discard_and_stop);
  // (0.5, 0.5): H = ln 2 = 0.693; with max_entropy 0.69 it is over, with 0.70 under.
  const std::vector<float> coin{0.5f, 0.5f};
  EXPECT_EQ((specdec::entropy_fallback{.max_entropy = 0.69f}.decide({0, coin, 0})),
            draft_action::discard_and_stop);
  EXPECT_EQ((specdec::entropy_fallback{.max_entropy = 0.70f}.decide({0, coin, 0})),
            draft_action::keep_and_continue);
  // +inf never discards; a one-hot q (entropy 0) is kept even with max_entropy 0.
  specdec::entropy_fallback never{.max_entropy = inf_f, .max_draft = specdec::no_cap};
  EXPECT_NO_THROW(never.validate());
  EXPECT_EQ(never.decide({500, uniform(1000), 0}), draft_action::keep_and_continue);
  EXPECT_EQ((specdec::entropy_fallback{.max_entropy = 0.0f}.decide({0, one_hot(3, 1), 1})),
            draft_action::keep_and_continue);
}

// ---- adaptive_gamma -----------------------------------------------------------------------

TEST(adaptive_gamma, plus_two_on_full_acceptance_minus_one_otherwise_clamped) {
  specdec::adaptive_gamma policy{.initial = 4, .min_gamma = 2, .max_gamma = 11};
  EXPECT_EQ(policy.current_gamma(), 4u);
  const auto all = [&] { policy.observe({.proposed = policy.current_gamma(), .accepted = policy.current_gamma()}); };
  const auto miss = [&] { policy.observe({.proposed = policy.current_gamma(), .accepted = 0}); };
  std::vector<std::size_t> seen;
  all(); seen.push_back(policy.current_gamma());   // 6
  all(); seen.push_back(policy.current_gamma());   // 8
  miss(); seen.push_back(policy.current_gamma());  // 7
  all(); seen.push_back(policy.current_gamma());   // 9
  all(); seen.push_back(policy.current_gamma());   // 11
  all(); seen.push_back(policy.current_gamma());   // 13 -> clamped to 11
  for (int i = 0; i < 12; ++i) miss();
  seen.push_back(policy.current_gamma());          // 11 - 12 -> clamped to 2
  policy.observe({.proposed = 0, .accepted = 0});  // ignored
  seen.push_back(policy.current_gamma());
  EXPECT_EQ(seen, (std::vector<std::size_t>{6, 8, 7, 9, 11, 11, 2, 2}));
  // Partial acceptance counts as a miss.
  policy.observe({.proposed = 2, .accepted = 2});
  policy.observe({.proposed = 4, .accepted = 3});
  EXPECT_EQ(policy.current_gamma(), 3u);
  // decide drafts exactly current_gamma tokens.
  EXPECT_EQ(run_block(policy, uniform(3)).first, 3u);
  policy.reset();
  EXPECT_EQ(policy.current_gamma(), 4u);
  EXPECT_EQ(run_block(policy, uniform(3)).first, 4u);
}

// ---- expected_speedup_gamma -------------------------------------------------------------

using esg = specdec::expected_speedup_gamma;

TEST(expected_speedup_gamma, expected_speedup_matches_hand_values) {
  // S(g) = (1 - a^(g+1)) / ((1 - a)(g c + 1))
  // a = 0.8, g = 4, c = 0.1: (1 - 0.32768) / (0.2 * 1.4) = 0.67232 / 0.28 = 2.4011428571
  EXPECT_NEAR(esg::expected_speedup(0.8, 4, 0.1), 2.4011428571, 1e-9);
  // a = 0.5, g = 2, c = 0.1: (1 - 0.125) / (0.5 * 1.2) = 0.875 / 0.6 = 1.4583333333
  EXPECT_NEAR(esg::expected_speedup(0.5, 2, 0.1), 1.4583333333, 1e-9);
  // a = 0.9, g = 5, c = 0.05: (1 - 0.531441) / (0.1 * 1.25) = 0.468559 / 0.125 = 3.748472
  EXPECT_NEAR(esg::expected_speedup(0.9, 5, 0.05), 3.748472, 1e-9);
  // a = 1 (limit): (g + 1) / (g c + 1) = 5 / 1.4 = 3.5714285714
  EXPECT_NEAR(esg::expected_speedup(1.0, 4, 0.1), 3.5714285714, 1e-9);
  // a just below 1 is continuous with the limit.
  EXPECT_NEAR(esg::expected_speedup(1.0 - 1e-12, 4, 0.1), 3.5714285714, 1e-9);
  // a = 0: only the target's token, at cost 1 + 3 * 0.5 = 2.5: 1 / 2.5 = 0.4
  EXPECT_NEAR(esg::expected_speedup(0.0, 3, 0.5), 0.4, 1e-12);
  // gamma = 0 is plain decoding.
  EXPECT_DOUBLE_EQ(esg::expected_speedup(0.7, 0, 0.3), 1.0);
  // c = 0 (free draft): just the expected tokens per step, 1 + 0.5 + 0.25 = 1.75.
  EXPECT_DOUBLE_EQ(esg::expected_speedup(0.5, 2, 0.0), 1.75);
  EXPECT_THROW((void)esg::expected_speedup(nan_d, 2, 0.1), specdec::invalid_argument);
  EXPECT_THROW((void)esg::expected_speedup(1.5, 2, 0.1), specdec::invalid_argument);
  EXPECT_THROW((void)esg::expected_speedup(0.5, 2, -0.1), specdec::invalid_argument);
  EXPECT_THROW((void)esg::expected_speedup(0.5, 2, nan_d), specdec::invalid_argument);
}

TEST(expected_speedup_gamma, best_gamma_matches_hand_argmax) {
  // a = 0.8, c = 0.1: S(4) = 0.67232/0.28 = 2.40114, S(5) = 0.737856/0.30 = 2.45952,
  //   S(6) = 0.7902848/0.32 = 2.46964, S(7) = 0.83222784/0.34 = 2.44773, and S keeps
  //   falling after (S(8) = 0.865782272/0.36 = 2.40495): the best gamma is 6.
  EXPECT_EQ(esg::best_gamma(0.8, 0.1, 16), 6u);
  // a = 0.5, c = 0.1: S(1) = 0.75/0.55 = 1.36364, S(2) = 0.875/0.60 = 1.45833,
  //   S(3) = 0.9375/0.65 = 1.44231, S(4) = 0.96875/0.70 = 1.38393: the best gamma is 2.
  EXPECT_EQ(esg::best_gamma(0.5, 0.1, 16), 2u);
  // Clamped by max_gamma; a = 1 with c = 0 grows without bound -> max_gamma.
  EXPECT_EQ(esg::best_gamma(0.8, 0.1, 4), 4u);
  EXPECT_EQ(esg::best_gamma(1.0, 0.0, 16), 16u);
  // a = 0: every extra draft token is waste -> 1 (the smallest allowed).
  EXPECT_EQ(esg::best_gamma(0.0, 0.1, 16), 1u);
}

/// Feeds `steps` simulated verifications: each proposes current_gamma() tokens (as the
/// draft loop does, via decide) and accepts each with probability a until the first
/// rejection. Returns the gamma chosen at each step.
std::vector<std::size_t> simulate(esg& policy, double a, int steps, std::uint64_t seed,
                                  double draft_s = 0.0, double target_s = 0.0) {
  std::mt19937_64 g(seed);
  std::bernoulli_distribution accept(a);
  std::vector<std::size_t> gammas;
  const auto q = uniform(4);
  for (int s = 0; s < steps; ++s) {
    const std::size_t proposed = run_block(policy, q).first;
    EXPECT_EQ(proposed, policy.current_gamma());
    gammas.push_back(proposed);
    std::size_t accepted = 0;
    while (accepted < proposed && accept(g)) ++accepted;
    policy.observe({.proposed = proposed, .accepted = accepted,
                    .draft_seconds = draft_s * static_cast<double>(proposed),
                    .draft_forwards = proposed, .target_seconds = target_s});
  }
  return gammas;
}

TEST(expected_speedup_gamma, converges_to_the_gamma_maximising_speedup) {
  // No forgetting, a weak prior: the estimate converges to the true a, and the chosen
  // gamma to the hand-computed argmax (6 for a = 0.8, 2 for a = 0.5, c = 0.1; see above).
  for (auto [a, expected] : {std::pair{0.8, std::size_t{6}}, std::pair{0.5, std::size_t{2}}}) {
    esg policy{.max_gamma = 16, .prior_acceptance = 0.7, .prior_strength = 1, .decay = 1.0,
               .cost_ratio = 0.1};
    const auto gammas = simulate(policy, a, 20000, 42);
    EXPECT_NEAR(policy.acceptance_estimate(), a, 0.01) << a;
    EXPECT_EQ(policy.current_gamma(), expected) << a;
    EXPECT_EQ(gammas.back(), expected) << a;
    EXPECT_DOUBLE_EQ(policy.cost_ratio_estimate(), 0.1);
  }
  // Default forgetting (decay 0.98, ~50-step memory): the estimate is noisier, but the
  // most frequent gamma over the last 2000 steps is still the optimum.
  for (auto [a, expected] : {std::pair{0.8, std::size_t{6}}, std::pair{0.5, std::size_t{2}}}) {
    esg policy{.cost_ratio = 0.1};
    const auto gammas = simulate(policy, a, 4000, 7);
    std::map<std::size_t, int> hist;
    for (std::size_t i = 2000; i < gammas.size(); ++i) ++hist[gammas[i]];
    auto mode = std::max_element(hist.begin(), hist.end(),
                                 [](auto& x, auto& y) { return x.second < y.second; });
    EXPECT_EQ(mode->first, expected) << a;
  }
}

TEST(expected_speedup_gamma, counts_accepted_trials_and_one_rejection) {
  esg policy{.prior_acceptance = 0.5, .prior_strength = 0, .decay = 1.0, .cost_ratio = 0.1};
  EXPECT_DOUBLE_EQ(policy.acceptance_estimate(), 0.5);  // no data, no prior weight: prior mean
  policy.observe({.proposed = 5, .accepted = 2});  // 2 successes, 1 failure, 2 unobserved
  EXPECT_DOUBLE_EQ(policy.acceptance_estimate(), 2.0 / 3.0);
  policy.observe({.proposed = 4, .accepted = 4});  // 4 successes, no failure
  EXPECT_DOUBLE_EQ(policy.acceptance_estimate(), 6.0 / 7.0);
  policy.observe({.proposed = 3, .accepted = 0});  // 1 failure
  EXPECT_DOUBLE_EQ(policy.acceptance_estimate(), 6.0 / 8.0);
  policy.observe({.proposed = 0, .accepted = 0});  // nothing judged
  EXPECT_DOUBLE_EQ(policy.acceptance_estimate(), 6.0 / 8.0);
  // With a prior of weight 10 at 0.7 and decay 0.5: successes 0.5*0 + 3, failures 0 + 1,
  // then 0.5*3 + 2 = 3.5, 0.5*1 + 0 = 0.5: a = (7 + 3.5) / (10 + 3.5 + 0.5) = 0.75.
  esg decayed{.prior_acceptance = 0.7, .prior_strength = 10, .decay = 0.5, .cost_ratio = 0.1};
  decayed.observe({.proposed = 4, .accepted = 3});
  decayed.observe({.proposed = 2, .accepted = 2});
  EXPECT_NEAR(decayed.acceptance_estimate(), 0.75, 1e-12);
}

TEST(expected_speedup_gamma, measures_the_cost_ratio_online) {
  esg policy{.decay = 1.0};
  EXPECT_DOUBLE_EQ(policy.cost_ratio_estimate(), esg::default_cost_ratio);
  // 4 draft forwards in 0.02 s (0.005 s each), target 0.05 s: c = 0.1.
  policy.observe({.proposed = 4, .accepted = 4, .draft_seconds = 0.02, .draft_forwards = 4,
                  .target_seconds = 0.05});
  EXPECT_NEAR(policy.cost_ratio_estimate(), 0.1, 1e-12);
  // Another step at 0.03 s per draft forward (2 forwards), target 0.05: pooled
  // (0.02 + 0.06) / 6 = 0.013333 per draft forward, 0.05 per target: c = 0.266667.
  policy.observe({.proposed = 2, .accepted = 0, .draft_seconds = 0.06, .draft_forwards = 2,
                  .target_seconds = 0.05});
  EXPECT_NEAR(policy.cost_ratio_estimate(), (0.08 / 6) / 0.05, 1e-12);
  // Untimed steps leave it alone.
  policy.observe({.proposed = 2, .accepted = 1});
  EXPECT_NEAR(policy.cost_ratio_estimate(), (0.08 / 6) / 0.05, 1e-12);
  // A fixed cost_ratio wins over measurements.
  esg fixed{.cost_ratio = 0.25};
  fixed.observe({.proposed = 4, .accepted = 4, .draft_seconds = 0.02, .draft_forwards = 4,
                 .target_seconds = 0.05});
  EXPECT_DOUBLE_EQ(fixed.cost_ratio_estimate(), 0.25);
  // Measured ratio drives gamma: at a = 0.8 measured c = 0.1 gives the same optimum as fixed.
  esg measured{.prior_strength = 1, .decay = 1.0};
  simulate(measured, 0.8, 5000, 3, /*draft_s=*/0.001, /*target_s=*/0.01);
  EXPECT_NEAR(measured.cost_ratio_estimate(), 0.1, 1e-9);
  EXPECT_EQ(measured.current_gamma(), 6u);
}

// The g in [1, 16] maximising E(g) / cost(g) at per-token acceptance a, by brute force.
template <class Cost>
std::size_t true_best_gamma(double a, Cost cost) {
  std::size_t best = 1;
  double best_s = 0.0;
  for (std::size_t g = 1; g <= 16; ++g) {
    double e = 0.0;
    for (std::size_t i = 0; i <= g; ++i) e += std::pow(a, double(i));
    const double s = e / cost(g);
    if (s > best_s) best_s = s, best = g;
  }
  return best;
}

// Runs `policy` for 3000 simulated steps at per-token acceptance a, each step's outcome
// from outcome(step, proposed, accepted); returns the gamma drafted most often in the
// last 1000 steps.
template <class Outcome>
std::size_t settled_gamma(esg policy, double a, std::uint64_t seed, Outcome outcome) {
  std::mt19937_64 g(seed);
  std::bernoulli_distribution accept(a);
  std::map<std::size_t, int> late;
  const auto q = uniform(4);
  for (int step = 0; step < 3000; ++step) {
    const std::size_t proposed = run_block(policy, q).first;
    std::size_t accepted = 0;
    while (accepted < proposed && accept(g)) ++accepted;
    policy.observe(outcome(step, proposed, accepted));
    if (step >= 2000) ++late[proposed];
  }
  return std::max_element(late.begin(), late.end(), [](auto& x, auto& y) { return x.second < y.second; })->first;
}

// A verify block's cost depends on its size: here flat up to 6 rows, then a step up (the
// CPU backend's 7-row blocks switch tile shape and cost ~1.45x). With learn_block_cost
// the policy must settle on the g that maximises the true E(g) / (g d + T(g + 1));
// without it, it only sees the mean cost per call and drafts longer.
TEST(expected_speedup_gamma, learns_the_verify_cost_per_block_size) {
  const double a = 0.8, d = 0.0005;
  const auto T = [](std::size_t k) { return k <= 6 ? 0.01 * (1.0 + 0.02 * double(k - 1)) : 0.0145 + 0.002 * double(k - 7); };
  const std::size_t truth = true_best_gamma(a, [&](std::size_t g) { return double(g) * d + T(g + 1); });
  ASSERT_EQ(truth, 5u);  // the hand check: the block of 6 before the step up
  const auto outcome = [&](int step, std::size_t proposed, std::size_t accepted) {
    // The first step's forward also consumes a 30-token prompt: 5x the cost, and
    // target_rows says so; it must not count as a block of proposed + 1.
    const std::size_t rows = step == 0 ? proposed + 31 : proposed + 1;
    return specdec::step_outcome{.proposed = proposed, .accepted = accepted, .draft_seconds = d * double(proposed),
                                 .draft_forwards = proposed, .target_seconds = step == 0 ? 0.05 : T(rows),
                                 .target_rows = rows};
  };
  EXPECT_EQ(settled_gamma(esg{}, a, 9, outcome), truth);
  // One mean cost per call: drafts past the step.
  EXPECT_GT(settled_gamma(esg{.learn_block_cost = false}, a, 9, outcome), 6u);
}

// The first draft forward of a step runs cache-cold after the target's pass and costs
// more than the next ones. Charging every drafted token the mean forward overrates what a
// longer draft costs; with the first forward reported apart, the policy must settle on
// the g that maximises the true E(g) / (d1 + (g - 1) d + T).
TEST(expected_speedup_gamma, separates_the_cold_first_draft_forward) {
  const double a = 0.85, d1 = 0.004, d = 0.0005, T = 0.01;
  const std::size_t truth = true_best_gamma(a, [&](std::size_t g) { return d1 + double(g - 1) * d + T; });
  const auto outcome_reporting = [&](bool report_first) {
    return [=](int, std::size_t proposed, std::size_t accepted) {
      return specdec::step_outcome{.proposed = proposed, .accepted = accepted,
                                   .draft_seconds = d1 + double(proposed - 1) * d, .draft_forwards = proposed,
                                   .target_seconds = T, .target_rows = proposed + 1,
                                   .first_draft_seconds = report_first ? d1 : 0.0};
    };
  };
  ASSERT_GT(truth, 3u);
  EXPECT_EQ(settled_gamma(esg{}, a, 3, outcome_reporting(true)), truth);
  EXPECT_LT(settled_gamma(esg{}, a, 3, outcome_reporting(false)), truth);  // the mean forward overrates longer drafts
}

TEST(expected_speedup_gamma, block_cost_estimate_falls_back_to_the_nearest_timed_size) {
  esg policy{.decay = 1.0};
  EXPECT_EQ(policy.block_cost_estimate(3), 0.0);  // nothing timed
  policy.observe({.proposed = 2, .accepted = 2, .draft_seconds = 0.002, .draft_forwards = 2,
                  .target_seconds = 0.01, .target_rows = 3});
  policy.observe({.proposed = 2, .accepted = 1, .draft_seconds = 0.002, .draft_forwards = 2,
                  .target_seconds = 0.02, .target_rows = 3});
  policy.observe({.proposed = 5, .accepted = 0, .draft_seconds = 0.005, .draft_forwards = 5,
                  .target_seconds = 0.04, .target_rows = 6});
  policy.observe({.proposed = 5, .accepted = 0, .draft_seconds = 0.005, .draft_forwards = 5,
                  .target_seconds = 9.0, .target_rows = 40});  // prompt included: not a 6-block sample
  EXPECT_DOUBLE_EQ(policy.block_cost_estimate(3), 0.015);  // mean of its two samples
  EXPECT_DOUBLE_EQ(policy.block_cost_estimate(4), 0.015);  // nearest smaller timed size
  EXPECT_DOUBLE_EQ(policy.block_cost_estimate(1), 0.015);  // none smaller: nearest larger
  EXPECT_DOUBLE_EQ(policy.block_cost_estimate(6), 0.04);
  EXPECT_DOUBLE_EQ(policy.block_cost_estimate(99), 0.04);
  policy.reset();
  EXPECT_EQ(policy.block_cost_estimate(3), 0.0);
}

// With a start-up curve, an untimed size is the nearest timed size's cost scaled by the
// curve's ratio of the two; timed sizes keep their learnt cost.
TEST(expected_speedup_gamma, block_cost_estimate_scales_untimed_sizes_by_the_start_up_curve) {
  esg policy{.decay = 1.0, .block_seconds_prior = {0.001, 0.0013, 0.0013, 0.0011, 0.0013}};
  policy.observe({.proposed = 2, .accepted = 2, .draft_seconds = 0.002, .draft_forwards = 2,
                  .target_seconds = 0.026, .target_rows = 3});
  EXPECT_DOUBLE_EQ(policy.block_cost_estimate(3), 0.026);              // timed: as learnt
  EXPECT_DOUBLE_EQ(policy.block_cost_estimate(4), 0.026 * 11.0 / 13.0);  // cheaper, as the curve says
  EXPECT_DOUBLE_EQ(policy.block_cost_estimate(1), 0.026 * 10.0 / 13.0);
  EXPECT_DOUBLE_EQ(policy.block_cost_estimate(7), 0.026);  // beyond the curve: the nearest size
}

// A block cost that is not monotone in the block size, as the Zen 4 host's (3 rows 1.63
// ms, 4 rows 1.38 ms, 5 rows 1.65 ms, one token 1.25 ms; a draft forward 0.03 ms): the
// best draft is 3 tokens. The default prior starts the policy at gamma 4: it times
// 5-row blocks first and, without the curve, prices an untimed 4-row block like the
// nearest timed one, 5 rows, so gamma 3 never looks better than 4 and it is never tried;
// with the start-up curve it settles on gamma 3.
TEST(expected_speedup_gamma, a_start_up_curve_finds_a_cheaper_larger_block) {
  const double a = 0.72, d = 0.00003;
  const auto T = [](std::size_t k) {
    constexpr double ms[] = {1.25, 1.63, 1.63, 1.38, 1.65, 1.72, 1.80, 1.90, 2.00};
    return 1e-3 * (k <= 9 ? ms[k - 1] : 2.0 + 0.1 * double(k - 9));
  };
  const std::size_t truth = true_best_gamma(a, [&](std::size_t g) { return double(g) * d + T(g + 1); });
  ASSERT_EQ(truth, 3u);
  const auto outcome = [&](int, std::size_t proposed, std::size_t accepted) {
    return specdec::step_outcome{.proposed = proposed, .accepted = accepted, .draft_seconds = d * double(proposed),
                                 .draft_forwards = proposed, .target_seconds = T(proposed + 1),
                                 .target_rows = proposed + 1};
  };
  std::vector<double> curve;
  for (std::size_t k = 1; k <= 17; ++k) curve.push_back(T(k));
  ASSERT_EQ(esg{}.current_gamma(), 4u);
  EXPECT_EQ(settled_gamma(esg{.block_seconds_prior = curve}, a, 5, outcome), truth);
  EXPECT_NE(settled_gamma(esg{}, a, 5, outcome), truth);
}

// Short generations, each preceded by reset() as the decoders do, on the self-speculative
// pair's cost model (acceptance ~1, a draft forward a quarter of a target forward, verify
// blocks equally dear whatever their size, so the longest draft pays): by default every
// generation climbs from the prior again; with carry_over the later ones start where the
// last one ended.
TEST(expected_speedup_gamma, carry_over_keeps_what_earlier_generations_taught) {
  const double a = 0.998, d = 0.0025, T = 0.01;
  const auto generations = [&](esg policy) {
    std::mt19937_64 g(5);
    std::bernoulli_distribution accept(a);
    const auto q = uniform(4);
    std::vector<double> mean_proposed;
    for (int gen = 0; gen < 4; ++gen) {
      policy.reset();
      double sum = 0;
      const int steps = 20;
      for (int step = 0; step < steps; ++step) {
        const std::size_t proposed = run_block(policy, q).first;
        std::size_t accepted = 0;
        while (accepted < proposed && accept(g)) ++accepted;
        policy.observe({.proposed = proposed, .accepted = accepted, .draft_seconds = d * double(proposed),
                        .draft_forwards = proposed, .target_seconds = T, .target_rows = proposed + 1});
        sum += double(proposed);
      }
      mean_proposed.push_back(sum / steps);
    }
    return mean_proposed;
  };
  const auto fresh = generations(esg{});
  const auto carried = generations(esg{.carry_over = true});
  EXPECT_DOUBLE_EQ(carried[0], fresh[0]);  // the first generation is the same either way
  for (int gen = 1; gen < 4; ++gen) {
    EXPECT_NEAR(fresh[gen], fresh[0], 1.5) << gen;  // climbs from scratch every time
    EXPECT_EQ(carried[gen], 16.0) << gen;           // the cap, from the first step on
  }
  // reset() with carry_over keeps the estimates; without, it restores the prior.
  esg kept{.decay = 1.0, .carry_over = true}, forgetful{.decay = 1.0};
  for (esg* p : {&kept, &forgetful})
    p->observe({.proposed = 4, .accepted = 4, .draft_seconds = 0.002, .draft_forwards = 4, .target_seconds = 0.01,
                .target_rows = 5});
  kept.reset();
  forgetful.reset();
  EXPECT_GT(kept.acceptance_estimate(), kept.prior_acceptance);
  EXPECT_DOUBLE_EQ(kept.block_cost_estimate(5), 0.01);
  EXPECT_DOUBLE_EQ(forgetful.acceptance_estimate(), forgetful.prior_acceptance);
  EXPECT_EQ(forgetful.block_cost_estimate(5), 0.0);
}

TEST(expected_speedup_gamma, initial_gamma_comes_from_the_prior) {
  // Prior a = 0.7, default c = 0.1 before any timing: best gamma for (0.7, 0.1).
  esg policy{};
  EXPECT_EQ(policy.current_gamma(), esg::best_gamma(0.7, 0.1, 16));
  EXPECT_EQ(run_block(policy, uniform(2)).first, policy.current_gamma());
  esg capped{.max_gamma = 1};
  EXPECT_EQ(run_block(capped, uniform(2)).first, 1u);
}

}  // namespace
