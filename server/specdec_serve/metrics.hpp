#pragma once
/// \file specdec_serve/metrics.hpp
/// A small thread-safe metrics registry rendered in the Prometheus text exposition format
/// (counters, gauges, histograms with fixed buckets), for `GET /metrics`.
///
/// ```cpp
/// specdec::serve::metrics_registry m;
/// m.describe("specdec_step_seconds", "histogram", "Batched forward wall time", {0.001, 0.01, 0.1});
/// m.observe("specdec_step_seconds", "", 0.004);
/// m.add("specdec_tokens_total", "kind=\"generated\"", 3);
/// std::string text = m.render();
/// ```
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "specdec/error.hpp"

namespace specdec::serve {

class metrics_registry {
 public:
  /// Declares a metric: `type` is "counter", "gauge" or "histogram" (with its upper
  /// bucket bounds, increasing). Using an undeclared name throws `invalid_argument`.
  void describe(const std::string& name, const std::string& type, const std::string& help,
                std::vector<double> bounds = {}) {
    std::lock_guard lock(mu_);
    if (type != "counter" && type != "gauge" && type != "histogram")
      throw invalid_argument("metrics_registry::describe: type \"" + type + "\" of " + name +
                             "; expected counter, gauge or histogram");
    if (!std::is_sorted(bounds.begin(), bounds.end()))
      throw invalid_argument("metrics_registry::describe: bucket bounds of " + name + " must increase");
    families_[name] = family{type, help, std::move(bounds), {}};
  }
  /// Adds `v` to a counter (or gauge) with the given label set (e.g. `code="200"`).
  void add(std::string_view name, std::string_view labels, double v = 1.0) {
    std::lock_guard lock(mu_);
    series(name, labels).value += v;
  }
  /// Sets a gauge.
  void set(std::string_view name, std::string_view labels, double v) {
    std::lock_guard lock(mu_);
    series(name, labels).value = v;
  }
  /// Records one observation of a histogram.
  void observe(std::string_view name, std::string_view labels, double v) {
    std::lock_guard lock(mu_);
    family& f = find(name);
    entry& e = series_of(f, labels);
    if (e.buckets.empty()) e.buckets.assign(f.bounds.size(), 0);
    for (std::size_t i = 0; i < f.bounds.size(); ++i)
      if (v <= f.bounds[i]) ++e.buckets[i];
    e.value += v;
    ++e.count;
  }
  /// The current value of a counter or gauge (0 if never set); a histogram's count.
  [[nodiscard]] double value(std::string_view name, std::string_view labels = "") {
    std::lock_guard lock(mu_);
    const family& f = find(name);
    const auto it = f.series.find(std::string(labels));
    if (it == f.series.end()) return 0.0;
    return f.type == "histogram" ? static_cast<double>(it->second.count) : it->second.value;
  }

  /// A histogram's sum of observations (0 if none).
  [[nodiscard]] double sum(std::string_view name, std::string_view labels = "") {
    std::lock_guard lock(mu_);
    const family& f = find(name);
    const auto it = f.series.find(std::string(labels));
    return it == f.series.end() ? 0.0 : it->second.value;
  }

  /// Every metric in the Prometheus text format (version 0.0.4).
  [[nodiscard]] std::string render() const {
    std::lock_guard lock(mu_);
    std::string out;
    for (const auto& [name, f] : families_) {
      out += "# HELP " + name + " " + f.help + "\n# TYPE " + name + " " + f.type + "\n";
      for (const auto& [labels, e] : f.series) {
        if (f.type != "histogram") {
          out += name + braces(labels) + " " + num(e.value) + "\n";
          continue;
        }
        const std::string sep = labels.empty() ? "" : labels + ",";
        for (std::size_t i = 0; i < f.bounds.size(); ++i)
          out += name + "_bucket{" + sep + "le=\"" + num(f.bounds[i]) + "\"} " +
                 std::to_string(i < e.buckets.size() ? e.buckets[i] : 0) + "\n";
        out += name + "_bucket{" + sep + "le=\"+Inf\"} " + std::to_string(e.count) + "\n";
        out += name + "_sum" + braces(labels) + " " + num(e.value) + "\n";
        out += name + "_count" + braces(labels) + " " + std::to_string(e.count) + "\n";
      }
    }
    return out;
  }

 private:
  struct entry {
    double value = 0.0;  ///< counter / gauge value, or a histogram's sum
    unsigned long long count = 0;
    std::vector<unsigned long long> buckets;
  };
  struct family {
    std::string type, help;
    std::vector<double> bounds;
    std::map<std::string, entry> series;
  };
  family& find(std::string_view name) {
    const auto it = families_.find(std::string(name));
    if (it == families_.end())
      throw invalid_argument("metrics_registry: metric " + std::string(name) + " was never described");
    return it->second;
  }
  const family& find(std::string_view name) const { return const_cast<metrics_registry*>(this)->find(name); }
  static entry& series_of(family& f, std::string_view labels) { return f.series[std::string(labels)]; }
  entry& series(std::string_view name, std::string_view labels) { return series_of(find(name), labels); }
  static std::string braces(const std::string& labels) { return labels.empty() ? "" : "{" + labels + "}"; }
  static std::string num(double v) {
    if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    return buf;
  }

  mutable std::mutex mu_;
  std::map<std::string, family> families_;
};

}  // namespace specdec::serve
