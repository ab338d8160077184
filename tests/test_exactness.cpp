// Tests for include/specdec/testing/exactness.hpp, the exactness harness, and the
// exactness of the speculative decoder it exists for.
//
// - The harness itself: chi-square quantiles against tables, processed_distribution
//   against sampling.hpp, a sample in a zero-probability bin failing outright, the TV
//   bound, its false-alarm rate and its power, both by simulation.
// - Sampled exactness of speculative decoding with rejection sampling on the standard
//   battery (temperatures 0.7, 1, 1.3; top-k; top-p; order-1 and order-2 Markov pairs),
//   drafting 5 tokens at a time so that draft positions 0-4 and the bonus are all
//   proposed and verified many times (asserted from the telemetry), checked on the joint
//   law of all 6 emitted tokens, every token's law and every adjacent pair's law.
// - Negative controls: deliberately broken rollback policies in the same decoder on the
//   same cases; each must fail the very check the correct policy passes.
// - Greedy near-ties: target logits whose top two are equal or one ulp apart; speculative
//   greedy output must still be the target's own greedy output.
//
// Power (computed by `rejection_rate`: the check run on 200 simulated multinomial samples
// of a biased law; see `power_against_a_tv_bias_towards_the_draft`): with 40,000 runs
// per case and significance 1e-6 per check, a joint law moved by TV 0.03 towards the
// draft's law fails in >= 99% of samples in every standard case; TV 0.02 in 70% (T1),
// 92% (T1_top_k3_top_p0.9) and 100% (the other two). A correct law failed in none of 200;
// the union bound puts that chance at 2 * 12 * 1e-6 per case (12 laws, 2 checks each).
// Sanitizer builds run one case of the battery (see `battery`), not fewer runs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "specdec/batch.hpp"
#include "specdec/batch_decoder.hpp"
#include "specdec/decoder.hpp"
#include "specdec/fallback.hpp"
#include "specdec/rollback.hpp"
#include "specdec/sampling.hpp"
#include "specdec/testing/archetypes.hpp"
#include "specdec/testing/contracts.hpp"
#include "specdec/testing/exactness.hpp"

#include "near_tie_models.hpp"

