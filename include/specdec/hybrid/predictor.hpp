#pragma once
/// \file predictor.hpp
/// What a hybrid arbiter knows about a request before it routes it (`request_features`),
/// and predictors of the response length and of its difficulty for the device model,
/// fitted in C++ from logged runs.
#include <algorithm>
#include <array>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/hybrid/training.hpp"
#include "specdec/validation.hpp"

namespace specdec::hybrid {

/// What is known about a request when it is routed: the prompt length, summaries of the
/// small (draft / device) model's confidence over a short probe, and predictions of the
/// response length and of how hard the request is for the device model.
///
/// ```cpp
/// specdec::hybrid::request_features f{.prompt_tokens = 120, .draft_mean_entropy = 1.3f,
///                                     .draft_max_prob_mean = 0.55f, .draft_first_token_entropy = 2.0f,
///                                     .predicted_length = 64, .predicted_difficulty = 0.4};
/// ```
struct request_features {
  std::size_t prompt_tokens = 0;
  float draft_mean_entropy = 0.0f;         ///< nats, mean over the probe positions
  float draft_max_prob_mean = 1.0f;        ///< mean of the draft's max probability over the probe
  float draft_first_token_entropy = 0.0f;  ///< nats, the first generated position
  double predicted_length = 0.0;           ///< tokens
  double predicted_difficulty = 0.0;       ///< in [0, 1]: P(device output is not good enough)
  std::vector<float> extra{};              ///< application-specific features
  std::uint64_t request_id = 0;            ///< identifies the request (oracle labels, seeded routing)
};

/// Indices of the trajectory summaries in `request_features::extra` (filled by
/// `probe_trajectory`, probe.hpp). The look-ahead rows are the device's distributions for its first
/// `lookahead_tokens` generated positions (row 0 = the prompt's last row).
///
/// ```cpp
/// float slope = f.extra[specdec::hybrid::trajectory_feature::entropy_slope];
/// ```
namespace trajectory_feature {
inline constexpr std::size_t mean_entropy = 0;      ///< nats, mean over the look-ahead rows
inline constexpr std::size_t entropy_slope = 1;     ///< nats per token, least-squares slope over those rows
inline constexpr std::size_t mean_margin = 2;       ///< mean top-1 minus top-2 probability
inline constexpr std::size_t min_max_prob = 3;      ///< the least confident look-ahead row
inline constexpr std::size_t confidence_decay = 4;  ///< mean max-prob, first half minus second half
inline constexpr std::size_t prompt_nll = 5;        ///< nats per token the device assigns the prompt
inline constexpr std::size_t stop_hazard = 6;       ///< mean probability of a stop token per row
inline constexpr std::size_t stopped_at = 7;        ///< 1-based position of a greedy stop token; 0 = none
inline constexpr std::size_t count = 8;
}  // namespace trajectory_feature

/// Column names of the trajectory summaries, in `extra` order.
///
/// ```cpp
/// for (auto n : specdec::hybrid::trajectory_feature_names) std::cout << n << ',';
/// ```
inline constexpr std::array<std::string_view, trajectory_feature::count> trajectory_feature_names{
    "traj_mean_entropy", "traj_entropy_slope",  "traj_mean_margin", "traj_min_max_prob",
    "traj_confidence_decay", "traj_prompt_nll", "traj_stop_hazard", "traj_stopped_at"};

/// The feature vector the learned predictors regress on: prompt_tokens,
/// draft_mean_entropy, draft_max_prob_mean, draft_first_token_entropy, then `extra`.
/// (The predictions `predicted_length` / `predicted_difficulty` are outputs, not inputs.)
///
/// ```cpp
/// std::vector<double> x = specdec::hybrid::probe_features(f);  // x.size() == 4 + f.extra.size()
/// ```
[[nodiscard]] inline std::vector<double> probe_features(const request_features& f) {
  std::vector<double> x{static_cast<double>(f.prompt_tokens), f.draft_mean_entropy, f.draft_max_prob_mean,
                        f.draft_first_token_entropy};
  for (float e : f.extra) x.push_back(e);
  return x;
}

/// `p.predict(features)` returns a number.
///
/// ```cpp
/// struct fixed { double predict(const specdec::hybrid::request_features&) const { return 8; } };
/// static_assert(specdec::hybrid::has_predict<fixed>);
/// ```
template <class P>
concept has_predict = requires(const P& p, const request_features& f) {
  { p.predict(f) } -> std::convertible_to<double>;
};

/// The library-wide `specdec::validatable` (validation.hpp).
using specdec::validatable;

/// Predicts a response length in tokens from request features.
///
/// ```cpp
/// template <specdec::hybrid::length_predictor P>
/// double expected_tokens(const P& p, const specdec::hybrid::request_features& f) { return p.predict(f); }
/// ```
template <class P>
concept length_predictor = has_predict<P> && validatable<P>;

/// `P::unit_interval` is a constant `true`: the predictor's output is a probability.
///
/// ```cpp
/// struct d { static constexpr bool unit_interval = true; };
/// static_assert(specdec::hybrid::predicts_unit_interval<d>);
/// ```
template <class P>
concept predicts_unit_interval = requires {
  { P::unit_interval } -> std::convertible_to<bool>;
} && P::unit_interval;

/// Predicts the difficulty of a request for the device model, in [0, 1].
///
/// ```cpp
/// template <specdec::hybrid::difficulty_predictor D>
/// bool hard(const D& d, const specdec::hybrid::request_features& f) { return d.predict(f) > 0.5; }
/// ```
template <class P>
concept difficulty_predictor = has_predict<P> && validatable<P> && predicts_unit_interval<P>;

/// Always the same length.
///
/// ```cpp
/// specdec::hybrid::constant_length_predictor p{.length = 128};
/// double l = p.predict(features);  // 128
/// ```
struct constant_length_predictor {
  double length = 64.0;

