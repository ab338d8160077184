#pragma once
/// \file policy.hpp
/// Privacy classes of hybrid requests and the rule that decides, below any arbiter, whether
/// a message of a request may leave the device.
///
/// Every request carries a `privacy_class`. The class is the most restrictive of what the
/// caller declared and what the on-device PII detector found (detector.hpp): a prompt with a
/// detected personal-data span becomes `local_only` unless the caller opted into redaction.
/// The client transport asks `may_leave_device(class, route, form)` for every message before
/// it opens a connection or writes a byte; the arbiter's route is an input to the rule, never
/// an authority over it, so a buggy or adversarial arbiter cannot move a `local_only` request
/// off the device.
///
/// | class           | device | cloud                  | speculative | cloud_prefix |
/// |-----------------|--------|------------------------|-------------|--------------|
/// | `local_only`    | -      | refused                | refused     | refused      |
/// | `redactable`    | -      | only a redacted payload| refused     | refused      |
/// | `cloud_allowed` | -      | allowed                | allowed     | allowed      |
///
/// (`-`: the device route sends nothing, so any uplink message under it is refused.)
/// Split routes (speculative, cloud_prefix) need the same context on both sides, so they
/// never carry a redacted prompt: a `redactable` request may only use the cloud-only route.
///
/// ```cpp
/// using namespace specdec::privacy;
/// using specdec::hybrid::route;
/// bool a = may_leave_device(privacy_class::local_only, route::in_cloud());         // false
/// bool b = may_leave_device(privacy_class::redactable, route::in_cloud(),
///                           payload_form::redacted);                              // true
/// bool c = may_leave_device(privacy_class::redactable, route::speculative(4),
///                           payload_form::redacted);                              // false
/// ```
#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "specdec/error.hpp"
#include "specdec/hybrid/arbiter.hpp"
#include "specdec/hybrid/errors.hpp"

namespace specdec::privacy {

/// How much of a request may leave the device, ordered from most to least restrictive.
///
/// ```cpp
/// auto c = specdec::privacy::privacy_class::redactable;
/// static_assert(specdec::privacy::privacy_class::local_only < specdec::privacy::privacy_class::redactable);
/// ```
enum class privacy_class : std::uint8_t {
  local_only = 0,     ///< nothing leaves the device, whatever the route
  redactable = 1,     ///< the cloud-only route may send it with detected spans replaced by placeholders
  cloud_allowed = 2,  ///< any cloud-using route may send it as is
};

/// Name of a class ("local_only", "redactable", "cloud_allowed"), as written in audit logs.
///
/// ```cpp
/// std::string_view n = specdec::privacy::to_string(specdec::privacy::privacy_class::local_only);
/// ```
[[nodiscard]] constexpr std::string_view to_string(privacy_class c) noexcept {
  switch (c) {
    case privacy_class::local_only: return "local_only";
    case privacy_class::redactable: return "redactable";
    case privacy_class::cloud_allowed: return "cloud_allowed";
  }
  return "?";
}

/// Parses a class name written by `to_string`; throws `invalid_argument` naming `what`, the
/// value and the accepted names otherwise.
///
/// ```cpp
/// auto c = specdec::privacy::parse_privacy_class("redactable", "--privacy");
/// ```
[[nodiscard]] inline privacy_class parse_privacy_class(std::string_view name, std::string_view what = "privacy class") {
  for (auto c : {privacy_class::local_only, privacy_class::redactable, privacy_class::cloud_allowed})
    if (name == to_string(c)) return c;
  throw invalid_argument(std::string(what) + " must be one of local_only, redactable, cloud_allowed, got '" +
                         std::string(name) + "'");
}

/// The more restrictive of two classes: combining a declared class with a detected one can
/// only keep more on the device.
///
/// ```cpp
/// using specdec::privacy::privacy_class;
/// auto c = specdec::privacy::most_restrictive(privacy_class::cloud_allowed, privacy_class::local_only);
/// // c == privacy_class::local_only
/// ```
[[nodiscard]] constexpr privacy_class most_restrictive(privacy_class a, privacy_class b) noexcept {
  return std::min(a, b);
}

/// Whether an uplink payload is the request's own text or its redacted form (redaction.hpp).
///
/// ```cpp
/// auto f = specdec::privacy::payload_form::redacted;
/// ```
enum class payload_form : std::uint8_t {
  plain,     ///< the request's content as the user wrote it (or tokens derived from it)
  redacted,  ///< every detected span replaced by a placeholder
};

/// "plain" or "redacted".
///
/// ```cpp
/// std::string_view n = specdec::privacy::to_string(specdec::privacy::payload_form::plain);
/// ```
[[nodiscard]] constexpr std::string_view to_string(payload_form f) noexcept {
  return f == payload_form::plain ? "plain" : "redacted";
}

/// The uplink rule: may a message of a request of class `c`, executing route `r`, in form
/// `f`, be sent to the cloud? A pure function of its arguments (see the table in the file
/// comment); the transport calls it before connecting and before every write.
///
/// ```cpp
/// using namespace specdec::privacy;
/// if (!may_leave_device(privacy_class::cloud_allowed, specdec::hybrid::route::speculative(4)))
///   throw std::logic_error("unreachable: cloud_allowed may use every cloud route");
/// ```
[[nodiscard]] constexpr bool may_leave_device(privacy_class c, const hybrid::route& r,
                                              payload_form f = payload_form::plain) noexcept {
  if (!r.uses_cloud()) return false;  // the device route has no uplink message at all
  switch (c) {
    case privacy_class::local_only: return false;
    case privacy_class::redactable: return r.kind == hybrid::route_kind::cloud && f == payload_form::redacted;
    case privacy_class::cloud_allowed: return true;
  }
  return false;  // an out-of-range class value is treated as the most restrictive
}

/// Thrown when a message that `may_leave_device` refuses is about to be sent. Nothing was
/// sent and nothing was recorded in the audit log. The same type as the network clients'
/// `hybrid::privacy_violation`, so one handler catches a refusal from either layer.
///
/// ```cpp
/// static_assert(std::is_same_v<specdec::privacy::privacy_violation, specdec::hybrid::privacy_violation>);
/// ```
using privacy_violation = hybrid::privacy_violation;

/// Throws `privacy_violation` naming the class, route and form unless `may_leave_device`.
///
/// ```cpp
/// using namespace specdec::privacy;
/// require_may_leave_device(privacy_class::cloud_allowed, specdec::hybrid::route::in_cloud());  // passes
/// ```
inline void require_may_leave_device(privacy_class c, const hybrid::route& r, payload_form f = payload_form::plain) {
  if (may_leave_device(c, r, f)) return;
  std::string why = c == privacy_class::local_only ? "a local_only request never leaves the device"
                    : !r.uses_cloud()              ? "the device route sends nothing"
                    : c == privacy_class::redactable
                        ? "a redactable request may leave only redacted and only on the cloud route"
                        : "refused";
  throw privacy_violation("uplink refused for privacy class " + std::string(to_string(c)) + ", route " +
                          std::string(hybrid::to_string(r.kind)) + ", payload " + std::string(to_string(f)) + ": " +
                          why);
}

}  // namespace specdec::privacy