namespace {
using specdec::generation_options;
using specdec::sampling_params;
using specdec::token_id;
using specdec::testing::exactness_case;
using specdec::testing::exactness_report;
using specdec::testing::markov_model;
using specdec::testing::sequence_law;
using near_ties::near_tie_pair;
using near_ties::table_model;

constexpr std::size_t runs_per_case = 40000;

/// The cases the decoder tests run: the standard battery. Sanitizer builds (5-10x slower)
/// run its last case only (temperature 1 with top-k 3 and top-p 0.9, where every
/// negative control applies), with the same number of runs and the same significance.
std::vector<exactness_case> battery() {
  std::vector<exactness_case> all = specdec::testing::standard_exactness_cases(runs_per_case);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  all.erase(all.begin(), all.end() - 1);
#endif
  return all;
}

// ---------------------------------------------------------------------------------------
// The harness

TEST(chi_square, critical_values_match_the_tables) {
  using specdec::testing::chi_square_critical;
  // Upper-tail quantiles (standard tables; df 2 is exact: -2 ln alpha).
  EXPECT_NEAR(chi_square_critical(1, 1e-4), 15.137, 2e-3);
  EXPECT_NEAR(chi_square_critical(2, 1e-4), -2 * std::log(1e-4), 1e-6);
  EXPECT_NEAR(chi_square_critical(4, 1e-4), 23.513, 2e-3);
  EXPECT_NEAR(chi_square_critical(10, 1e-4), 35.564, 2e-3);
  EXPECT_NEAR(chi_square_critical(30, 1e-3), 59.703, 2e-3);
  EXPECT_NEAR(chi_square_critical(100, 1e-3), 149.449, 2e-3);
  EXPECT_NEAR(chi_square_critical(3, 0.05), 7.815, 1e-3);
  EXPECT_NEAR(chi_square_critical(1, 1e-6), 23.928, 2e-3);
  EXPECT_NEAR(chi_square_critical(1000, 0.01), 1106.969, 2e-2);
  EXPECT_NEAR(specdec::testing::chi_square_upper_tail(chi_square_critical(7, 1e-6), 7), 1e-6, 1e-12);
  EXPECT_THROW((void)chi_square_critical(3, 0.0), specdec::invalid_argument);
  EXPECT_THROW((void)specdec::testing::chi_square_upper_tail(1.0, 0.0), specdec::invalid_argument);
}

TEST(processed_distribution, agrees_with_make_distribution) {
  std::mt19937_64 g(4);
  std::normal_distribution<float> n01;
  const std::vector<sampling_params> settings{{},
                                              {.temperature = 1.0f},
                                              {.temperature = 0.7f, .top_k = 3},
                                              {.temperature = 1.3f, .top_p = 0.8f},
                                              {.temperature = 1.0f, .top_k = 5, .top_p = 0.9f}};
  int checked = 0;
  for (int trial = 0; trial < 500; ++trial) {
    std::vector<float> logits(9);
    for (float& x : logits) x = 2.0f * n01(g);
    if (trial % 5 == 0) logits[3] = logits[6];  // exact ties are broken by id on both sides
    for (const sampling_params& sp : settings) {
      std::vector<double> exact;
      try {
        exact = specdec::testing::processed_distribution(logits, sp);
      } catch (const specdec::invalid_argument&) {
        continue;  // a cut too close to call: refused, not guessed
      }
      std::vector<float> probs(logits.size());
      specdec::make_distribution(logits, sp, probs);
      for (std::size_t i = 0; i < logits.size(); ++i) {
        ASSERT_EQ(exact[i] == 0.0, probs[i] == 0.0f) << "trial " << trial << ", token " << i;
        ASSERT_NEAR(exact[i], probs[i], 1e-5) << "trial " << trial << ", token " << i;
      }
      ++checked;
    }
  }
  EXPECT_GT(checked, 2400);
  // A top-p cut within the margin is refused.
  const std::vector<float> two{0.0f, 0.0f};  // 0.5, 0.5: top_p 0.5 lands on the boundary
  EXPECT_THROW((void)specdec::testing::processed_distribution(two, {.temperature = 1.0f, .top_p = 0.5f}),
               specdec::invalid_argument);
}

TEST(goodness_of_fit, one_sample_outside_the_support_fails_outright) {
  const std::vector<double> law{0.5, 0.3, 0.2, 0.0};
  std::vector<std::uint64_t> counts{50000, 30000, 20000, 0};
  const auto ok = specdec::testing::goodness_of_fit(law, counts);
  EXPECT_TRUE(ok.passed()) << ok.describe();
  EXPECT_EQ(ok.df, 2u);
  counts[3] = 1;  // one impossible sample among 100,001 perfect ones
  const auto bad = specdec::testing::goodness_of_fit(law, counts);
  EXPECT_FALSE(bad.passed());
  EXPECT_FALSE(bad.support_ok());
  EXPECT_TRUE(bad.chi2_ok());
  EXPECT_TRUE(bad.tv_ok());
  EXPECT_EQ(bad.out_of_support, 1u);
  EXPECT_NE(bad.describe().find("1 outside the support FAILS"), std::string::npos) << bad.describe();
}

TEST(goodness_of_fit, pools_small_bins_and_rejects_bad_input) {
  // 3 large bins and 20 tiny ones (expected 0.5 each at N = 10,000): the tiny ones pool
  // into one bin of expected count 10.
  std::vector<double> law(23, 0.001 / 20);
  law[0] = 0.5, law[1] = 0.3, law[2] = 0.199;
  std::vector<std::uint64_t> counts(23, 0);
  counts[0] = 5000, counts[1] = 3000, counts[2] = 1990, counts[3] = 10;
  const auto f = specdec::testing::goodness_of_fit(law, counts);
  EXPECT_EQ(f.df, 3u);
  EXPECT_NEAR(f.chi2, 0.0, 1e-9);
  EXPECT_TRUE(f.passed()) << f.describe();
  EXPECT_THROW((void)specdec::testing::goodness_of_fit(std::vector<double>{0.5, 0.4}, std::vector<std::uint64_t>{1, 1}),
               specdec::invalid_argument);  // does not sum to 1
  EXPECT_THROW((void)specdec::testing::goodness_of_fit(std::vector<double>{1.0}, std::vector<std::uint64_t>{1, 1}),
               specdec::invalid_argument);
  EXPECT_THROW((void)specdec::testing::goodness_of_fit(std::vector<double>{1.0}, std::vector<std::uint64_t>{0}),
               specdec::invalid_argument);  // no samples
  EXPECT_THROW((void)specdec::testing::goodness_of_fit(law, counts, {.significance = 0.0}), specdec::invalid_argument);
}

// The laws of the standard battery: the target's exact law, and the draft's.
struct case_laws {
  sequence_law target, draft;
};
case_laws laws_of(const exactness_case& c) {
  const markov_model target(c.target), draft(c.draft);
  return {specdec::testing::exact_sequence_law(target, c.prompt, c.length, c.params),
          specdec::testing::exact_sequence_law(draft, c.prompt, c.length, c.params)};
}

TEST(exact_sequence_law, is_a_law_whose_marginals_and_prefixes_are_the_models) {
  for (const exactness_case& c : specdec::testing::standard_exactness_cases()) {
    SCOPED_TRACE(c.name);
    const case_laws l = laws_of(c);
    double mass = 0.0;
    for (double p : l.target.joint) mass += p;
    EXPECT_NEAR(mass, 1.0, 1e-9);
    const markov_model target(c.target);
    const auto first = specdec::testing::processed_distribution(target.logits_after(c.prompt), c.params);
    const auto m0 = l.target.marginal(0);
    for (std::size_t t = 0; t < first.size(); ++t) EXPECT_NEAR(m0[t], first[t], 1e-12);
    // One full sequence by hand.
    const std::vector<token_id> seq{0, 1, 0, 0, 1, 0};
    std::vector<token_id> h(c.prompt);
    double p = 1.0;
    for (token_id t : seq) {
      p *= specdec::testing::processed_distribution(target.logits_after(h), c.params)[static_cast<std::size_t>(t)];
      h.push_back(t);
    }
    EXPECT_NEAR(l.target.joint[l.target.index_of(seq)], p, 1e-15);
    // The draft is close to the target but not equal.
    const double d = specdec::testing::tv_distance(l.target.joint, l.draft.joint);
    EXPECT_GT(d, 0.1);
    EXPECT_LT(d, 0.6);
  }
}

TEST(rejection_rate, a_correct_law_passes_and_a_biased_one_fails) {
  const exactness_case c = specdec::testing::standard_exactness_cases()[0];
  const case_laws l = laws_of(c);
  // False alarms: none in 200 samples of the exact law (the bound is 14e-6 per sample).
  EXPECT_EQ(specdec::testing::rejection_rate(l.target, l.target.joint, runs_per_case, 200), 0.0);
  // The draft's own law is rejected every time.
  EXPECT_EQ(specdec::testing::rejection_rate(l.target, l.draft.joint, runs_per_case, 50), 1.0);
  EXPECT_THROW((void)specdec::testing::biased_law(l.target.joint, l.draft.joint, 2.0), specdec::invalid_argument);
  // One law over plain bins: a fair coin passes, a 65:35 coin fails at N = 1000
  // (chi-square noncentrality 90 against a critical value of 23.9).
  const std::vector<double> fair{0.5, 0.5}, biased{0.65, 0.35};
  EXPECT_EQ(specdec::testing::rejection_rate(fair, fair, 1000, 200), 0.0);
  EXPECT_GE(specdec::testing::rejection_rate(fair, biased, 1000, 200), 0.99);
  EXPECT_NEAR(specdec::testing::tv_distance(fair, specdec::testing::biased_law(fair, biased, 0.1)), 0.1, 1e-12);
}

// The power statement in the file comment: a joint law moved by TV 0.03 towards the
// draft's law (the direction a verifier bug leaks) fails the check in >= 99% of simulated
// samples of the cases' size; TV 0.02 is seen in 70-100% of them, depending on the case.
TEST(rejection_rate, power_against_a_tv_bias_towards_the_draft) {
  for (const exactness_case& c : battery()) {
    SCOPED_TRACE(c.name);
    const case_laws l = laws_of(c);
    const auto power = [&](double tv) {
      return specdec::testing::rejection_rate(l.target, specdec::testing::biased_law(l.target.joint, l.draft.joint, tv),
                                              c.runs, 200);
    };
    const double at_003 = power(0.03), at_002 = power(0.02);
    std::printf("%s: power %.3f against TV 0.03, %.3f against TV 0.02 (%zu runs)\n", c.name.c_str(), at_003, at_002,
                c.runs);
    EXPECT_GE(at_003, 0.99);
    EXPECT_GE(at_002, 0.6);
  }
}

// ---------------------------------------------------------------------------------------
// Sampled exactness of speculative decoding

specdec::fixed_gamma gamma_policy(std::size_t g) {
  specdec::fixed_gamma f{};
  f.gamma = g;
  return f;
}

/// A factory for `check_case`: speculative decoding with `rollback`, drafting `gamma`
/// tokens per step, adding each generation's statistics to `*stats`.
template <class Rollback>
auto speculative(Rollback rollback, std::size_t gamma, const exactness_case& c, specdec::generation_stats* stats) {
  return [rollback, gamma, prompt = c.prompt, opts = generation_options{.max_new_tokens = c.length, .stop_at_eos = false},
          stats](markov_model& draft, markov_model& target, const sampling_params& params) {
    return [dec = specdec::speculative_decoder(draft, target, gamma_policy(gamma), rollback, params), prompt, opts,
            stats](std::uint64_t seed) mutable {
      dec.set_seed(seed);
      auto r = dec.generate(prompt, opts);
      stats->merge(r.stats);
      return r.tokens;
    };
  };
}

TEST(sampled_exactness, rejection_sampling_at_draft_positions_0_to_4_and_the_bonus) {
  for (const exactness_case& c : battery()) {
    SCOPED_TRACE(c.name);
    specdec::generation_stats stats;
    const exactness_report r = specdec::testing::check_case(c, speculative(specdec::rejection_sampling{}, 5, c, &stats));
    SPECDEC_EXPECT_EXACT(r);
    // Every run's first step drafts positions 0-4, all verified; position 4 is accepted
    // (and then the bonus drawn) in a good share of them; acceptance is high, never 1.
    ASSERT_GE(stats.per_position_proposed.size(), 5u);
    for (std::size_t j = 0; j < 5; ++j) {
      EXPECT_GE(stats.per_position_proposed[j], c.runs) << "position " << j;
      EXPECT_GE(stats.per_position_accepted[j], c.runs / 5) << "position " << j;
    }
    EXPECT_GT(stats.acceptance_rate(), 0.6);
    EXPECT_LT(stats.acceptance_rate(), 0.97);
    EXPECT_GT(stats.rollbacks, c.runs / 4);
    std::printf("%s: acceptance %.3f, position 4 accepted %zu of %zu, rollbacks %zu\n", c.name.c_str(),
                stats.acceptance_rate(), stats.per_position_accepted[4], stats.per_position_proposed[4],
                stats.rollbacks);
  }
}

// ---------------------------------------------------------------------------------------
// Negative controls: rejection sampling with one deliberate bug each.

enum class bug {
  none,                     ///< a correct re-implementation (the controls' own positive control)
  always_accept,            ///< every draft survives, bonus from the target
  residual_mixed_with_p,    ///< replacement from (normalised residual + p) / 2
  bonus_from_wrong_row,     ///< bonus drawn from p_{k-1} instead of p_k
  replacement_untruncated,  ///< residual of the target's softmax before top-k/top-p
  ratio_x105,               ///< acceptance probability min(1, 1.05 p(x) / q(x))
};

/// Rejection sampling (Leviathan et al. Alg. 1) with the bug `B`. Claims exactness, so the
/// decoder verifies every block exactly as it does for `rejection_sampling`.
template <bug B>
struct broken_rejection_sampling {
  static constexpr bool exact = true;