  [[nodiscard]] double predict(const request_features&) const noexcept { return length; }
  void validate() const {
    if (!(length >= 0.0) || !std::isfinite(length))
      throw invalid_argument("constant_length_predictor.length must be finite and >= 0, got " +
                             std::to_string(length));
  }
  /// The mean of logged lengths.
  [[nodiscard]] static constant_length_predictor fit(const std::vector<double>& lengths) {
    if (lengths.empty())
      throw invalid_argument("constant_length_predictor::fit: no lengths; expected at least one");
    double s = 0.0;
    for (double l : lengths) s += l;
    constant_length_predictor p{.length = s / static_cast<double>(lengths.size())};
    p.validate();
    return p;
  }
};

/// Least-squares length model `length = intercept + sum_j coefficients[j] * x_j` over
/// `probe_features`, fitted from logged (features, actual length) runs by solving the
/// ridge normal equations `(Z'Z + ridge I) g = Z'y` on standardised features Z (the
/// intercept is not penalised; the default ridge is negligible next to Z'Z's diagonal n
/// and only resolves constant or collinear features).
/// Predictions are clamped at 0.
///
/// ```cpp
/// auto p = specdec::hybrid::linear_length_predictor::fit(logged_features, logged_lengths);
/// double l = p.predict(new_request);
/// ```
struct linear_length_predictor {
  double intercept = 0.0;
  std::vector<double> coefficients{};  ///< one per `probe_features` entry

  [[nodiscard]] double predict_raw(std::span<const double> x) const {
    if (x.size() != coefficients.size())
      throw invalid_argument("linear_length_predictor::predict: " + std::to_string(x.size()) +
                             " features, expected " + std::to_string(coefficients.size()));
    double y = intercept;
    for (std::size_t j = 0; j < x.size(); ++j) y += coefficients[j] * x[j];
    return std::max(0.0, y);
  }
  [[nodiscard]] double predict(const request_features& f) const {
    const auto x = probe_features(f);
    return predict_raw(x);
  }
  void validate() const {
    if (!std::isfinite(intercept))
      throw invalid_argument("linear_length_predictor.intercept must be finite, got " + std::to_string(intercept));
    for (std::size_t j = 0; j < coefficients.size(); ++j)
      if (!std::isfinite(coefficients[j]))
        throw invalid_argument("linear_length_predictor.coefficients[" + std::to_string(j) +
                               "] must be finite, got " + std::to_string(coefficients[j]));
  }

