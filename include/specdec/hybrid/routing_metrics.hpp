#pragma once
/// \file routing_metrics.hpp
/// How well an arbiter routes, measured the way router papers report it (RouteLLM, Ong et
/// al. 2024): every arbiter is calibrated on a calibration fold to the same cloud budgets
/// and evaluated on a test fold, giving a quality-versus-cloud-fraction curve; the
/// performance gap recovered PGR = (Q - Q_device) / (Q_cloud - Q_device) at each point;
/// APGR, the area under PGR over the cloud fraction in [0, 1] (a random router's expected
/// APGR is 0.5); CPT(x), the cloud fraction needed to recover a share x of the gap; and
/// the ROC AUC of a score against the "device is good enough" label. `bootstrap` gives
/// percentile intervals over resampled test requests.
///
/// ```cpp
/// std::vector<double> budgets{0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0};
/// auto curve = specdec::hybrid::routing_curve(arb, calibration, test, outcomes, link, budgets);
/// double apgr = specdec::hybrid::average_pgr(curve);
/// double cpt50 = specdec::hybrid::cost_to_reach(curve, 0.5);
/// ```
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/hybrid/arbiter.hpp"

namespace specdec::hybrid {

/// The measured quality of each route's answer to one request (higher is better, e.g. the
/// cloud model's mean log-likelihood per token of the answer) and whether the device's
/// answer is good enough. Greedy speculative decoding reproduces the cloud's answer, so
/// `speculative` routes score `cloud_quality`; `cloud_prefix` routes score
/// `prefix_quality` (NaN = not measured).
///
/// ```cpp
/// specdec::hybrid::routing_outcome o{.device_quality = -2.1, .cloud_quality = -0.6, .device_ok = false};
/// ```
struct routing_outcome {
  double device_quality = 0.0;
  double cloud_quality = 0.0;
  double prefix_quality = std::numeric_limits<double>::quiet_NaN();
  bool device_ok = false;

  /// The quality of the answer `r` produces.
  [[nodiscard]] double quality_of(const route& r) const {
    switch (r.kind) {
      case route_kind::device: return device_quality;
      case route_kind::cloud:
      case route_kind::speculative: return cloud_quality;
      case route_kind::cloud_prefix:
        if (std::isnan(prefix_quality))
          throw invalid_argument("routing_outcome: a cloud_prefix route was chosen but prefix_quality is NaN; "
                                 "expected the measured quality of the prefix route");
        return prefix_quality;
    }
    return device_quality;
  }
};

/// One point of a routing curve: the budget the arbiter was calibrated to, the share of
/// test requests it actually sent to the cloud, their mean quality and its PGR.
///
/// ```cpp
/// for (const auto& p : curve) std::printf("%.2f %.3f\n", p.cloud_fraction, p.pgr);
/// ```
struct routing_point {
  double budget = 0.0;
  double cloud_fraction = 0.0;
  double quality = 0.0;
  double pgr = 0.0;
};

/// Mean quality of all-device and all-cloud answers over a set of requests.
///
/// ```cpp
/// auto r = specdec::hybrid::quality_range::of(outcomes);
/// double pgr = r.pgr(0.8 * r.cloud_only + 0.2 * r.device_only);  // 0.8
/// ```
struct quality_range {
  double device_only = 0.0;
  double cloud_only = 0.0;

