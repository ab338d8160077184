#pragma once
/// \file validation.hpp
/// One way to check a knob: every policy, arbiter, link and option type validates its
/// parameters with these helpers, so a bad value always reads "<name> must be
/// <expectation>, got <value>" and throws `specdec::invalid_argument`. `validatable` is
/// the concept of a type that can check itself.
///
/// ```cpp
/// struct my_policy {
///   double alpha = 0.5;
///   void validate() const { specdec::detail::check_range("my_policy.alpha", alpha, 0.0, 1.0, "in [0, 1]"); }
/// };
/// static_assert(specdec::validatable<my_policy>);
/// ```
#include <cmath>
#include <string>
#include <string_view>

#include "specdec/error.hpp"

namespace specdec {

/// `x.validate()` on a const object checks its knobs and throws `invalid_argument`.
///
/// ```cpp
/// static_assert(specdec::validatable<specdec::sampling_params>);
/// ```
template <class P>
concept validatable = requires(const P& p) { p.validate(); };

/// Calls `p.validate()` if the type has one; otherwise does nothing.
///
/// ```cpp
/// specdec::validate_policy(policy);  // in a decoder's constructor
/// ```
template <class P>
void validate_policy(const P& p) {
  if constexpr (validatable<P>) p.validate();
}

namespace detail {

/// A value as an error message shows it: "nan", "inf", "-inf" or `std::to_string`.
[[nodiscard]] inline std::string format_value(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return std::to_string(v);
}

/// Throws `invalid_argument("<name> must be <expected>, got <value>")`.
[[noreturn]] inline void fail_knob(std::string_view name, std::string_view value, std::string_view expected) {
  throw invalid_argument(std::string(name) + " must be " + std::string(expected) + ", got " + std::string(value));
}

/// Throws unless lo <= v <= hi (NaN fails); `expected` words the range, e.g. "in [0, 1]".
inline void check_range(std::string_view name, double v, double lo, double hi, std::string_view expected) {
  if (!(v >= lo && v <= hi)) fail_knob(name, format_value(v), expected);
}
/// Throws unless lo <= v < hi (NaN fails).
inline void check_below(std::string_view name, double v, double lo, double hi, std::string_view expected) {
  if (!(v >= lo && v < hi)) fail_knob(name, format_value(v), expected);
}
/// Throws unless v is finite and > 0.
inline void check_positive(std::string_view name, double v) {
  if (!(v > 0.0) || !std::isfinite(v)) fail_knob(name, format_value(v), "finite and > 0");
}
/// Throws unless v is finite and >= 0.
inline void check_non_negative(std::string_view name, double v) {
  if (!(v >= 0.0) || !std::isfinite(v)) fail_knob(name, format_value(v), "finite and >= 0");
}
/// Throws if v is NaN (infinities are allowed).
inline void check_not_nan(std::string_view name, double v, std::string_view expected) {
  if (std::isnan(v)) fail_knob(name, "nan", expected);
}

}  // namespace detail
}  // namespace specdec
