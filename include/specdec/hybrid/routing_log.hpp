#pragma once
/// \file routing_log.hpp
/// Logged hybrid requests as a CSV file: what the device's probe saw (`request_features`,
/// with the trajectory summaries of probe.hpp), what each route produced (quality, lengths)
/// and the "device is good enough" label. Predictors and arbiters are fitted on such logs,
/// and `routing_metrics.hpp` evaluates arbiters on them. `specdec-hybrid-eval` writes
/// one; `read_routing_log` reads it back by column name.
///
/// ```cpp
/// auto log = specdec::hybrid::read_routing_log("models/kjv_routing_log.csv");
/// auto [cal, test] = specdec::hybrid::split_folds(log);
/// ```
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <limits>
#include <map>
#include <ostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/hybrid/probe.hpp"
#include "specdec/hybrid/routing_metrics.hpp"

namespace specdec::hybrid {

/// One logged request.
///
/// ```cpp
/// specdec::hybrid::logged_request r;
/// r.outcome.device_ok = r.device_quality_gap() < 0.5;
/// ```
struct logged_request {
  std::uint64_t id = 0;
  int fold = 0;                    ///< 0 = calibration, 1 = test
  std::string group;               ///< e.g. the source chapter (folds split by group)
  request_features features;       ///< probe summaries; extra = trajectory features
  routing_outcome outcome;         ///< log-likelihood quality per route, label
  double device_agreement = 0.0;   ///< device vs cloud answer, position-wise over the shorter length
  double prefix_agreement = 0.0;   ///< cloud-prefix answer vs cloud answer, likewise
  double cloud_entropy = 0.0;      ///< the cloud's mean entropy (nats) along the device's answer
  std::size_t cloud_tokens = 0;    ///< length of the cloud's answer
  std::size_t device_tokens = 0;   ///< length of the device's answer
  std::size_t prefix_tokens = 0;   ///< length of the cloud-prefix answer
  std::size_t speculative_rounds = 0;  ///< cloud verifications of greedy speculative decoding
  std::size_t reference_tokens = 0;    ///< length of the reference text's own continuation

