// Tests for include/specdec/hybrid/predictor.hpp: least squares recovers a known linear
// relation, the entropy->difficulty logistic map recovers its scale, the error report
// equals hand-computed values, and the concepts accept/reject what they should. On real
// model outputs (the committed stories260K length log), the linear length predictor beats
// the constant by a bootstrap-supported margin and a shuffled-feature control does not.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <vector>

#include "specdec/hybrid/predictor.hpp"
#include "specdec/hybrid/routing_log.hpp"

namespace {
using specdec::hybrid::constant_length_predictor;
using specdec::hybrid::entropy_difficulty_predictor;
using specdec::hybrid::linear_length_predictor;
using specdec::hybrid::prediction_error;
using specdec::hybrid::request_features;

static_assert(specdec::hybrid::length_predictor<constant_length_predictor>);
static_assert(specdec::hybrid::length_predictor<linear_length_predictor>);
static_assert(specdec::hybrid::difficulty_predictor<entropy_difficulty_predictor>);
static_assert(!specdec::hybrid::difficulty_predictor<linear_length_predictor>);  // not a probability
struct predict_non_const {
  double predict(const request_features&) { return 1; }
  void validate() const {}
};
struct no_validate {
  double predict(const request_features&) const { return 1; }
};
struct predict_wrong_type {
  std::vector<double> predict(const request_features&) const { return {}; }
  void validate() const {}
};
static_assert(!specdec::hybrid::length_predictor<predict_non_const>);
static_assert(!specdec::hybrid::length_predictor<no_validate>);
static_assert(!specdec::hybrid::length_predictor<predict_wrong_type>);

// Library-independent draws for the synthetic data.
struct rng {
  std::mt19937_64 e;
  explicit rng(std::uint64_t s) : e(s) {}
  double u() { return static_cast<double>(e() >> 11) * 0x1.0p-53; }
  double n() { return std::sqrt(-2 * std::log(1 - u())) * std::cos(6.283185307179586 * u()); }
};

// length = 20 + 0.5 prompt + 30 entropy - 40 max_prob + 10 first_entropy + N(0, 5^2)
constexpr double truth[] = {20.0, 0.5, 30.0, -40.0, 10.0};
constexpr double noise_sd = 5.0;

void make_length_data(std::uint64_t seed, int n, std::vector<request_features>& f, std::vector<double>& y) {
  rng r(seed);
  for (int i = 0; i < n; ++i) {
    request_features x{.prompt_tokens = static_cast<std::size_t>(20 + 200 * r.u()),
                       .draft_mean_entropy = static_cast<float>(2.0 * r.u()),
                       .draft_max_prob_mean = static_cast<float>(0.2 + 0.7 * r.u()),
                       .draft_first_token_entropy = static_cast<float>(3.0 * r.u())};
    const double l = truth[0] + truth[1] * double(x.prompt_tokens) + truth[2] * x.draft_mean_entropy +
                     truth[3] * x.draft_max_prob_mean + truth[4] * x.draft_first_token_entropy +
                     noise_sd * r.n();
    f.push_back(x);
    y.push_back(l);
  }
}

TEST(linear_length_predictor, recovers_a_known_linear_relation) {
  std::vector<request_features> f_train, f_test;
  std::vector<double> y_train, y_test;
  make_length_data(1, 3000, f_train, y_train);
  make_length_data(2, 2000, f_test, y_test);
  const auto p = linear_length_predictor::fit(f_train, y_train);
  p.validate();
  ASSERT_EQ(p.coefficients.size(), 4u);
  // Standard errors ~ noise_sd / (sd(x) sqrt(n)): prompt ~0.0015, entropy ~0.16,
  // max_prob ~0.45, first entropy ~0.11, intercept ~0.6. Bounds are ~4-5 SE.
  EXPECT_NEAR(p.intercept, truth[0], 3.0);
  EXPECT_NEAR(p.coefficients[0], truth[1], 0.01);
  EXPECT_NEAR(p.coefficients[1], truth[2], 0.8);
  EXPECT_NEAR(p.coefficients[2], truth[3], 2.0);
  EXPECT_NEAR(p.coefficients[3], truth[4], 0.5);
  // With the true model, the MAE is the noise's: 5 * sqrt(2 / pi) ~ 3.99.
  const auto err = prediction_error::of(p, f_test, y_test);
  EXPECT_EQ(err.count, 2000u);
  EXPECT_LT(err.mean_absolute_error, 4.4);
  EXPECT_GT(err.mean_absolute_error, 3.6);
  EXPECT_GT(err.within_20_percent, 0.8);
  // A constant predictor is much worse on the same data.
  const auto c = constant_length_predictor::fit(y_train);
  EXPECT_GT(prediction_error::of(c, f_test, y_test).mean_absolute_error, 3 * err.mean_absolute_error);
}

TEST(linear_length_predictor, exact_fit_on_a_tiny_case_and_clamps_at_zero) {
  // y = 1 + 2 x exactly: the normal equations give intercept 1, slope 2.
  const std::vector<std::vector<double>> x{{0.0}, {1.0}, {2.0}, {3.0}};
  const std::vector<double> y{1.0, 3.0, 5.0, 7.0};
  const auto p = linear_length_predictor::fit(x, y, 0.0);
  EXPECT_NEAR(p.intercept, 1.0, 1e-12);
  EXPECT_NEAR(p.coefficients[0], 2.0, 1e-12);
  const std::vector<double> neg{-5.0};
  EXPECT_EQ(p.predict_raw(neg), 0.0);  // 1 - 10 < 0 is clamped
  // A constant second feature: singular without a ridge, coefficient 0 with the default one.
  const std::vector<std::vector<double>> xc{{0.0, 7.0}, {1.0, 7.0}, {2.0, 7.0}, {3.0, 7.0}};
  EXPECT_THROW((void)linear_length_predictor::fit(xc, y, 0.0), specdec::invalid_argument);
  const auto pc = linear_length_predictor::fit(xc, y);
  EXPECT_NEAR(pc.intercept, 1.0, 1e-6);
  EXPECT_NEAR(pc.coefficients[0], 2.0, 1e-6);
  EXPECT_EQ(pc.coefficients[1], 0.0);
}

TEST(linear_length_predictor, rejects_bad_input) {
  const std::vector<double> y{1.0, 2.0};
  EXPECT_THROW((void)linear_length_predictor::fit(std::vector<std::vector<double>>{{1.0}}, y),
               specdec::invalid_argument);  // 1 row, 2 targets
  EXPECT_THROW((void)linear_length_predictor::fit(std::vector<std::vector<double>>{{1.0}, {1.0, 2.0}}, y),
               specdec::invalid_argument);  // ragged
  // Constant feature and no ridge: singular.
  EXPECT_THROW((void)linear_length_predictor::fit(std::vector<std::vector<double>>{{1.0}, {1.0}}, y, 0.0),
               specdec::invalid_argument);
  EXPECT_THROW((void)linear_length_predictor::fit(std::vector<std::vector<double>>{{1.0}, {2.0}}, y, -1.0),
               specdec::invalid_argument);
  EXPECT_THROW((void)linear_length_predictor::fit(
                   std::vector<std::vector<double>>{{1.0}, {std::numeric_limits<double>::quiet_NaN()}}, y),
               specdec::invalid_argument);
  linear_length_predictor p{.intercept = std::nan(""), .coefficients = {}};
  EXPECT_THROW(p.validate(), specdec::invalid_argument);
  EXPECT_THROW((constant_length_predictor{.length = -1.0}.validate()), specdec::invalid_argument);
}

TEST(entropy_difficulty_predictor, recovers_scale_and_midpoint) {
  // hard ~ Bernoulli(sigmoid(3 (entropy - 1.2))), entropy uniform on [0, 3].
  rng r(7);
  std::vector<double> e;
  std::vector<int> hard;
  for (int i = 0; i < 6000; ++i) {
    const double x = 3.0 * r.u();
    e.push_back(x);
    hard.push_back(r.u() < 1.0 / (1.0 + std::exp(-3.0 * (x - 1.2))) ? 1 : 0);
  }
  const auto d = entropy_difficulty_predictor::fit(e, hard);
  EXPECT_NEAR(d.scale, 3.0, 0.45);
  EXPECT_NEAR(d.midpoint, 1.2, 0.08);
  request_features f{.draft_mean_entropy = 1.2f};
  EXPECT_NEAR(d.predict(f), 0.5, 0.06);
  f.draft_mean_entropy = 3.0f;
  EXPECT_GT(d.predict(f), 0.95);
  // Reversed labels give a negative slope, which the model does not allow.
  for (int& h : hard) h = 1 - h;
  EXPECT_THROW((void)entropy_difficulty_predictor::fit(e, hard), specdec::invalid_argument);
  EXPECT_THROW((void)entropy_difficulty_predictor::fit({1.0, std::nan("")}, {0, 1}), specdec::invalid_argument);
  EXPECT_THROW((void)entropy_difficulty_predictor::fit({1.0, 2.0}, {0, 1}, 1e-3, 0), specdec::invalid_argument);
  // Perfectly separable labels: the slope penalty keeps the fit finite.
  const auto sep = entropy_difficulty_predictor::fit({0.5, 1.0, 2.0, 2.5}, {0, 0, 1, 1});
  EXPECT_TRUE(std::isfinite(sep.scale));
  EXPECT_NEAR(sep.midpoint, 1.5, 1e-6);  // symmetric data: the midpoint is the centre
  EXPECT_THROW((entropy_difficulty_predictor{.scale = 0.0}.validate()), specdec::invalid_argument);
  EXPECT_THROW((entropy_difficulty_predictor{.scale = 1.0, .midpoint = std::nan("")}.validate()),
               specdec::invalid_argument);
}

TEST(prediction_error, equals_hand_computed_values) {
  // |10-12| = 2 <= 0.2*12 = 2.4 (within); |20-30| = 10 > 6; |33-30| = 3 <= 6 (within);
  // |0-5| = 5 > 1. MAE = (2 + 10 + 3 + 5) / 4 = 5, within = 2 / 4 = 0.5.
  const auto e = prediction_error::of({10.0, 20.0, 33.0, 0.0}, {12.0, 30.0, 30.0, 5.0});
  EXPECT_DOUBLE_EQ(e.mean_absolute_error, 5.0);
  EXPECT_DOUBLE_EQ(e.within_20_percent, 0.5);
  EXPECT_EQ(e.count, 4u);
  EXPECT_THROW((void)prediction_error::of({1.0}, {1.0, 2.0}), specdec::invalid_argument);
  EXPECT_THROW((void)prediction_error::of({}, {}), specdec::invalid_argument);
}
// ---------------------------------------------------------------------------------------
// On real model outputs: models/stories260K_length_log.csv (written by
// scripts/hybrid_routing.sh): prefixes of stories stories260K sampled itself, the length of
// its greedy continuation to the story's end, the probe of the prompt; folds by story.

struct length_fold {
  std::vector<request_features> features;
  std::vector<double> lengths;
};

struct real_length_log {
  length_fold calibration, test;
};

const real_length_log& the_real_length_log() {
  static const real_length_log r = [] {
    const auto log = specdec::hybrid::read_length_log(SPECDEC_MODELS_DIR "/stories260K_length_log.csv");
    const auto [cal, test] = specdec::hybrid::split_folds(log.requests);
    real_length_log out;
    for (const auto& [from, to] : {std::pair{&cal, &out.calibration}, std::pair{&test, &out.test}})
      for (const auto& q : *from) {
        to->features.push_back(q.features);
        to->lengths.push_back(static_cast<double>(q.target_tokens));
      }
    return out;
  }();
  return r;
}

// The test fold's MAE of `p` over the constant's (the calibration mean), with a 90%
// bootstrap interval over 1000 resamples of the test fold.
specdec::hybrid::interval mae_over_constant(const linear_length_predictor& p) {
  const auto& r = the_real_length_log();
  const double constant = constant_length_predictor::fit(r.calibration.lengths).length;
  std::vector<double> err, base;
  for (std::size_t i = 0; i < r.test.lengths.size(); ++i) {
    err.push_back(std::abs(p.predict(r.test.features[i]) - r.test.lengths[i]));
    base.push_back(std::abs(constant - r.test.lengths[i]));
  }
  return specdec::hybrid::bootstrap(
      err.size(),
      [&](std::span<const std::size_t> ix) {
        double a = 0.0, b = 0.0;
        for (std::size_t i : ix) a += err[i], b += base[i];
        return a / b;
      },
      1000, 0.90, 3);
}

TEST(length_predictor_on_real_outputs, the_log_has_both_folds_and_lengths_that_vary) {
  const auto& r = the_real_length_log();
  EXPECT_GE(r.calibration.lengths.size(), 200u);
  EXPECT_GE(r.test.lengths.size(), 200u);
  const auto [lo, hi] = std::minmax_element(r.test.lengths.begin(), r.test.lengths.end());
  EXPECT_GT(*hi - *lo, 100.0);  // from a few tokens to the cap
}

TEST(length_predictor_on_real_outputs, beats_the_constant_by_the_goal_margin) {
  const auto& r = the_real_length_log();
  const auto p = linear_length_predictor::fit(r.calibration.features, r.calibration.lengths, 1.0);
  const auto ratio = mae_over_constant(p);
  // The goal: MAE <= 0.7x the constant's, supported at one-sided 95%.
  EXPECT_LT(ratio.upper, 0.7) << "MAE / constant MAE = " << ratio.estimate << ", 90% interval [" << ratio.lower
                              << ", " << ratio.upper << "]";
}

TEST(length_predictor_on_real_outputs, a_shuffled_feature_predictor_is_the_negative_control) {
  // The same fit on calibration features permuted across requests: the features no longer
  // belong to their lengths, and the same bound must not certify it beats the constant.
  const auto& r = the_real_length_log();
  auto shuffled = r.calibration.features;
  std::mt19937_64 g(5);
  std::shuffle(shuffled.begin(), shuffled.end(), g);
  const auto p = linear_length_predictor::fit(shuffled, r.calibration.lengths, 1.0);
  const auto ratio = mae_over_constant(p);
  EXPECT_GT(ratio.upper, 1.0) << "MAE / constant MAE = " << ratio.estimate << ", 90% interval [" << ratio.lower
                              << ", " << ratio.upper << "]";
}
}  // namespace
