#pragma once
/// \file cli/args.hpp
/// The one argument parser of specdec's command-line tools (examples/ and bench/): an
/// option table from which both the parsing and `--help` come, and value converters that
/// parse each value whole and check its bounds before anything is allocated from it.
/// Every error is a `specdec::invalid_argument` that starts with the option's name, then
/// the value and what was expected:
///
///     --threads: '18446744073709551615' is out of range; expected a whole number in [0, 4095]
///     --gamma: '-1' is out of range; expected a whole number in [1, 1024]
///     --temperature: 'x' is not a number; expected a finite number >= 0
///
/// ```cpp
/// std::size_t gamma = 4;
/// std::string model;
/// specdec::cli::parser p("specdec-tool", "what the tool does");
/// p.add("--model", "PATH", "checkpoint", specdec::cli::store(model), specdec::cli::required);
/// p.add("--gamma", "K", "draft length", specdec::cli::store(gamma, specdec::cli::between<std::size_t>(1, 1024)));
/// if (!p.parse(argc, argv)) return 0;  // --help was printed
/// ```
#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "specdec/backend/cpu/kv_cache.hpp"
#include "specdec/error.hpp"

namespace specdec::cli {

/// The values a numeric option accepts: [lo, hi], either end open; floating-point values
/// must also be finite.
///
/// ```cpp
/// auto p = specdec::cli::range<float>{.lo = 0, .hi = 1, .lo_open = true};  // (0, 1]
/// ```
template <class T>
struct range {
  T lo = std::numeric_limits<T>::lowest();
  T hi = std::numeric_limits<T>::max();
  bool lo_open = false, hi_open = false;

