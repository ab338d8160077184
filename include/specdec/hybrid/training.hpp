#pragma once
/// \file training.hpp
/// The learners behind the hybrid predictors and arbiters, fitted in C++ from logged runs:
/// a dense linear solver for the least-squares normal equations (`detail::solve_linear`,
/// used by `linear_length_predictor`) and binary logistic regression on standardised
/// features (`logistic_regression`, the model of `logistic_arbiter`).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/hybrid/link.hpp"

namespace specdec::hybrid {

namespace detail {

/// Solves the square system `A x = b` (A row-major n x n) by Gaussian elimination with
/// partial pivoting. Throws `invalid_argument` naming `what` if A is singular.
[[nodiscard]] inline std::vector<double> solve_linear(std::vector<double> a, std::vector<double> b,
                                                      const char* what) {
  const std::size_t n = b.size();
  if (a.size() != n * n)
    throw invalid_argument(std::string(what) + ": matrix has " + std::to_string(a.size()) +
                           " entries, expected " + std::to_string(n * n));
  double scale = 0.0;
  for (double v : a) scale = std::max(scale, std::abs(v));
  for (std::size_t c = 0; c < n; ++c) {
    std::size_t piv = c;
    for (std::size_t r = c + 1; r < n; ++r)
      if (std::abs(a[r * n + c]) > std::abs(a[piv * n + c])) piv = r;
    if (!(std::abs(a[piv * n + c]) > 1e-13 * scale))
      throw invalid_argument(std::string(what) +
                             ": the normal equations are singular (collinear or constant features); "
                             "expected linearly independent features or a positive ridge");
    if (piv != c) {
      for (std::size_t k = 0; k < n; ++k) std::swap(a[c * n + k], a[piv * n + k]);
      std::swap(b[c], b[piv]);
    }
    for (std::size_t r = c + 1; r < n; ++r) {
      const double m = a[r * n + c] / a[c * n + c];
      if (m == 0.0) continue;
      for (std::size_t k = c; k < n; ++k) a[r * n + k] -= m * a[c * n + k];
      b[r] -= m * b[c];
    }
  }
  std::vector<double> x(n);
  for (std::size_t i = n; i-- > 0;) {
    double s = b[i];
    for (std::size_t k = i + 1; k < n; ++k) s -= a[i * n + k] * x[k];
    x[i] = s / a[i * n + i];
  }
  return x;
}

/// Throws unless X is a non-empty rectangular matrix of finite values whose row count
/// equals `n_targets`; returns the column count.
inline std::size_t check_design(const std::vector<std::vector<double>>& x, std::size_t n_targets,
                                const char* what) {
  if (x.empty())
    throw invalid_argument(std::string(what) + ": no training rows; expected at least one");
  if (x.size() != n_targets)
    throw invalid_argument(std::string(what) + ": " + std::to_string(x.size()) + " feature rows but " +
                           std::to_string(n_targets) + " targets; expected equal counts");
  const std::size_t d = x.front().size();
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (x[i].size() != d)
      throw invalid_argument(std::string(what) + ": row " + std::to_string(i) + " has " +
                             std::to_string(x[i].size()) + " features, expected " + std::to_string(d));
    for (double v : x[i])
      if (!std::isfinite(v))
        throw invalid_argument(std::string(what) + ": row " + std::to_string(i) +
                               " has a non-finite feature; expected finite values");
  }
  return d;
}

[[nodiscard]] inline double sigmoid(double z) noexcept {
  return z >= 0 ? 1.0 / (1.0 + std::exp(-z)) : std::exp(z) / (1.0 + std::exp(z));
}

}  // namespace detail

/// Binary logistic regression on standardised features: P(y = 1 | x) =
/// sigmoid(bias + sum_j weights[j] (x_j - mean[j]) / scale[j]), trained by full-batch
/// gradient descent.
///
/// ```cpp
/// specdec::hybrid::logistic_regression m;
/// m.train({{0.0}, {1.0}, {2.0}, {3.0}}, {0, 0, 1, 1});
/// double p = m.probability(std::vector<double>{2.5});  // > 0.5
/// ```
struct logistic_regression {
  std::vector<double> mean{};    ///< per-feature mean of the training data
  std::vector<double> scale{};   ///< per-feature standard deviation (1 for constant features)
  std::vector<double> weights{};  ///< on standardised features
  double bias = 0.0;

