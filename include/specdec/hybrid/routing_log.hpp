#pragma once
/// \file routing_log.hpp
/// Logged hybrid requests as a CSV file: what the device's probe saw (`request_features`,
/// with the trajectory summaries of probe.hpp), what each route produced (quality, lengths)
/// and the "device is good enough" label. Predictors and arbiters are fitted on such logs,
/// and `routing_metrics.hpp` evaluates arbiters on them. `specdec-hybrid-eval` writes
/// one; `read_routing_log` reads it back by column name. A length workload's log
/// (`length_log`: probe, application features such as how much of a verse the prompt
/// gives, and the answer length to predict) has its own `write_length_log` /
/// `read_length_log`.
///
/// ```cpp
/// auto log = specdec::hybrid::read_routing_log("models/kjv_routing_log.csv");
/// auto [cal, test] = specdec::hybrid::split_folds(log);
/// auto lengths = specdec::hybrid::read_length_log("models/kjv_length_log.csv");
/// ```
#include <concepts>
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
/// id, fold, group and the probe's columns (`request_features` without the predictions).
inline std::vector<std::string> probe_columns() {
  std::vector<std::string> v{"id", "fold", "group", "prompt_tokens", "draft_mean_entropy", "draft_max_prob_mean",
                             "draft_first_token_entropy"};
  for (auto n : trajectory_feature_names) v.emplace_back(n);
  return v;
}
/// Writes the probe's columns of `f` (after id, fold, group): its first
/// `trajectory_feature::count` extra values are the trajectory summaries.
inline void write_probe_columns(std::ostream& s, const request_features& f) {
  s << f.prompt_tokens << ',' << f.draft_mean_entropy << ',' << f.draft_max_prob_mean << ','
    << f.draft_first_token_entropy;
  for (std::size_t j = 0; j < trajectory_feature::count; ++j) s << ',' << f.extra[j];
}
inline void check_group(const std::string& group, const char* what) {
  if (group.find_first_of(",\n\"") != std::string::npos)
    throw invalid_argument(std::string(what) + ": group '" + group + "' holds a comma, quote or newline");
}
inline const std::vector<std::string>& routing_log_columns() {
  static const std::vector<std::string> c = [] {
    std::vector<std::string> v = probe_columns();
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
    detail::check_group(r.group, "write_routing_log");
    s.str("");
    s << r.id << ',' << r.fold << ',' << r.group << ',';
    detail::write_probe_columns(s, r.features);
    s << ',' << r.cloud_tokens << ',' << r.device_tokens << ',' << r.prefix_tokens << ',' << r.speculative_rounds << ','
      << r.reference_tokens << ',' << r.outcome.device_quality << ',' << r.outcome.cloud_quality << ','
      << r.outcome.prefix_quality << ',' << r.cloud_entropy << ',' << r.device_agreement << ',' << r.prefix_agreement
      << ',' << (r.outcome.device_ok ? 1 : 0) << '\n';
    out << s.str();
  }
}

namespace detail {
/// A CSV file read by header name: `next()` moves to the next non-empty data row, `num`
/// and `text` read its cells; every error names the file, the line and the column.
class csv_reader {
 public:
  csv_reader(const std::string& path, const char* what) : path_(path), what_(what), in_(path) {
    if (!in_) throw invalid_argument(what_ + " '" + path_ + "' cannot be opened");
    std::string line;
    if (!std::getline(in_, line)) throw invalid_argument(what_ + " '" + path_ + "' is empty; expected a header");
    std::istringstream h(line);
    std::string name;
    for (std::size_t i = 0; std::getline(h, name, ','); ++i) {
      at_[name] = i;
      names_.push_back(name);
    }
  }
  /// The header's column names, in file order.
  [[nodiscard]] const std::vector<std::string>& columns() const noexcept { return names_; }
  void require(const std::vector<std::string>& columns) const {
    for (const auto& c : columns)
      if (!at_.count(c)) throw invalid_argument(what_ + " '" + path_ + "' has no column '" + c + "'");
  }
  [[nodiscard]] bool next() {
    std::string line;
    while (std::getline(in_, line)) {
      ++line_;
      if (line.empty()) continue;
      cells_.clear();
      std::istringstream ls(line);
      std::string cell;
      while (std::getline(ls, cell, ',')) cells_.push_back(cell);
      return true;
    }
    return false;
  }
  [[nodiscard]] const std::string& text(const std::string& c) const {
    const std::size_t i = at_.at(c);
    if (i >= cells_.size())
      throw invalid_argument(what_ + " '" + path_ + "' line " + std::to_string(line_) + " has no '" + c + "'");
    return cells_[i];
  }
  [[nodiscard]] double num(const std::string& c) const {
    const std::string& f = text(c);
    try {
      std::size_t used = 0;
      const double v = std::stod(f, &used);
      if (used != f.size()) throw std::invalid_argument(c);
      return v;
    } catch (const std::exception&) {
      if (f == "nan" || f == "-nan") return std::numeric_limits<double>::quiet_NaN();
      throw invalid_argument(what_ + " '" + path_ + "' line " + std::to_string(line_) + " column '" + c + "' is '" +
                             f + "'; expected a number");
    }
  }
  [[nodiscard]] std::size_t count(const std::string& c) const { return static_cast<std::size_t>(num(c)); }