  [[nodiscard]] bool contains(T v) const {
    if constexpr (std::is_floating_point_v<T>)
      if (!std::isfinite(v)) return false;
    return (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
  }
  /// "a whole number in [0, 4095]", "a finite number > 0", "a number in (0, 1]", ...
  [[nodiscard]] std::string describe() const {
    const bool whole = std::is_integral_v<T>;
    const bool no_lo = lo == std::numeric_limits<T>::lowest() && !lo_open;
    const bool no_hi = hi == std::numeric_limits<T>::max() && !hi_open;
    const std::string kind = whole ? "a whole number" : no_hi ? "a finite number" : "a number";
    if (!whole && no_lo && no_hi) return kind;
    if (no_hi && !no_lo) return kind + (lo_open ? " > " : " >= ") + text(lo);
    return kind + " in " + (lo_open ? "(" : "[") + text(lo) + ", " + text(hi) + (hi_open ? ")" : "]");
  }

 private:
  static std::string text(T v) {
    if constexpr (std::is_integral_v<T>) {
      return std::to_string(v);
    } else {
      char b[32];
      auto r = std::to_chars(b, b + sizeof b, v);
      return std::string(b, r.ptr);
    }
  }
};

/// [lo, hi]
template <class T>
range<T> between(T lo, T hi) {
  return {.lo = lo, .hi = hi};
}
/// [lo, max]
template <class T>
range<T> at_least(T lo) {
  return {.lo = lo};
}
/// (lo, max]
template <class T>
range<T> above(T lo) {
  return {.lo = lo, .lo_open = true};
}
/// Any count (>= 0) or, for floating-point T, any finite number >= 0.
template <class T>
range<T> non_negative() {
  return {.lo = T(0)};
}

[[noreturn]] inline void fail(std::string_view option, std::string_view value, const std::string& why,
                              const std::string& expected) {
  throw invalid_argument(std::string(option) + ": '" + std::string(value) + "' " + why + "; expected " + expected);
}

/// `text` parsed whole as a T inside `r` (negative numbers are numbers: they fail the
/// range, not the parse), or an error naming `option`, the text and the range.
template <class T>
T parse_number(std::string_view option, std::string_view text, range<T> r = {}) {
  static_assert(std::is_arithmetic_v<T> && !std::is_same_v<T, bool>);
  const char* const end = text.data() + text.size();
  // Integers are read as the widest type of their sign class, so "-1" for a count and
  // "99999999999" for an int are out of range, not "not a number".
  using wide = std::conditional_t<std::is_floating_point_v<T>, double,
                                  std::conditional_t<std::is_signed_v<T>, long long, unsigned long long>>;
  wide v{};
  std::from_chars_result res{};
  if constexpr (std::is_unsigned_v<T>) {
    if (!text.empty() && text.front() == '-') {
      long long neg{};
      res = std::from_chars(text.data(), end, neg);
      if (res.ec == std::errc{} && res.ptr == end) fail(option, text, "is out of range", r.describe());
      if (res.ec == std::errc::result_out_of_range) fail(option, text, "is out of range", r.describe());
      fail(option, text, std::is_integral_v<T> ? "is not a whole number" : "is not a number", r.describe());
    }
  }
  res = std::from_chars(text.data(), end, v);
  if (res.ec == std::errc::result_out_of_range) fail(option, text, "is out of range", r.describe());
  if (text.empty() || res.ec != std::errc{} || res.ptr != end)
    fail(option, text, std::is_integral_v<T> ? "is not a whole number" : "is not a number", r.describe());
  if constexpr (std::is_integral_v<T>) {
    if (v < static_cast<wide>(std::numeric_limits<T>::lowest()) || v > static_cast<wide>(std::numeric_limits<T>::max()))
      fail(option, text, "is out of range", r.describe());
  } else {
    if (!std::isfinite(v) || std::fabs(v) > static_cast<double>(std::numeric_limits<T>::max()))
      fail(option, text, "is out of range", r.describe());
  }
  const T t = static_cast<T>(v);
  if (!r.contains(t)) fail(option, text, "is out of range", r.describe());
  return t;
}

/// The non-empty items of the comma-separated `text`, as strings.
inline std::vector<std::string> split_list(std::string_view text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (std::size_t i = 0; i <= text.size(); ++i)
    if (i == text.size() || text[i] == ',') {
      if (i > start) out.emplace_back(text.substr(start, i - start));
      start = i + 1;
    }
  return out;
}

/// The items of the comma-separated `text`, each parsed by `parse_number` in `r`; an
/// empty list is an error unless `allow_empty`.
template <class T>
std::vector<T> parse_list(std::string_view option, std::string_view text, range<T> r = {}, bool allow_empty = false) {
  std::vector<T> out;
  for (const std::string& item : split_list(text)) out.push_back(parse_number<T>(option, item, r));
  if (out.empty() && !allow_empty) fail(option, text, "is empty", "a comma-separated list, each item " + r.describe());
  return out;
}

/// Exactly `n` comma-separated numbers in `r` (--short-range 8,16; --device-cost 1.5,0.2).
template <class T>
std::vector<T> parse_tuple(std::string_view option, std::string_view text, std::size_t n, range<T> r = {}) {
  std::vector<T> out = parse_list<T>(option, text, r, /*allow_empty=*/true);
  if (out.size() != n)
    fail(option, text, "has " + std::to_string(out.size()) + " items",
         std::to_string(n) + " comma-separated items, each " + r.describe());
  return out;
}

/// A weight format (or, with `kv`, a KV cache format: fp32, bf16 or fp16), or an error
/// naming `option`.
inline cpu::weight_format parse_format(std::string_view option, std::string_view text, bool kv = false) {
  cpu::weight_format f{};
  try {
    f = cpu::parse_weight_format(text);
  } catch (const invalid_argument& e) {
    throw invalid_argument(std::string(option) + ": " + e.what());
  }
  if (kv) cpu::check_kv_format(f, option);
  return f;
}

/// Opens `path` for writing into `out` when the option gave one (a tool writes files
/// only where it is told to), before any work: an unwritable path fails at once, with an
/// error naming `option`, the path and the reason.
inline void open_output(std::string_view option, const std::string& path, std::ofstream& out) {
  if (path.empty()) return;
  out.open(path);
  if (!out)
    throw invalid_argument(std::string(option) + ": cannot write '" + path + "': " + std::strerror(errno) +
                           "; expected a writable file path");
}

/// How an option handles its value: called with the option's name and the value text.
using handler = std::function<void(std::string_view option, std::string_view value)>;

/// Stores the value: a string as given, a number parsed in `r` (a std::optional is set).
template <class T>
handler store(T& out) {
  if constexpr (std::is_same_v<T, std::string>) {
    return [&out](std::string_view, std::string_view v) { out = std::string(v); };
  } else {
    return [&out](std::string_view o, std::string_view v) { out = parse_number<T>(o, v); };
  }
}
template <class T>
handler store(T& out, range<T> r) {
  return [&out, r](std::string_view o, std::string_view v) { out = parse_number<T>(o, v, r); };
}
template <class T>
handler store(std::optional<T>& out, range<T> r) {
  return [&out, r](std::string_view o, std::string_view v) { out = parse_number<T>(o, v, r); };
}
/// Stores a non-empty comma-separated list of numbers in `r`.
template <class T>
handler store(std::vector<T>& out, range<T> r) {
  return [&out, r](std::string_view o, std::string_view v) { out = parse_list<T>(o, v, r); };
}
/// Stores a weight format (`kv`: one that can hold a KV cache).
inline handler store_format(cpu::weight_format& out, bool kv = false) {
  return [&out, kv](std::string_view o, std::string_view v) { out = parse_format(o, v, kv); };
}
/// Stores one of `choices`, or an error listing them.
inline handler store_choice(std::string& out, std::vector<std::string> choices) {
  return [&out, choices](std::string_view o, std::string_view v) {
    for (const std::string& c : choices)
      if (c == v) {
        out = c;
        return;
      }
    std::string list;
    for (const std::string& c : choices) list += (list.empty() ? "" : ", ") + c;
    fail(o, v, "is not a choice", "one of " + list);
  };
}

/// Marks an option the command line must give.
inline constexpr struct required_t {
} required{};

/// An option table: `add` the options (with their help), then `parse`. `--help` / `-h`
/// prints `help()` and makes `parse` return false. A handler's `invalid_argument` that
/// does not start with the option's name gets it prefixed, so every error names it.
class parser {
 public:
  parser(std::string program, std::string summary) : program_(std::move(program)), summary_(std::move(summary)) {}