  [[nodiscard]] static quality_range of(std::span<const routing_outcome> outcomes) {
    if (outcomes.empty()) throw invalid_argument("quality_range::of: no outcomes; expected at least one request");
    quality_range r;
    for (const auto& o : outcomes) {
      r.device_only += o.device_quality;
      r.cloud_only += o.cloud_quality;
    }
    r.device_only /= static_cast<double>(outcomes.size());
    r.cloud_only /= static_cast<double>(outcomes.size());
    return r;
  }
  /// The performance gap recovered by quality `q`; throws when the gap is 0.
  [[nodiscard]] double pgr(double q) const {
    const double gap = cloud_only - device_only;
    if (!(std::abs(gap) > 0.0))
      throw invalid_argument("quality_range::pgr: cloud and device quality are equal (" + std::to_string(cloud_only) +
                             "); expected a gap to recover");
    return (q - device_only) / gap;
  }
};

namespace detail {
inline void check_routing_sizes(std::size_t features, std::size_t outcomes, const char* what) {
  if (features == 0 || features != outcomes)
    throw invalid_argument(std::string(what) + ": " + std::to_string(features) + " test requests and " +
                           std::to_string(outcomes) + " outcomes; expected equal, non-zero counts");
}
}  // namespace detail

/// The routes `a` gives each request, as one point of a curve (budget field = `budget`).
///
/// ```cpp
/// auto p = specdec::hybrid::evaluate_routes(arb, test, outcomes, link, {.max_cloud_fraction = 0.3});
/// ```
template <arbiter A>
[[nodiscard]] routing_point evaluate_routes(const A& a, std::span<const request_features> test,
                                            std::span<const routing_outcome> outcomes, const link_estimate& link,
                                            const budget& b) {
  detail::check_routing_sizes(test.size(), outcomes.size(), "evaluate_routes");
  routing_point p{.budget = b.max_cloud_fraction};
  std::size_t cloud = 0;
  for (std::size_t i = 0; i < test.size(); ++i) {
    const route r = a.decide(test[i], link, b);
    cloud += r.uses_cloud() ? 1 : 0;
    p.quality += outcomes[i].quality_of(r);
  }
  const double n = static_cast<double>(test.size());
  p.cloud_fraction = static_cast<double>(cloud) / n;
  p.quality /= n;
  p.pgr = quality_range::of(outcomes).pgr(p.quality);
  return p;
}

/// The quality-versus-cloud-fraction curve of `a`: for each budget, `a.calibrated` on the
/// calibration requests, then routed on the test requests. Decisions see an open budget
/// (the calibrated threshold is what enforces it).
///
/// ```cpp
/// auto curve = specdec::hybrid::routing_curve(specdec::hybrid::confidence_arbiter{}, cal, test, outcomes,
///                                             link, budgets);
/// ```
template <calibratable_arbiter A>
[[nodiscard]] std::vector<routing_point> routing_curve(const A& a, std::span<const request_features> calibration,
                                                       std::span<const request_features> test,
                                                       std::span<const routing_outcome> outcomes,
                                                       const link_estimate& link, std::span<const double> budgets) {
  std::vector<routing_point> curve;
  for (double b : budgets) {
    const budget bud{.max_cloud_fraction = b};
    bud.validate();
    routing_point p = evaluate_routes(a.calibrated(calibration, link, bud), test, outcomes, link, budget{});
    p.budget = b;
    curve.push_back(p);
  }
  return curve;
}

/// The best achievable curve: at each budget b, of the floor(b n) test requests whose
/// cloud answer gains most over the device's, those that gain at all go to the cloud (an
/// upper bound for any router).
///
/// ```cpp
/// auto best = specdec::hybrid::oracle_curve(outcomes, budgets);
/// ```
[[nodiscard]] inline std::vector<routing_point> oracle_curve(std::span<const routing_outcome> outcomes,
                                                             std::span<const double> budgets) {
  detail::check_routing_sizes(outcomes.size(), outcomes.size(), "oracle_curve");
  std::vector<double> gain(outcomes.size());
  for (std::size_t i = 0; i < outcomes.size(); ++i) gain[i] = outcomes[i].cloud_quality - outcomes[i].device_quality;
  std::sort(gain.begin(), gain.end(), std::greater<>());
  const auto range = quality_range::of(outcomes);
  const double n = static_cast<double>(outcomes.size());
  std::vector<routing_point> curve;
  for (double b : budgets) {
    specdec::detail::check_range("oracle_curve budget", b, 0.0, 1.0, "in [0, 1]");
    const auto k = static_cast<std::size_t>(std::floor(b * n + 1e-9));
    double q = range.device_only;
    std::size_t sent = 0;
    for (; sent < k && gain[sent] > 0.0; ++sent) q += gain[sent] / n;
    curve.push_back({.budget = b, .cloud_fraction = static_cast<double>(sent) / n, .quality = q, .pgr = range.pgr(q)});
  }
  return curve;
}

/// APGR: the area under PGR over the cloud fraction, by the trapezoid rule over the
/// curve's points sorted by cloud fraction, with all-device (0, 0) and all-cloud (1, 1)
/// as the ends. A random router's expected APGR is 0.5; the oracle's is at most
/// 1 - (share of requests the cloud does not improve) / 2.
///
/// ```cpp
/// double apgr = specdec::hybrid::average_pgr(curve);
/// ```
[[nodiscard]] inline double average_pgr(std::span<const routing_point> curve) {
  std::vector<std::pair<double, double>> pts{{0.0, 0.0}, {1.0, 1.0}};
  for (const auto& p : curve) pts.emplace_back(p.cloud_fraction, p.pgr);
  std::stable_sort(pts.begin(), pts.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  double area = 0.0;
  for (std::size_t i = 1; i < pts.size(); ++i)
    area += (pts[i].first - pts[i - 1].first) * (pts[i].second + pts[i - 1].second) / 2.0;
  return area;
}

/// CPT(x): the smallest cloud fraction at which the curve recovers a share `x` of the
/// gap, interpolating linearly between points (and from (0, 0)); 1 if it never does.
///
/// ```cpp
/// double cpt80 = specdec::hybrid::cost_to_reach(curve, 0.8);
/// ```
[[nodiscard]] inline double cost_to_reach(std::span<const routing_point> curve, double x) {
  std::vector<std::pair<double, double>> pts{{0.0, 0.0}};
  for (const auto& p : curve) pts.emplace_back(p.cloud_fraction, p.pgr);
  std::stable_sort(pts.begin(), pts.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (std::size_t i = 0; i < pts.size(); ++i) {
    if (pts[i].second < x) continue;
    if (i == 0) return pts[0].first;
    const auto& [f0, g0] = pts[i - 1];
    const auto& [f1, g1] = pts[i];
    return g1 > g0 ? f0 + (f1 - f0) * (x - g0) / (g1 - g0) : f1;
  }
  return 1.0;
}

/// ROC AUC of `scores` for the requests with `positive` set: the probability that a
/// random positive scores higher than a random negative, ties counting one half
/// (Mann-Whitney). 0.5 for a constant score.
///
/// ```cpp
/// std::vector<double> cloud_score = ...;   // higher = more likely to need the cloud
/// std::vector<bool> hard = ...;            // !device_ok
/// double auc = specdec::hybrid::roc_auc(cloud_score, hard);
/// ```
[[nodiscard]] inline double roc_auc(std::span<const double> scores, const std::vector<bool>& positive) {
  if (scores.size() != positive.size() || scores.empty())
    throw invalid_argument("roc_auc: " + std::to_string(scores.size()) + " scores and " +
                           std::to_string(positive.size()) + " labels; expected equal, non-zero counts");
  std::vector<std::size_t> idx(scores.size());
  std::iota(idx.begin(), idx.end(), std::size_t{0});
  std::sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return scores[a] < scores[b]; });
  double rank_sum = 0.0;  // sum of the positives' mid-ranks (1-based)
  std::size_t pos = 0;
  for (std::size_t i = 0; i < idx.size();) {
    std::size_t j = i;
    while (j < idx.size() && scores[idx[j]] == scores[idx[i]]) ++j;
    const double mid = (static_cast<double>(i + 1) + static_cast<double>(j)) / 2.0;
    for (std::size_t k = i; k < j; ++k)
      if (positive[idx[k]]) rank_sum += mid, ++pos;
    i = j;
  }
  const std::size_t neg = scores.size() - pos;
  if (pos == 0 || neg == 0)
    throw invalid_argument("roc_auc: only one class among " + std::to_string(scores.size()) +
                           " labels; expected positives and negatives");
  const double p = static_cast<double>(pos), q = static_cast<double>(neg);
  return (rank_sum - p * (p + 1.0) / 2.0) / (p * q);
}

/// A statistic with a bootstrap percentile interval.
///
/// ```cpp
/// specdec::hybrid::interval ci = specdec::hybrid::bootstrap(n, stat, 2000, 0.90, 7);
/// bool beats = ci.lower > 0.0;
/// ```
struct interval {
  double estimate = 0.0;  ///< the statistic on the full sample
  double lower = 0.0;     ///< lower percentile bound
  double upper = 0.0;     ///< upper percentile bound
};

/// Percentile bootstrap: `statistic(indices)` on the full sample (0..n-1) and on
/// `resamples` samples of n indices drawn with replacement (std::mt19937_64 seeded with
/// `seed`); returns the central `level` interval of the resampled values.
///
/// ```cpp
/// auto ci = specdec::hybrid::bootstrap(test.size(), [&](std::span<const std::size_t> ix) { return mean_of(ix); },
///                                      2000, 0.90, 1);
/// ```
template <class F>
[[nodiscard]] interval bootstrap(std::size_t n, F&& statistic, std::size_t resamples, double level,
                                 std::uint64_t seed) {
  if (n == 0) throw invalid_argument("bootstrap: empty sample; expected n >= 1");
  if (resamples < 2) throw invalid_argument("bootstrap: resamples must be >= 2, got " + std::to_string(resamples));
  specdec::detail::check_range("bootstrap level", level, 0.0, 1.0, "in (0, 1)");
  std::vector<std::size_t> ix(n);
  std::iota(ix.begin(), ix.end(), std::size_t{0});
  interval out{.estimate = static_cast<double>(statistic(std::span<const std::size_t>(ix)))};
  std::mt19937_64 rng(seed);
  std::vector<double> values;
  values.reserve(resamples);
  for (std::size_t r = 0; r < resamples; ++r) {
    for (auto& i : ix) i = static_cast<std::size_t>(rng() % n);
    values.push_back(static_cast<double>(statistic(std::span<const std::size_t>(ix))));
  }
  std::sort(values.begin(), values.end());
  const double tail = (1.0 - level) / 2.0;
  auto at = [&](double q) {
    const auto k = static_cast<std::size_t>(std::floor(q * static_cast<double>(resamples - 1) + 0.5));
    return values[std::min(k, resamples - 1)];
  };
  out.lower = at(tail);
  out.upper = at(1.0 - tail);
  return out;
}

/// APGR minus a random router's expected 0.5, with a bootstrap interval over the test
/// requests: `a` is calibrated once per budget on `calibration`, each test request's route
/// and quality are computed once per budget, and every resample recomputes the curve
/// (its PGR normalised by the resample's own device-only and cloud-only means). A lower
/// bound above 0 says the data supports "beats random at equal cloud fraction".
///
/// ```cpp
/// auto gain = specdec::hybrid::apgr_gain_over_random(arb, cal, test, outcomes, link, budgets, 2000, 0.90, 1);
/// bool beats_random = gain.lower > 0.0;  // one-sided 95%
/// ```
template <calibratable_arbiter A>
[[nodiscard]] interval apgr_gain_over_random(const A& a, std::span<const request_features> calibration,
                                             std::span<const request_features> test,
                                             std::span<const routing_outcome> outcomes, const link_estimate& link,
                                             std::span<const double> budgets, std::size_t resamples, double level,
                                             std::uint64_t seed) {
  detail::check_routing_sizes(test.size(), outcomes.size(), "apgr_gain_over_random");
  const std::size_t n = test.size(), nb = budgets.size();
  std::vector<double> quality(nb * n);
  std::vector<char> cloud(nb * n);
  for (std::size_t k = 0; k < nb; ++k) {
    const A c = a.calibrated(calibration, link, {.max_cloud_fraction = budgets[k]});
    for (std::size_t i = 0; i < n; ++i) {
      const route r = c.decide(test[i], link, budget{});
      quality[k * n + i] = outcomes[i].quality_of(r);
      cloud[k * n + i] = r.uses_cloud() ? 1 : 0;
    }
  }
  std::vector<routing_point> curve(nb);
  auto statistic = [&](std::span<const std::size_t> ix) {
    double dev = 0.0, cl = 0.0;
    for (std::size_t i : ix) dev += outcomes[i].device_quality, cl += outcomes[i].cloud_quality;
    const double m = static_cast<double>(ix.size());
    const quality_range range{dev / m, cl / m};
    for (std::size_t k = 0; k < nb; ++k) {
      double q = 0.0, c = 0.0;
      for (std::size_t i : ix) q += quality[k * n + i], c += cloud[k * n + i];
      curve[k] = {.budget = budgets[k], .cloud_fraction = c / m, .quality = q / m, .pgr = range.pgr(q / m)};
    }
    return average_pgr(curve) - 0.5;
  };
  return bootstrap(n, statistic, resamples, level, seed);
}

}  // namespace specdec::hybrid
