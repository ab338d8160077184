#pragma once
/// \file calibration.hpp
/// Budget calibration of hybrid arbiters: an arbiter that computes a scalar "cloud score"
/// per request meets a cloud budget by thresholding that score at the right quantile of a
/// calibration sample (see `calibratable_arbiter` in arbiter.hpp).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <span>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/hybrid/link.hpp"

namespace specdec::hybrid {

/// The threshold `t` such that routing "cloud iff score > t" sends at most
/// `floor(max_cloud_fraction * n)` of the `n` scores to the cloud, and exactly that many
/// when there are no ties at the threshold. Returns -infinity when the fraction allows
/// every request to go to the cloud.
///
/// ```cpp
/// std::vector<double> s{0.1, 0.9, 0.5, 0.7};
/// double t = specdec::hybrid::calibrate_threshold(s, 0.5);  // 0.5: only 0.9 and 0.7 exceed it
/// ```
[[nodiscard]] inline double calibrate_threshold(std::span<const double> scores, double max_cloud_fraction) {
  specdec::detail::check_range("calibrate_threshold max_cloud_fraction", max_cloud_fraction, 0.0, 1.0, "in [0, 1]");
  if (scores.empty())
    throw invalid_argument("calibrate_threshold: no scores; expected a non-empty calibration sample");
  std::vector<double> s(scores.begin(), scores.end());
  for (double v : s)
    if (std::isnan(v)) throw invalid_argument("calibrate_threshold: a score is NaN; expected comparable scores");
  const std::size_t n = s.size();
  const auto k = static_cast<std::size_t>(std::floor(max_cloud_fraction * static_cast<double>(n) + 1e-9));
  if (k >= n) return -std::numeric_limits<double>::infinity();
  // The (k+1)-th largest score: at most k scores are strictly greater.
  std::nth_element(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(k), s.end(), std::greater<>());
  return s[k];
}

}  // namespace specdec::hybrid