 private:
  std::string path_, what_;
  std::ifstream in_;
  std::map<std::string, std::size_t> at_;
  std::vector<std::string> names_, cells_;
  std::size_t line_ = 1;
};

/// The probe's columns of a log row: `request_features` without the predictions, the
/// trajectory summaries in `extra`.
inline void read_probe_columns(const csv_reader& in, request_features& f) {
  f.prompt_tokens = in.count("prompt_tokens");
  f.draft_mean_entropy = static_cast<float>(in.num("draft_mean_entropy"));
  f.draft_max_prob_mean = static_cast<float>(in.num("draft_max_prob_mean"));
  f.draft_first_token_entropy = static_cast<float>(in.num("draft_first_token_entropy"));
  for (auto n : trajectory_feature_names) f.extra.push_back(static_cast<float>(in.num(std::string(n))));
}
}  // namespace detail

/// Reads a CSV written by `write_routing_log` (columns found by header name, so extra
/// columns are ignored); `request_id` = row index.
///
/// ```cpp
/// auto log = specdec::hybrid::read_routing_log("models/kjv_routing_log.csv");
/// ```
[[nodiscard]] inline std::vector<logged_request> read_routing_log(const std::string& path) {
  detail::csv_reader in(path, "routing log");
  in.require(detail::routing_log_columns());
  std::vector<logged_request> log;
  while (in.next()) {
    logged_request r;
    r.id = static_cast<std::uint64_t>(in.num("id"));
    r.fold = static_cast<int>(in.num("fold"));
    r.group = in.text("group");
    r.features.request_id = log.size();
    detail::read_probe_columns(in, r.features);
    r.cloud_tokens = in.count("cloud_tokens");
    r.device_tokens = in.count("device_tokens");
    r.prefix_tokens = in.count("prefix_tokens");
    r.speculative_rounds = in.count("speculative_rounds");
    r.reference_tokens = in.count("reference_tokens");
    r.outcome.device_quality = in.num("device_quality");
    r.outcome.cloud_quality = in.num("cloud_quality");
    r.outcome.prefix_quality = in.num("prefix_quality");
    r.outcome.device_ok = in.num("device_ok") != 0.0;
    r.cloud_entropy = in.num("cloud_entropy");
    r.device_agreement = in.num("device_agreement");
    r.prefix_agreement = in.num("prefix_agreement");
    log.push_back(std::move(r));
  }
  if (log.empty()) throw invalid_argument("routing log '" + path + "' has no requests");
  return log;
}

/// The calibration (fold 0) and test (fold 1) requests of a log (`logged_request` or
/// `logged_length`), in log order, with `request_id` renumbered from 0 within each fold.
///
/// ```cpp
/// auto [cal, test] = specdec::hybrid::split_folds(log);
/// ```
template <class R>
  requires requires(R r) {
    { r.fold } -> std::convertible_to<int>;
    r.features.request_id;
  }