  /// An option with a value (`metavar` names it in --help).
  parser& add(std::string name, std::string metavar, std::string help, handler apply) {
    options_.push_back({std::move(name), std::move(metavar), std::move(help), std::move(apply), {}, false});
    return *this;
  }
  parser& add(std::string name, std::string metavar, std::string help, handler apply, required_t) {
    add(std::move(name), std::move(metavar), std::move(help), std::move(apply));
    options_.back().required = true;
    return *this;
  }
  /// An option without a value.
  parser& flag(std::string name, std::string help, std::function<void()> apply) {
    options_.push_back({std::move(name), "", std::move(help), {}, std::move(apply), false});
    return *this;
  }
  /// A flag that sets `out` to true.
  parser& flag(std::string name, std::string help, bool& out) {
    return flag(std::move(name), std::move(help), [&out] { out = true; });
  }

  /// Applies argv[1..argc) in order. Returns false (after printing the help to `out`)
  /// for --help; throws `invalid_argument` for an unknown option, a missing value or a
  /// missing required option, and whatever a handler throws, all naming the option.
  bool parse(int argc, const char* const* argv, std::ostream& out = std::cout) {
    std::vector<bool> seen(options_.size(), false);
    for (int i = 1; i < argc; ++i) {
      const std::string_view a = argv[i];
      if (a == "--help" || a == "-h") {
        out << help();
        return false;
      }
      std::size_t k = 0;
      while (k < options_.size() && options_[k].name != a) ++k;
      if (k == options_.size()) {
        throw invalid_argument(std::string(a.size() > 1 && a[0] == '-' ? "unknown option '" : "unexpected argument '") +
                               std::string(a) + "'; expected an option listed by " + program_ + " --help");
      }
      const option& o = options_[k];
      seen[k] = true;
      if (o.toggle) {
        o.toggle();
        continue;
      }
      if (i + 1 >= argc) throw invalid_argument(o.name + ": expected a value (" + o.metavar + ")");
      const std::string_view v = argv[++i];
      try {
        o.apply(o.name, v);
      } catch (const invalid_argument& e) {
        if (std::string_view(e.what()).substr(0, o.name.size()) == o.name) throw;
        throw invalid_argument(o.name + ": " + e.what());
      }
    }
    for (std::size_t k = 0; k < options_.size(); ++k)
      if (options_[k].required && !seen[k])
        throw invalid_argument(options_[k].name + ": required; expected " + options_[k].name + " " +
                               options_[k].metavar + " (see " + program_ + " --help)");
    return true;
  }
  bool parse(int argc, char** argv, std::ostream& out = std::cout) {
    return parse(argc, const_cast<const char* const*>(argv), out);
  }

  /// "usage: PROGRAM [options]", the summary, then one entry per option in table order:
  /// name and metavar, then the help text (its lines indented under each other).
  [[nodiscard]] std::string help() const {
    std::size_t width = 0;
    for (const option& o : options_) width = std::max(width, label(o).size());
    width = std::min<std::size_t>(width, 30);
    // Built by appending (GCC 12 warns falsely about "literal" + std::string here).
    std::string s("usage: ");
    s.append(program_).append(" [options]\n").append(summary_).append("\n");
    for (const option& o : options_) {
      const std::size_t start = s.size();
      s.append("  ").append(label(o));
      if (s.size() - start < width + 4) {
        s.append(width + 4 - (s.size() - start), ' ');
      } else {
        s.append("\n").append(width + 4, ' ');
      }
      for (char c : o.help) {
        s += c;
        if (c == '\n') s.append(width + 4, ' ');  // continuation lines line up
      }
      s.append(o.required ? " (required)\n" : "\n");
    }
    s.append("  --help, -h").append(width > 8 ? width - 8 : 1, ' ').append("this text\n");
    return s;
  }

 private:
  struct option {
    std::string name, metavar, help;
    handler apply;
    std::function<void()> toggle;  ///< flags: set instead of apply
    bool required = false;
  };
  static std::string label(const option& o) { return o.metavar.empty() ? o.name : o.name + " " + o.metavar; }

  std::string program_, summary_;
  std::vector<option> options_;
};

}  // namespace specdec::cli