  /// Per-token log-likelihood the device's answer loses against the cloud's.
  [[nodiscard]] double device_quality_gap() const noexcept {
    return outcome.cloud_quality - outcome.device_quality;
  }
};

namespace detail {
inline const std::vector<std::string>& routing_log_columns() {
  static const std::vector<std::string> c = [] {
    std::vector<std::string> v{"id", "fold", "group", "prompt_tokens", "draft_mean_entropy", "draft_max_prob_mean",
                               "draft_first_token_entropy"};
    for (auto n : trajectory_feature_names) v.emplace_back(n);
    for (const char* n : {"cloud_tokens", "device_tokens", "prefix_tokens", "speculative_rounds", "reference_tokens",
                          "device_quality", "cloud_quality", "prefix_quality", "cloud_entropy", "device_agreement",
                          "prefix_agreement", "device_ok"})
      v.emplace_back(n);
    return v;
  }();
  return c;
}
}  // namespace detail

/// Writes `log` as CSV (header first, columns as `read_routing_log` expects).
///
/// ```cpp
/// std::ofstream out("log.csv");
/// specdec::hybrid::write_routing_log(out, log);
/// ```
inline void write_routing_log(std::ostream& out, const std::vector<logged_request>& log) {
  const auto& cols = detail::routing_log_columns();
  for (std::size_t i = 0; i < cols.size(); ++i) out << (i ? "," : "") << cols[i];
  out << '\n';
  std::ostringstream s;
  s.precision(9);
  for (const auto& r : log) {
    if (r.features.extra.size() != trajectory_feature::count)
      throw invalid_argument("write_routing_log: request " + std::to_string(r.id) + " has " +
                             std::to_string(r.features.extra.size()) + " extra features, expected " +
                             std::to_string(trajectory_feature::count) + " (probe_trajectory)");
    if (r.group.find_first_of(",\n\"") != std::string::npos)
      throw invalid_argument("write_routing_log: group '" + r.group + "' holds a comma, quote or newline");
    s.str("");
    s << r.id << ',' << r.fold << ',' << r.group << ',' << r.features.prompt_tokens << ','
      << r.features.draft_mean_entropy << ',' << r.features.draft_max_prob_mean << ','
      << r.features.draft_first_token_entropy;
    for (float e : r.features.extra) s << ',' << e;
    s << ',' << r.cloud_tokens << ',' << r.device_tokens << ',' << r.prefix_tokens << ',' << r.speculative_rounds << ','
      << r.reference_tokens << ',' << r.outcome.device_quality << ',' << r.outcome.cloud_quality << ','
      << r.outcome.prefix_quality << ',' << r.cloud_entropy << ',' << r.device_agreement << ',' << r.prefix_agreement
      << ',' << (r.outcome.device_ok ? 1 : 0) << '\n';
    out << s.str();
  }
}

/// Reads a CSV written by `write_routing_log` (columns found by header name, so extra
/// columns are ignored); `request_id` = row index.
///
/// ```cpp
/// auto log = specdec::hybrid::read_routing_log("models/kjv_routing_log.csv");
/// ```
[[nodiscard]] inline std::vector<logged_request> read_routing_log(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw invalid_argument("routing log '" + path + "' cannot be opened");
  std::string line;
  if (!std::getline(in, line)) throw invalid_argument("routing log '" + path + "' is empty; expected a header");
  std::map<std::string, std::size_t> at;
  {
    std::istringstream h(line);
    std::string name;
    for (std::size_t i = 0; std::getline(h, name, ','); ++i) at[name] = i;
  }
  for (const auto& c : detail::routing_log_columns())
    if (!at.count(c)) throw invalid_argument("routing log '" + path + "' has no column '" + c + "'");
  std::vector<logged_request> log;
  std::vector<std::string> f;
  for (std::size_t row = 2; std::getline(in, line); ++row) {
    if (line.empty()) continue;
    f.clear();
    std::istringstream ls(line);
    std::string cell;
    while (std::getline(ls, cell, ',')) f.push_back(cell);
    auto num = [&](const std::string& c) {
      const std::size_t i = at.at(c);
      if (i >= f.size())
        throw invalid_argument("routing log '" + path + "' line " + std::to_string(row) + " has no '" + c + "'");
      try {
        std::size_t used = 0;
        const double v = std::stod(f[i], &used);
        if (used != f[i].size()) throw std::invalid_argument(c);
        return v;
      } catch (const std::exception&) {
        if (f[i] == "nan" || f[i] == "-nan") return std::numeric_limits<double>::quiet_NaN();
        throw invalid_argument("routing log '" + path + "' line " + std::to_string(row) + " column '" + c +
                               "' is '" + f[i] + "'; expected a number");
      }
    };
    auto count = [&](const std::string& c) { return static_cast<std::size_t>(num(c)); };
    logged_request r;
    r.id = static_cast<std::uint64_t>(num("id"));
    r.fold = static_cast<int>(num("fold"));
    r.group = f[at.at("group")];
    r.features.request_id = log.size();
    r.features.prompt_tokens = count("prompt_tokens");
    r.features.draft_mean_entropy = static_cast<float>(num("draft_mean_entropy"));
    r.features.draft_max_prob_mean = static_cast<float>(num("draft_max_prob_mean"));
    r.features.draft_first_token_entropy = static_cast<float>(num("draft_first_token_entropy"));
    for (auto n : trajectory_feature_names) r.features.extra.push_back(static_cast<float>(num(std::string(n))));
    r.cloud_tokens = count("cloud_tokens");
    r.device_tokens = count("device_tokens");
    r.prefix_tokens = count("prefix_tokens");
    r.speculative_rounds = count("speculative_rounds");
    r.reference_tokens = count("reference_tokens");
    r.outcome.device_quality = num("device_quality");
    r.outcome.cloud_quality = num("cloud_quality");
    r.outcome.prefix_quality = num("prefix_quality");
    r.outcome.device_ok = num("device_ok") != 0.0;
    r.cloud_entropy = num("cloud_entropy");
    r.device_agreement = num("device_agreement");
    r.prefix_agreement = num("prefix_agreement");
    log.push_back(std::move(r));
  }
  if (log.empty()) throw invalid_argument("routing log '" + path + "' has no requests");
  return log;
}

/// The calibration (fold 0) and test (fold 1) requests of a log, in log order, with
/// `request_id` renumbered from 0 within each fold.
///
/// ```cpp
/// auto [cal, test] = specdec::hybrid::split_folds(log);
/// ```
[[nodiscard]] inline std::pair<std::vector<logged_request>, std::vector<logged_request>> split_folds(
    const std::vector<logged_request>& log) {
  std::pair<std::vector<logged_request>, std::vector<logged_request>> out;
  for (const auto& r : log) {
    auto& fold = r.fold == 0 ? out.first : out.second;
    fold.push_back(r);
    fold.back().features.request_id = fold.size() - 1;
  }
  if (out.first.empty() || out.second.empty())
    throw invalid_argument("split_folds: " + std::to_string(out.first.size()) + " calibration and " +
                           std::to_string(out.second.size()) + " test requests; expected both folds non-empty");
  return out;
}

}  // namespace specdec::hybrid
