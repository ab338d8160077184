// Tests for include/specdec/sampling.hpp.
#include <gtest/gtest.h>

#include <algorithm>

#include <cmath>
#include <limits>
#include <vector>

#include "specdec/sampling.hpp"

namespace {
using specdec::sampling_params;
using specdec::token_id;

TEST(sampling, greedy_distribution_is_one_hot_at_first_max) {
  std::vector<float> logits{0.5f, 2.0f, -1.0f, 2.0f};
  std::vector<float> probs(4);
  specdec::make_distribution(logits, sampling_params{}, probs);
  EXPECT_EQ(probs, (std::vector<float>{0.0f, 1.0f, 0.0f, 0.0f}));
  specdec::sampler s({}, 123);
  EXPECT_EQ(s.next(logits, probs), 1);
}

// argmax runs 16 lanes at a time; it must return what std::max_element does: the first
// maximal index, a NaN never winning unless it is first, -0 and +0 equal.
TEST(sampling, argmax_is_max_elements_first_maximum) {
  std::mt19937 rng(4);
  std::uniform_int_distribution<int> small(-3, 3);
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (std::size_t n : {1u, 2u, 15u, 16u, 17u, 31u, 32u, 33u, 70u, 2048u}) {
    for (int trial = 0; trial < 200; ++trial) {
      std::vector<float> v(n);
      for (float& x : v) x = static_cast<float>(small(rng));  // many ties
      const int kind = trial % 6;
      if (kind == 1) v[rng() % n] = nan;
      if (kind == 2) v[0] = nan;
      if (kind == 3) for (float& x : v) x = -inf;
      if (kind == 4) v[rng() % n] = inf, v[rng() % n] = nan;
      if (kind == 5) for (float& x : v) x = (rng() % 2) ? 0.0f : -0.0f;
      const auto want = static_cast<specdec::token_id>(std::max_element(v.begin(), v.end()) - v.begin());
      ASSERT_EQ(specdec::argmax(v), want) << "n " << n << " trial " << trial;
    }
  }
  EXPECT_THROW((void)specdec::argmax(std::span<const float>{}), specdec::invalid_argument);
}

TEST(sampling, softmax_matches_hand_values) {
  // softmax(ln 1, ln 2, ln 3, ln 4) = (0.1, 0.2, 0.3, 0.4)
  std::vector<float> logits{0.0f, std::log(2.0f), std::log(3.0f), std::log(4.0f)};
  std::vector<float> p(4);
  specdec::make_distribution(logits, {.temperature = 1.0f}, p);
  EXPECT_NEAR(p[0], 0.1f, 1e-6f);
  EXPECT_NEAR(p[1], 0.2f, 1e-6f);
  EXPECT_NEAR(p[2], 0.3f, 1e-6f);
  EXPECT_NEAR(p[3], 0.4f, 1e-6f);
  // temperature 0.5 squares the odds: (1,4,9,16)/30
  specdec::make_distribution(logits, {.temperature = 0.5f}, p);
  EXPECT_NEAR(p[0], 1.0f / 30, 1e-6f);
  EXPECT_NEAR(p[3], 16.0f / 30, 1e-6f);
}

TEST(sampling, top_k_and_top_p_keep_the_right_sets) {
  std::vector<float> logits{0.0f, std::log(2.0f), std::log(3.0f), std::log(4.0f)};
  std::vector<float> p(4);
  // top-k 2 keeps {3, 2} with mass 0.4 and 0.3 -> 4/7, 3/7
  specdec::make_distribution(logits, {.temperature = 1.0f, .top_k = 2}, p);
  EXPECT_EQ(p[0], 0.0f);
  EXPECT_EQ(p[1], 0.0f);
  EXPECT_NEAR(p[2], 3.0f / 7, 1e-6f);
  EXPECT_NEAR(p[3], 4.0f / 7, 1e-6f);
  // top-p 0.75: 0.4 < 0.75, 0.7 < 0.75, 0.9 >= 0.75 -> keeps {3,2,1}: (2,3,4)/9
  specdec::make_distribution(logits, {.temperature = 1.0f, .top_p = 0.75f}, p);
  EXPECT_EQ(p[0], 0.0f);
  EXPECT_NEAR(p[1], 2.0f / 9, 1e-6f);
  EXPECT_NEAR(p[3], 4.0f / 9, 1e-6f);
  // top-p 0.4 keeps only the most likely token
  specdec::make_distribution(logits, {.temperature = 1.0f, .top_p = 0.4f}, p);
  EXPECT_EQ(p, (std::vector<float>{0.0f, 0.0f, 0.0f, 1.0f}));
}

TEST(sampling, draws_follow_the_distribution) {
  // Chi-square goodness of fit, 3 degrees of freedom: critical value at p = 1e-4 is 21.11.
  std::vector<float> probs{0.1f, 0.2f, 0.3f, 0.4f};
  specdec::random_source rng(7);
  const int n = 100000;
  std::vector<int> counts(4, 0);
  for (int i = 0; i < n; ++i) ++counts[static_cast<std::size_t>(specdec::sample_from(probs, rng.uniform()))];
  double chi2 = 0;
  for (std::size_t i = 0; i < 4; ++i) {
    double e = n * probs[i];
    chi2 += (counts[i] - e) * (counts[i] - e) / e;
  }
  EXPECT_LT(chi2, 21.11);
}

TEST(sampling, zero_probability_tokens_are_never_drawn) {
  std::vector<float> probs{0.0f, 0.5f, 0.0f, 0.5f, 0.0f};
  EXPECT_EQ(specdec::sample_from(probs, 0.0), 1);
  EXPECT_EQ(specdec::sample_from(probs, 0.999999999), 3);
  EXPECT_EQ(specdec::sample_from(probs, 1.0), 3);  // rounding past the end stays on mass
}

TEST(sampling, same_seed_same_tokens) {
  std::vector<float> logits{0.1f, 0.3f, -0.2f, 0.05f, 0.4f};
  std::vector<float> p(5);
  specdec::sampler a({.temperature = 1.0f}, 99), b({.temperature = 1.0f}, 99), c({.temperature = 1.0f}, 100);
  std::vector<token_id> ta, tb, tc;
  for (int i = 0; i < 64; ++i) {
    ta.push_back(a.next(logits, p));
    tb.push_back(b.next(logits, p));
    tc.push_back(c.next(logits, p));
  }
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
}

TEST(sampling, entropy_of_known_distributions) {
  std::vector<float> uniform4(4, 0.25f);
  EXPECT_NEAR(specdec::entropy(uniform4), std::log(4.0f), 1e-6f);
  std::vector<float> one_hot{0.0f, 1.0f, 0.0f};
  EXPECT_EQ(specdec::entropy(one_hot), 0.0f);
}

TEST(sampling, bad_parameters_throw_with_the_parameter_name) {
  auto message_of = [](sampling_params p) {
    try {
      p.validate();
    } catch (const specdec::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(message_of({.temperature = -1.0f}).find("temperature"), std::string::npos);
  EXPECT_NE(message_of({.temperature = std::numeric_limits<float>::quiet_NaN()}).find("temperature"),
            std::string::npos);
  EXPECT_NE(message_of({.top_k = -3}).find("top_k"), std::string::npos);
  EXPECT_NE(message_of({.top_p = 0.0f}).find("top_p"), std::string::npos);
  EXPECT_NE(message_of({.top_p = 1.5f}).find("top_p"), std::string::npos);
  EXPECT_THROW(specdec::sampler({.temperature = -0.5f}), specdec::invalid_argument);
  std::vector<float> a(3), b(4);
  EXPECT_THROW(specdec::make_distribution(a, {}, b), specdec::invalid_argument);
  std::vector<float> zero(3, 0.0f);
  EXPECT_THROW((void)specdec::sample_from(zero, 0.5), specdec::invalid_argument);
}

// A temperature whose reciprocal overflows made every logit / T NaN and failed later in
// sample_from, naming neither the parameter nor the cause.
TEST(sampling, temperatures_whose_reciprocal_overflows_are_rejected) {
  auto message_of = [](float t) {
    try {
      sampling_params{.temperature = t}.validate();
    } catch (const specdec::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  for (float t : {1e-39f, std::numeric_limits<float>::denorm_min(), 2e-39f}) {
    const std::string m = message_of(t);
    EXPECT_NE(m.find("temperature"), std::string::npos) << t;
    EXPECT_NE(m.find("overflows"), std::string::npos) << t << ": " << m;
  }
  // The smallest normal temperature is fine: its reciprocal is finite.
  EXPECT_EQ(message_of(std::numeric_limits<float>::min()), "");
  EXPECT_EQ(message_of(1e-30f), "");
  EXPECT_EQ(message_of(0.0f), "");
}

// Non-finite logits (a model with NaN weights) are reported as such, with the position,
// instead of "no positive finite mass" from the draw.
TEST(sampling, errors_name_their_cause) {
  const auto message_of = [](std::vector<float> logits, sampling_params p) {
    std::vector<float> probs(logits.size());
    try {
      specdec::make_distribution(logits, p, probs);
    } catch (const specdec::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  std::string m = message_of({0.5f, nan, 1.0f}, {.temperature = 1.0f});
  EXPECT_NE(m.find("logit 1 of 3 is nan"), std::string::npos) << m;
  m = message_of({0.5f, 1.0f, inf}, {.temperature = 0.7f, .top_p = 0.9f});
  EXPECT_NE(m.find("logit 2 of 3 is inf"), std::string::npos) << m;
  EXPECT_EQ(message_of({0.5f, 1.0f, 2.0f}, {.temperature = 1e-30f}), "");  // tiny but finite 1 / T
  std::vector<float> bad{0.2f, -0.1f, 0.0f};
  bad[0] = nan;
  try {
    (void)specdec::sample_from(bad, 0.5);
    ADD_FAILURE() << "no exception";
  } catch (const specdec::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("total mass over 3 tokens is nan"), std::string::npos) << e.what();
  }
}
}  // namespace

namespace {
// Top-p over a large vocabulary against a brute-force nucleus computed here in double:
// sort every token by probability, keep the shortest prefix reaching top_p.
TEST(sampling, top_p_on_a_large_vocabulary_matches_a_brute_force_nucleus) {
  const std::size_t n = 32000;
  specdec::random_source rng(11);
  std::vector<float> logits(n);
  for (float& l : logits) l = static_cast<float>(6.0 * rng.uniform());
  for (float top_p : {0.1f, 0.5f, 0.9f, 0.99f}) {
    std::vector<float> p(n);
    specdec::make_distribution(logits, {.temperature = 1.0f, .top_p = top_p}, p);
    std::vector<double> full(n);
    double z = 0;
    const float mx = *std::max_element(logits.begin(), logits.end());
    for (std::size_t i = 0; i < n; ++i) z += full[i] = std::exp(double(logits[i]) - mx);
    std::vector<std::size_t> idx(n);
    for (std::size_t i = 0; i < n; ++i) idx[i] = i;
    std::sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return full[a] > full[b]; });
    double cum = 0;
    std::size_t kept = 0;
    while (kept < n && cum < top_p * z) cum += full[idx[kept++]];
    std::size_t nonzero = 0;
    for (float x : p) nonzero += x > 0.0f;
    // Float and double may disagree on the boundary token only.
    EXPECT_LE(std::max(nonzero, kept) - std::min(nonzero, kept), 1u) << "top_p " << top_p;
    for (std::size_t r = 0; r + 1 < std::min(nonzero, kept); ++r)
      EXPECT_GT(p[idx[r]], 0.0f) << "top_p " << top_p << ", rank " << r;
    double mass = 0;
    for (float x : p) mass += x;
    EXPECT_NEAR(mass, 1.0, 1e-4);
  }
}
}  // namespace
