// Tests for include/specdec/hybrid/training.hpp: the linear solver against a hand-solved
// system and a singular one, the design-matrix checks, and logistic regression learning
// a noisy linear rule with the right weight signs and ratio.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "specdec/hybrid/training.hpp"

namespace {
using namespace specdec::hybrid;

// Library-independent normal draws (Box-Muller on a 64-bit Mersenne twister).
struct rng {
  std::mt19937_64 e;
  explicit rng(std::uint64_t s) : e(s) {}
  double u() { return static_cast<double>(e() >> 11) * 0x1.0p-53; }
  double n() { return std::sqrt(-2 * std::log(1 - u())) * std::cos(6.283185307179586 * u()); }
};

TEST(solve_linear, solves_a_hand_computed_system_with_pivoting) {
  // [0 2 1; 1 1 1; 2 1 0] x = [5; 4; 4] has x = (1, 2, 1); the zero pivot forces a swap.
  const auto x = detail::solve_linear({0, 2, 1, 1, 1, 1, 2, 1, 0}, {5, 4, 4}, "test");
  ASSERT_EQ(x.size(), 3u);
  EXPECT_NEAR(x[0], 1.0, 1e-12);
  EXPECT_NEAR(x[1], 2.0, 1e-12);
  EXPECT_NEAR(x[2], 1.0, 1e-12);
}

TEST(solve_linear, singular_and_misshapen_systems_throw_naming_the_caller) {
  try {
    (void)detail::solve_linear({1, 2, 2, 4}, {1, 2}, "my_fit");
    ADD_FAILURE() << "a singular system was solved";
  } catch (const specdec::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("my_fit"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("singular"), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)detail::solve_linear({1, 2, 3}, {1, 2}, "my_fit"), specdec::invalid_argument);
}

TEST(check_design, rejects_ragged_empty_and_non_finite_rows) {
  EXPECT_EQ(detail::check_design({{1, 2}, {3, 4}}, 2, "fit"), 2u);
  EXPECT_THROW((void)detail::check_design({}, 0, "fit"), specdec::invalid_argument);
  EXPECT_THROW((void)detail::check_design({{1, 2}, {3}}, 2, "fit"), specdec::invalid_argument);
  EXPECT_THROW((void)detail::check_design({{1, 2}}, 2, "fit"), specdec::invalid_argument);
  EXPECT_THROW((void)detail::check_design({{1, std::nan("")}}, 1, "fit"), specdec::invalid_argument);
}

TEST(logistic_regression, learns_a_linear_rule_and_recovers_weight_signs) {
  // y = 1 iff 2 x0 - 1.5 x1 + 0.5 + 0.3 N(0,1) > 0; x2 is irrelevant; x0 lives on a large
  // scale (like prompt_tokens) to exercise the standardisation.
  rng r(99);
  auto draw = [&](std::size_t n, std::vector<std::vector<double>>& x, std::vector<int>& y) {
    for (std::size_t i = 0; i < n; ++i) {
      const double a = r.n(), b = r.n(), c = r.n();
      x.push_back({100.0 * a + 300.0, b, c});
      y.push_back(2 * a - 1.5 * b + 0.5 + 0.3 * r.n() > 0 ? 1 : 0);
    }
  };
  std::vector<std::vector<double>> xtr, xte;
  std::vector<int> ytr, yte;
  draw(2000, xtr, ytr);
  draw(2000, xte, yte);
  logistic_regression a;
  a.train(xtr, ytr, 400, 1.0, 1e-4);
  a.validate();
  ASSERT_TRUE(a.trained());
  std::size_t correct = 0;
  for (std::size_t i = 0; i < xte.size(); ++i) correct += (a.probability(xte[i]) >= 0.5) == (yte[i] == 1);
  EXPECT_GT(double(correct) / double(xte.size()), 0.9);
  const auto w = a.raw_weights();
  EXPECT_GT(w[0], 0.0);
  EXPECT_LT(w[1], 0.0);
  EXPECT_LT(std::abs(a.weights[2]), 0.25 * std::abs(a.weights[1]));
  // On standardised features the weight ratio approximates the true 2 : -1.5 (x0 has sd 100).
  EXPECT_NEAR(a.weights[0] / -a.weights[1], 2.0 / 1.5, 0.35);
}

TEST(logistic_regression, bad_input_throws_naming_the_parameter) {
  const std::vector<std::vector<double>> x2{{1.0}, {2.0}};
  for (auto [call, word] : std::vector<std::pair<std::function<void()>, std::string>>{
           {[&] { logistic_regression{}.train(x2, {0, 2}); }, "label"},
           {[&] { logistic_regression{}.train(x2, {0, 1}, 10, 0.0); }, "learning_rate"},
           {[&] { logistic_regression{}.train(x2, {0, 1}, 0); }, "iterations"},
           {[&] { logistic_regression{}.train(x2, {0, 1}, 10, 0.5, -1.0); }, "l2"},
           {[&] { (void)logistic_regression{}.probability(std::vector<double>{1.0}); }, "not trained"},
           {[&] { logistic_regression{.mean = {0}, .scale = {0}, .weights = {1}}.validate(); }, "scale"}}) {
    try {
      call();
      ADD_FAILURE() << "expected invalid_argument naming " << word;
    } catch (const specdec::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
    }
  }
}
}  // namespace