[[nodiscard]] std::pair<std::vector<R>, std::vector<R>> split_folds(const std::vector<R>& log) {
  std::pair<std::vector<R>, std::vector<R>> out;
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

/// One logged request of a length workload: what the device's probe saw, the
/// application's own features, and the length of the answer a predictor should predict.
///
/// ```cpp
/// specdec::hybrid::logged_length r{.fold = 1, .group = "Gen_7:4", .target_tokens = 23};
/// ```
struct logged_length {
  std::uint64_t id = 0;
  int fold = 0;                     ///< 0 = calibration, 1 = test
  std::string group;                ///< e.g. the source verse (folds split by chapter or story)
  request_features features;        ///< extra = trajectory summaries, then the `length_log::app_features`
  std::size_t target_tokens = 0;    ///< length of the answer to predict (e.g. the cloud's)
  std::size_t reference_tokens = 0;  ///< length of the reference text's own continuation
};

/// A length workload's log: the names of the application features (stored after the
/// trajectory summaries in `features.extra`, as CSV columns `app_<name>`) and the requests.
///
/// ```cpp
/// specdec::hybrid::length_log log{.app_features = {"words_given", "device_tokens"}};
/// ```
struct length_log {
  std::vector<std::string> app_features;
  std::vector<logged_length> requests;
};

/// Writes `log` as CSV: id, fold, group, the probe's columns, `app_<name>` per application
/// feature, target_tokens, reference_tokens.
///
/// ```cpp
/// std::ofstream out("length_log.csv");
/// specdec::hybrid::write_length_log(out, log);
/// ```
inline void write_length_log(std::ostream& out, const length_log& log) {
  for (const auto& n : log.app_features)
    if (n.empty() || n.find_first_of(",\n\"") != std::string::npos)
      throw invalid_argument("write_length_log: application feature name '" + n +
                             "' is empty or holds a comma, quote or newline");
  const auto cols = detail::probe_columns();
  for (std::size_t i = 0; i < cols.size(); ++i) out << (i ? "," : "") << cols[i];
  for (const auto& n : log.app_features) out << ",app_" << n;
  out << ",target_tokens,reference_tokens\n";
  const std::size_t extra = trajectory_feature::count + log.app_features.size();
  std::ostringstream s;
  s.precision(9);
  for (const auto& r : log.requests) {
    if (r.features.extra.size() != extra)
      throw invalid_argument("write_length_log: request " + std::to_string(r.id) + " has " +
                             std::to_string(r.features.extra.size()) + " extra features, expected " +
                             std::to_string(extra) + " (probe_trajectory's, then one per application feature)");
    detail::check_group(r.group, "write_length_log");
    s.str("");
    s << r.id << ',' << r.fold << ',' << r.group << ',';
    detail::write_probe_columns(s, r.features);
    for (std::size_t j = trajectory_feature::count; j < extra; ++j) s << ',' << r.features.extra[j];
    s << ',' << r.target_tokens << ',' << r.reference_tokens << '\n';
    out << s.str();
  }
}

/// Reads a CSV written by `write_length_log`: every `app_<name>` column, in header order,
/// is an application feature; `request_id` = row index.
///
/// ```cpp
/// auto log = specdec::hybrid::read_length_log("models/kjv_length_log.csv");
/// auto [cal, test] = specdec::hybrid::split_folds(log.requests);
/// ```
[[nodiscard]] inline length_log read_length_log(const std::string& path) {
  detail::csv_reader in(path, "length log");
  auto required = detail::probe_columns();
  required.insert(required.end(), {"target_tokens", "reference_tokens"});
  in.require(required);
  length_log log;
  std::vector<std::string> app_columns;
  for (const auto& c : in.columns())
    if (c.rfind("app_", 0) == 0) {
      log.app_features.push_back(c.substr(4));
      app_columns.push_back(c);
    }
  while (in.next()) {
    logged_length r;
    r.id = static_cast<std::uint64_t>(in.num("id"));
    r.fold = static_cast<int>(in.num("fold"));
    r.group = in.text("group");
    r.features.request_id = log.requests.size();
    detail::read_probe_columns(in, r.features);
    for (const auto& c : app_columns) r.features.extra.push_back(static_cast<float>(in.num(c)));
    r.target_tokens = in.count("target_tokens");
    r.reference_tokens = in.count("reference_tokens");
    log.requests.push_back(std::move(r));
  }
  if (log.requests.empty()) throw invalid_argument("length log '" + path + "' has no requests");
  return log;
}

}  // namespace specdec::hybrid