  /// Fits on a raw design matrix (rows of equal length) and targets.
  [[nodiscard]] static linear_length_predictor fit(const std::vector<std::vector<double>>& x,
                                                   const std::vector<double>& y, double ridge = 1e-8) {
    const std::size_t d = detail::check_design(x, y.size(), "linear_length_predictor::fit");
    if (!(ridge >= 0.0) || !std::isfinite(ridge))
      throw invalid_argument("linear_length_predictor::fit ridge must be finite and >= 0, got " +
                             std::to_string(ridge));
    for (std::size_t i = 0; i < y.size(); ++i)
      if (!std::isfinite(y[i]))
        throw invalid_argument("linear_length_predictor::fit: target " + std::to_string(i) +
                               " is not finite; expected finite lengths");
    // Standardise the features (centre, divide by the standard deviation) and centre the
    // target: the intercept drops out of the penalised system, the ridge acts on
    // comparable scales, and the normal equations stay well conditioned. A constant
    // feature standardises to 0; with a positive ridge its coefficient is then 0.
    const std::size_t n = x.size();
    const double nd = static_cast<double>(n);
    std::vector<double> mean(d, 0.0), sd(d, 0.0);
    double ymean = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      for (std::size_t j = 0; j < d; ++j) mean[j] += x[i][j];
      ymean += y[i];
    }
    for (double& m : mean) m /= nd;
    ymean /= nd;
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < d; ++j) sd[j] += (x[i][j] - mean[j]) * (x[i][j] - mean[j]);
    for (double& s : sd) {
      s = std::sqrt(s / nd);
      if (!(s > 0.0)) s = 1.0;
    }
    std::vector<double> a(d * d, 0.0), b(d, 0.0), z(d);
    for (std::size_t i = 0; i < n; ++i) {
      for (std::size_t j = 0; j < d; ++j) z[j] = (x[i][j] - mean[j]) / sd[j];
      for (std::size_t j = 0; j < d; ++j) {
        b[j] += z[j] * (y[i] - ymean);
        for (std::size_t k = 0; k < d; ++k) a[j * d + k] += z[j] * z[k];
      }
    }
    for (std::size_t j = 0; j < d; ++j) a[j * d + j] += ridge;
    linear_length_predictor p;
    if (d > 0) p.coefficients = detail::solve_linear(a, b, "linear_length_predictor::fit");
    p.intercept = ymean;
    for (std::size_t j = 0; j < d; ++j) {
      p.coefficients[j] /= sd[j];
      p.intercept -= p.coefficients[j] * mean[j];
    }
    return p;
  }
  /// Fits on logged requests' `probe_features` and their actual lengths.
  [[nodiscard]] static linear_length_predictor fit(const std::vector<request_features>& features,
                                                   const std::vector<double>& lengths, double ridge = 1e-8) {
    std::vector<std::vector<double>> x;
    x.reserve(features.size());
    for (const auto& f : features) x.push_back(probe_features(f));
    return fit(x, lengths, ridge);
  }
};

/// Difficulty as a logistic map of the draft's mean entropy:
/// `sigmoid(scale * (draft_mean_entropy - midpoint))`. `fit` learns scale and midpoint
/// from logged (entropy, hard?) pairs by Newton's method on the logistic log-likelihood.
///
/// ```cpp
/// auto d = specdec::hybrid::entropy_difficulty_predictor::fit(entropies, hard_labels);
/// f.predicted_difficulty = d.predict(f);
/// ```
struct entropy_difficulty_predictor {
  static constexpr bool unit_interval = true;
  double scale = 2.0;     ///< > 0: more entropy, more difficult
  double midpoint = 1.5;  ///< entropy (nats) of difficulty 0.5

