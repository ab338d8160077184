#pragma once
// Command-line values of the benchmark tools (specdec-bench, specdec-batch-bench,
// specdec-hybrid-eval): counts, numbers, lists and formats, each parsed whole, with errors
// that name the option.
#include <cmath>
#include <cstddef>
#include <exception>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "specdec/backend/cpu/kv_cache.hpp"
#include "specdec/error.hpp"

namespace specdec::bench {

/// The non-empty items of the comma-separated `s`.
inline std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::string item;
  std::istringstream in(s);
  while (std::getline(in, item, ',')) if (!item.empty()) out.push_back(item);
  return out;
}

/// The items of the comma-separated `s`, each parsed whole as a T and accepted by `ok`;
/// otherwise an error naming `option` and saying the item is not `what`.
template <class T, class Ok>
std::vector<T> parse_list(const std::string& option, const std::string& s, const char* what, Ok ok) {
  std::vector<T> out;
  for (const auto& item : split_list(s)) {
    std::size_t pos = 0;
    T v{};
    try {
      if constexpr (std::is_same_v<T, double>) v = std::stod(item, &pos);
      else if constexpr (std::is_floating_point_v<T>) v = std::stof(item, &pos);
      else if (item[0] != '-') v = std::stoul(item, &pos);  // stoul wraps "-1"
    } catch (const std::exception&) {
      pos = 0;
    }
    if (pos == 0 || pos != item.size() || !ok(v))
      throw specdec::invalid_argument(option + ": '" + item + "' is not " + what);
    out.push_back(v);
  }
  return out;
}

/// A non-empty comma-separated list of counts for `option` (--threads 1,2; --gammas 3,4,5).
inline std::vector<std::size_t> parse_counts(const std::string& option, const std::string& s) {
  std::vector<std::size_t> out = parse_list<std::size_t>(option, s, "a number", [](std::size_t) { return true; });
  if (out.empty()) throw specdec::invalid_argument(option + ": expected a comma-separated list of numbers");
  return out;
}

/// The one item of `v` parsed from `s`, or an error naming `option` and saying it
/// expected one `what`.
template <class T>
T single(const std::string& option, const std::string& s, const std::vector<T>& v, const char* what) {
  if (v.size() != 1) throw specdec::invalid_argument(option + ": expected one " + what + ", got '" + s + "'");
  return v[0];
}

/// One count for `option` (--tokens 96), or an error naming the option.
inline std::size_t parse_count(const std::string& option, const std::string& s) {
  return single(option, s, parse_counts(option, s), "number");
}

/// A comma-separated list of numbers in [0, 1] for `option` (--confidences 0.3,0.5), as T.
template <class T = float>
std::vector<T> parse_fractions(const std::string& option, const std::string& s) {
  return parse_list<T>(option, s, "a number in [0, 1]", [](T v) { return v >= T(0) && v <= T(1); });
}

/// One number in [0, 1] for `option` (--long-fraction 0.25), or an error naming the option.
inline double parse_fraction(const std::string& option, const std::string& s) {
  return single(option, s, parse_fractions<double>(option, s), "number in [0, 1]");
}

/// One finite number > 0 for `option` (--budget-mb 16), or an error naming the option.
inline double parse_positive(const std::string& option, const std::string& s) {
  const auto ok = [](double v) { return v > 0 && std::isfinite(v); };
  return single(option, s, parse_list<double>(option, s, "a finite number > 0", ok), "finite number > 0");
}

/// One finite number >= 0 for `option` (--lambda 0.05), or an error naming the option.
inline double parse_non_negative(const std::string& option, const std::string& s) {
  const auto ok = [](double v) { return v >= 0 && std::isfinite(v); };
  return single(option, s, parse_list<double>(option, s, "a finite number >= 0", ok), "finite number >= 0");
}

/// A weight format for `option`, or an error naming the option; a KV cache's (`kv`) must
/// be one that can hold it (`cpu::check_kv_format`).
inline cpu::weight_format parse_format(const std::string& option, const std::string& s, bool kv = false) {
  cpu::weight_format f{};
  try {
    f = cpu::parse_weight_format(s);
  } catch (const specdec::invalid_argument& e) {
    throw specdec::invalid_argument(option + ": " + e.what());
  }
  if (kv) cpu::check_kv_format(f, option);
  return f;
}

}  // namespace specdec::bench