  [[nodiscard]] bool trained() const noexcept { return !weights.empty(); }

  /// P(y = 1) for a raw feature vector.
  [[nodiscard]] double probability(std::span<const double> x) const {
    if (!trained())
      throw invalid_argument("logistic_regression: not trained; expected train() or weights before use");
    if (x.size() != weights.size())
      throw invalid_argument("logistic_regression: " + std::to_string(x.size()) + " features, expected " +
                             std::to_string(weights.size()));
    double z = bias;
    for (std::size_t j = 0; j < x.size(); ++j) z += weights[j] * (x[j] - mean[j]) / scale[j];
    return detail::sigmoid(z);
  }
  /// Weights on the raw (unstandardised) features: weights[j] / scale[j].
  [[nodiscard]] std::vector<double> raw_weights() const {
    std::vector<double> w(weights.size());
    for (std::size_t j = 0; j < w.size(); ++j) w[j] = weights[j] / scale[j];
    return w;
  }

  /// Checks that mean, scale and weights agree in size and every scale is finite and > 0.
  void validate() const {
    if (mean.size() != weights.size() || scale.size() != weights.size())
      throw invalid_argument("logistic_regression: mean, scale and weights must have equal sizes, got " +
                             std::to_string(mean.size()) + ", " + std::to_string(scale.size()) + ", " +
                             std::to_string(weights.size()));
    for (std::size_t j = 0; j < scale.size(); ++j)
      if (!(scale[j] > 0.0) || !std::isfinite(scale[j]))
        throw invalid_argument("logistic_regression.scale[" + std::to_string(j) + "] must be finite and > 0, got " +
                               std::to_string(scale[j]));
  }

  /// Full-batch gradient descent on the mean log-loss plus `l2 / 2 * |w|^2` (the bias is
  /// not penalised), over features standardised with the training data's mean and
  /// standard deviation. Deterministic. Labels must be 0 or 1.
  void train(const std::vector<std::vector<double>>& x, const std::vector<int>& y, int iterations = 500,
             double learning_rate = 0.5, double l2 = 1e-3) {
    const std::size_t d = detail::check_design(x, y.size(), "logistic_regression::train");
    if (iterations < 1)
      throw invalid_argument("logistic_regression::train iterations must be >= 1, got " + std::to_string(iterations));
    if (!(learning_rate > 0.0) || !std::isfinite(learning_rate))
      throw invalid_argument("logistic_regression::train learning_rate must be finite and > 0, got " +
                             std::to_string(learning_rate));
    detail::check_non_negative("logistic_regression::train l2", l2);
    for (std::size_t i = 0; i < y.size(); ++i)
      if (y[i] != 0 && y[i] != 1)
        throw invalid_argument("logistic_regression::train: label " + std::to_string(i) + " is " +
                               std::to_string(y[i]) + "; expected 0 or 1");
    const std::size_t n = x.size();
    const double nd = static_cast<double>(n);
    mean.assign(d, 0.0);
    scale.assign(d, 0.0);
    for (const auto& row : x)
      for (std::size_t j = 0; j < d; ++j) mean[j] += row[j];
    for (double& m : mean) m /= nd;
    for (const auto& row : x)
      for (std::size_t j = 0; j < d; ++j) scale[j] += (row[j] - mean[j]) * (row[j] - mean[j]);
    for (double& s : scale) {
      s = std::sqrt(s / nd);
      if (!(s > 1e-12)) s = 1.0;
    }
    std::vector<double> z(n * d);
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < d; ++j) z[i * d + j] = (x[i][j] - mean[j]) / scale[j];
    weights.assign(d, 0.0);
    bias = 0.0;
    std::vector<double> grad(d);
    for (int it = 0; it < iterations; ++it) {
      std::fill(grad.begin(), grad.end(), 0.0);
      double gb = 0.0;
      for (std::size_t i = 0; i < n; ++i) {
        double s = bias;
        for (std::size_t j = 0; j < d; ++j) s += weights[j] * z[i * d + j];
        const double r = detail::sigmoid(s) - static_cast<double>(y[i]);
        gb += r;
        for (std::size_t j = 0; j < d; ++j) grad[j] += r * z[i * d + j];
      }
      bias -= learning_rate * gb / nd;
      for (std::size_t j = 0; j < d; ++j) weights[j] -= learning_rate * (grad[j] / nd + l2 * weights[j]);
    }
  }
};

}  // namespace specdec::hybrid