  [[nodiscard]] double predict_entropy(double entropy) const noexcept {
    return detail::sigmoid(scale * (entropy - midpoint));
  }
  [[nodiscard]] double predict(const request_features& f) const noexcept {
    return predict_entropy(f.draft_mean_entropy);
  }
  void validate() const {
    if (!(scale > 0.0) || !std::isfinite(scale))
      throw invalid_argument("entropy_difficulty_predictor.scale must be finite and > 0, got " +
                             std::to_string(scale));
    if (!std::isfinite(midpoint))
      throw invalid_argument("entropy_difficulty_predictor.midpoint must be finite, got " +
                             std::to_string(midpoint));
  }

  /// Fits scale and midpoint from entropies and labels (1 = hard for the device, 0 =
  /// fine). `l2` is a small penalty on the slope that keeps separable data finite.
  [[nodiscard]] static entropy_difficulty_predictor fit(const std::vector<double>& entropies,
                                                        const std::vector<int>& hard, double l2 = 1e-3,
                                                        int iterations = 50) {
    if (entropies.empty() || entropies.size() != hard.size())
      throw invalid_argument("entropy_difficulty_predictor::fit: " + std::to_string(entropies.size()) +
                             " entropies and " + std::to_string(hard.size()) +
                             " labels; expected equal, non-zero counts");
    if (!(l2 > 0.0) || !std::isfinite(l2))
      throw invalid_argument("entropy_difficulty_predictor::fit l2 must be finite and > 0, got " +
                             std::to_string(l2));
    if (iterations < 1)
      throw invalid_argument("entropy_difficulty_predictor::fit iterations must be >= 1, got " +
                             std::to_string(iterations));
    for (std::size_t i = 0; i < entropies.size(); ++i)
      if (!std::isfinite(entropies[i]))
        throw invalid_argument("entropy_difficulty_predictor::fit: entropy " + std::to_string(i) +
                               " is not finite; expected finite entropies");
    const double n = static_cast<double>(entropies.size());
    // Newton on the model sigmoid(a + w * e) with e centred.
    double em = 0.0;
    for (double e : entropies) em += e;
    em /= n;
    auto objective = [&](double a0, double w0) {
      double loss = 0.5 * l2 * n * w0 * w0;
      for (std::size_t i = 0; i < entropies.size(); ++i) {
        const double s = a0 + w0 * (entropies[i] - em);
        // -log sigmoid(s) for hard, -log(1 - sigmoid(s)) otherwise, computed stably.
        const double m = hard[i] != 0 ? -s : s;
        loss += m > 0 ? m + std::log1p(std::exp(-m)) : std::log1p(std::exp(m));
      }
      return loss;
    };
    double a = 0.0, w = 0.0;
    for (int it = 0; it < iterations; ++it) {
      double ga = 0, gw = 0, haa = 0, haw = 0, hww = 0;
      for (std::size_t i = 0; i < entropies.size(); ++i) {
        const double e = entropies[i] - em;
        const double p = detail::sigmoid(a + w * e);
        const double r = p - (hard[i] != 0 ? 1.0 : 0.0);
        const double v = p * (1 - p);
        ga += r;
        gw += r * e;
        haa += v;
        haw += v * e;
        hww += v * e * e;
      }
      gw += l2 * n * w;
      hww += l2 * n;
      haa += 1e-12 * n;
      const double det = haa * hww - haw * haw;
      double da = (hww * ga - haw * gw) / det;
      double dw = (haa * gw - haw * ga) / det;
      // Backtrack until the penalised log-loss does not increase (Newton may overshoot).
      const double before = objective(a, w);
      double step = 1.0;
      while (step > 1e-8 && !(objective(a - step * da, w - step * dw) <= before)) step *= 0.5;
      a -= step * da;
      w -= step * dw;
      if (step * (std::abs(da) + std::abs(dw)) < 1e-12) break;
    }
    if (!std::isfinite(a) || !std::isfinite(w))
      throw invalid_argument("entropy_difficulty_predictor::fit: the fit diverged; expected finite data");
    if (!(w > 0.0))
      throw invalid_argument(
          "entropy_difficulty_predictor::fit: fitted slope " + std::to_string(w) +
          " is not positive; expected hard requests to have higher draft entropy");
    entropy_difficulty_predictor d{.scale = w, .midpoint = em - a / w};
    d.validate();
    return d;
  }
};