  specdec::verify_result verify(const specdec::verify_input& in) const {
    const std::size_t k = in.k(), v = in.vocab;
    for (std::size_t i = 0; i < k && B != bug::always_accept; ++i) {
      const auto p = in.p_row(i), q = in.q_row(i);
      const auto x = static_cast<std::size_t>(in.drafted[i]);
      const double px = (B == bug::ratio_x105 ? 1.05 : 1.0) * p[x], qx = q[x];
      if (px >= qx) continue;
      if (px > 0.0 && in.rng->uniform() * qx < px) continue;
      std::vector<float> base(p.begin(), p.end());
      if (B == bug::replacement_untruncated) specdec::softmax(in.logits_row(i), base, in.params->temperature);
      std::vector<float> r(v);
      double mass = 0.0;
      for (std::size_t j = 0; j < v; ++j) mass += r[j] = std::max(0.0f, base[j] - q[j]);
      if (mass <= 0.0) r.assign(p.begin(), p.end());
      if (B == bug::residual_mixed_with_p && mass > 0.0)
        for (std::size_t j = 0; j < v; ++j) r[j] = static_cast<float>(0.5 * r[j] / mass + 0.5 * p[j]);
      return {i, specdec::sample_from(r, in.rng->uniform())};
    }
    const std::size_t row = B == bug::bonus_from_wrong_row && k > 0 ? k - 1 : k;
    return {k, specdec::sample_from(in.p_row(row), in.rng->uniform())};
  }
};
static_assert(specdec::rollback_policy<broken_rejection_sampling<bug::ratio_x105>>);

template <bug B>
exactness_report run_control(const exactness_case& c) {
  specdec::generation_stats stats;
  auto r = specdec::testing::check_case(c, speculative(broken_rejection_sampling<B>{}, 5, c, &stats));
  std::printf("%s, bug %d: %s, smallest p-value %.3g, %llu samples outside the support\n", c.name.c_str(),
              static_cast<int>(B), r.passed() ? "passes" : "fails", r.min_p_value(),
              static_cast<unsigned long long>(r.out_of_support()));
  return r;
}

// The correct re-implementation passes, so what fails below fails for its bug.
TEST(negative_controls, the_unbroken_reimplementation_passes) {
  for (const exactness_case& c : battery()) {
    SCOPED_TRACE(c.name);
    SPECDEC_EXPECT_EXACT(run_control<bug::none>(c));
  }
}

template <bug B>
void expect_control_fails() {
  for (const exactness_case& c : battery()) {
    SCOPED_TRACE(c.name);
    SPECDEC_EXPECT_NOT_EXACT(run_control<B>(c));
  }
}
TEST(negative_controls, always_accept_fails) { expect_control_fails<bug::always_accept>(); }
TEST(negative_controls, residual_mixed_with_p_fails) { expect_control_fails<bug::residual_mixed_with_p>(); }
TEST(negative_controls, bonus_from_the_wrong_row_fails) { expect_control_fails<bug::bonus_from_wrong_row>(); }
TEST(negative_controls, acceptance_ratio_times_1_05_fails) { expect_control_fails<bug::ratio_x105>(); }

// Tokens the target can never emit appear (the cases with top-k or top-p): the support
// check alone fails it, whatever the chi-square says.
TEST(negative_controls, replacement_from_the_untruncated_distribution_fails) {
  for (const exactness_case& c : battery()) {
    if (c.params.top_k == 0 && c.params.top_p == 1.0f) continue;  // then nothing is truncated
    SCOPED_TRACE(c.name);
    const exactness_report r = run_control<bug::replacement_untruncated>(c);
    EXPECT_GT(r.out_of_support(), 0u) << r.describe();
    SPECDEC_EXPECT_NOT_EXACT(r);
  }
}

// ---------------------------------------------------------------------------------------
// Greedy near-ties: the target's top two logits equal or one ulp apart, at every state.

/// A broken greedy verifier (the negative control): it accepts a drafted token whose logit
/// is within a relative `slack` of the row's maximum, so with slack 0 any of tied maxima
/// rather than the first one, and with slack 1e-6 also a token one ulp below the top.
struct tolerant_match {
  static constexpr bool exact = true;
  float slack = 0.0f;
  specdec::verify_result verify(const specdec::verify_input& in) const {
    std::size_t i = 0;
    for (; i < in.k(); ++i) {
      const auto row = in.logits_row(i);
      const float top = *std::max_element(row.begin(), row.end());
      if (row[static_cast<std::size_t>(in.drafted[i])] < top - slack * std::abs(top)) break;
    }
    return {i, specdec::argmax(in.logits_row(i))};
  }
};

TEST(greedy_near_ties, speculative_output_is_the_targets_through_every_exact_verifier) {
  const generation_options opts{.max_new_tokens = 60, .stop_at_eos = false};
  const std::vector<std::vector<token_id>> prompts{{0}, {3}, {5, 1}};
  std::size_t kinds_met[3] = {0, 0, 0};
  std::size_t controls_caught[2] = {0, 0};  // flipped-draft runs where tolerant_match went wrong
  for (std::uint64_t seed : {1u, 2u, 3u}) {
    for (bool same_draft : {false, true}) {
      auto [draft, target] = near_tie_pair(7, seed, same_draft);
      for (std::size_t p = 0; p < prompts.size(); ++p) {
        SCOPED_TRACE("seed " + std::to_string(seed) + (same_draft ? ", identical draft" : ", flipped draft") +
                     ", prompt " + std::to_string(p));
        const auto expected = specdec::autoregressive_decoder(target).generate(prompts[p], opts).tokens;
        ASSERT_EQ(expected.size(), opts.max_new_tokens);
        // Every step is at a near-tie by construction; count the kinds the path meets.
        for (std::size_t i = 0; i < expected.size(); ++i)
          ++kinds_met[static_cast<std::size_t>(i == 0 ? prompts[p].back() : expected[i - 1]) % 3];
        for (std::size_t gamma : {1u, 2u, 3u, 5u, 8u}) {
          specdec::speculative_decoder gm(draft, target, gamma_policy(gamma), specdec::greedy_match{});
          const auto r = gm.generate(prompts[p], opts);
          EXPECT_EQ(r.tokens, expected) << "greedy_match, gamma " << gamma;
          if (!same_draft) {
            EXPECT_GT(r.stats.rollbacks, 0u) << "the flipped ties are rejected";
          }
          specdec::speculative_decoder rs(draft, target, gamma_policy(gamma), specdec::rejection_sampling{});
          EXPECT_EQ(rs.generate(prompts[p], opts).tokens, expected) << "rejection_sampling, gamma " << gamma;
          for (float slack : {0.0f, 1e-6f}) {
            specdec::speculative_decoder bad(draft, target, gamma_policy(gamma), tolerant_match{slack});
            controls_caught[slack > 0] += !same_draft && bad.generate(prompts[p], opts).tokens != expected;
          }
        }
      }
      // The batched decoder, all prompts in one batch.
      const auto tables = std::make_shared<std::pair<table_model, table_model>>(draft, target);
      specdec::independent_batch<table_model> bd([tables] { return tables->first; });
      specdec::independent_batch<table_model> bt([tables] { return tables->second; });
      specdec::batched_speculative_decoder dec(bd, bt, gamma_policy(4), specdec::rejection_sampling{});
      for (std::size_t p = 0; p < prompts.size(); ++p) dec.submit({.prompt = prompts[p], .options = opts, .id = p});
      for (const specdec::batch_result& r : dec.run())
        EXPECT_EQ(r.result.tokens, specdec::autoregressive_decoder(target).generate(prompts[r.id], opts).tokens)
            << "batched, prompt " << r.id;
    }
  }
  for (std::size_t kind = 0; kind < 3; ++kind) EXPECT_GE(kinds_met[kind], 30u) << "tie kind " << kind;
  // The negative controls: a verifier that accepts any tied maximum, or a token one ulp
  // below the top, leaves the target's path in nearly every flipped-draft run (of 45).
  EXPECT_GE(controls_caught[0], 35u);
  EXPECT_GE(controls_caught[1], 40u);
  std::printf("near ties: tolerant_match went wrong in %zu (slack 0) and %zu (slack 1e-6) of 45 runs\n",
              controls_caught[0], controls_caught[1]);
}

}  // namespace