/// Difficulty from the small model's own distribution: logistic regression
/// (`logistic_regression`) on all `probe_features`, which with `probe_trajectory` include
/// the entropy trajectory, top-2 margin, confidence decay and prompt surprise, predicting
/// P(the device's answer is not good enough). Fit it on logged requests' labels.
///
/// ```cpp
/// auto d = specdec::hybrid::logistic_difficulty_predictor::fit(logged_features, hard_labels);
/// f.predicted_difficulty = d.predict(f);  // f from probe_trajectory, like the logged ones
/// ```
struct logistic_difficulty_predictor {
  static constexpr bool unit_interval = true;
  logistic_regression model{};  ///< P(hard) from `probe_features`

  [[nodiscard]] double predict(const request_features& f) const {
    const auto x = probe_features(f);
    return model.probability(x);
  }
  void validate() const { model.validate(); }

  /// Fits on logged requests' features and labels (1 = hard for the device).
  [[nodiscard]] static logistic_difficulty_predictor fit(const std::vector<request_features>& features,
                                                         const std::vector<int>& hard, int iterations = 2000,
                                                         double learning_rate = 0.5, double l2 = 1e-2) {
    std::vector<std::vector<double>> x;
    x.reserve(features.size());
    for (const auto& f : features) x.push_back(probe_features(f));
    logistic_difficulty_predictor d;
    d.model.train(x, hard, iterations, learning_rate, l2);
    return d;
  }
};

/// How well predictions match the truth.
///
/// ```cpp
/// auto err = specdec::hybrid::prediction_error::of({10, 20}, {12, 30});
/// // err.mean_absolute_error == 6, err.within_20_percent == 0.5
/// ```
struct prediction_error {
  double mean_absolute_error = 0.0;
  double within_20_percent = 0.0;  ///< fraction with |predicted - actual| <= 0.2 * |actual|
  std::size_t count = 0;

  [[nodiscard]] static prediction_error of(const std::vector<double>& predicted, const std::vector<double>& actual) {
    if (predicted.empty() || predicted.size() != actual.size())
      throw invalid_argument("prediction_error::of: " + std::to_string(predicted.size()) + " predictions and " +
                             std::to_string(actual.size()) + " actual values; expected equal, non-zero counts");
    prediction_error e;
    e.count = predicted.size();
    std::size_t within = 0;
    for (std::size_t i = 0; i < predicted.size(); ++i) {
      const double d = std::abs(predicted[i] - actual[i]);
      e.mean_absolute_error += d;
      if (d <= 0.2 * std::abs(actual[i])) ++within;
    }
    e.mean_absolute_error /= static_cast<double>(e.count);
    e.within_20_percent = static_cast<double>(within) / static_cast<double>(e.count);
    return e;
  }

  /// Errors of predictor `p` on logged requests and their actual values.
  template <has_predict P>
  [[nodiscard]] static prediction_error of(const P& p, const std::vector<request_features>& features,
                                           const std::vector<double>& actual) {
    std::vector<double> pred;
    pred.reserve(features.size());
    for (const auto& f : features) pred.push_back(static_cast<double>(p.predict(f)));
    return of(pred, actual);
  }
};

}  // namespace specdec::hybrid
