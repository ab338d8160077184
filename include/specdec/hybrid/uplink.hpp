#pragma once
/// \file hybrid/uplink.hpp
/// The privacy gate of the device's network clients, on the real path. Every client
/// (`verify_client`, `completion_client`) holds the request's `request_privacy` (its
/// privacy class, the route the arbiter chose, the payload form, the detected spans) and
/// an `uplink_gate` that
///
/// 1. before a connection is opened, refuses with `privacy_violation` unless
///    `privacy::may_leave_device(class, route, form)`: a `local_only` request (or a
///    `redactable` one on a split route, or anything under the device route) does not even
///    connect, whatever the arbiter said;
/// 2. before each message is written, passes exactly the bytes about to be written to the
///    socket through `privacy::authorize_uplink`, which checks the rule again and appends
///    the message's record (destination, route, class, detector decision, byte count,
///    token count, SHA-256 of those bytes; never the bytes) to the audit log, when the
///    caller configured one.
///
/// The arbiter's route is an input to the rule, never an authority over it. A client
/// that is not told the route assumes its own (`verify_client`: speculative with gamma 0,
/// meaning "not said"; `completion_client`: cloud).
///
/// ```cpp
/// namespace pv = specdec::privacy;
/// pv::pii_detector detector;
/// const std::string text = "Write to jane.doe@example.org";
/// const pv::detection d = detector.analyze(text, pv::privacy_class::cloud_allowed);
/// specdec::hybrid::request_privacy p = specdec::hybrid::request_privacy::of(d, specdec::hybrid::route::in_cloud());
/// // p.level == local_only: the completion client refuses before connecting
/// ```
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "specdec/hybrid/arbiter.hpp"
#include "specdec/hybrid/errors.hpp"
#include "specdec/privacy/audit.hpp"
#include "specdec/privacy/detector.hpp"
#include "specdec/privacy/policy.hpp"

namespace specdec::hybrid {

/// What a client needs to know about a request to decide whether its messages may leave
/// the device: the class (the most restrictive of the declared one and the detector's),
/// the route executing it (the arbiter's; unset: the client's own), the payload form and
/// the detected spans per kind (written to the audit record). Converts implicitly from the
/// two-valued `privacy` (`local_only` -> `local_only`, `may_leave_device` ->
/// `cloud_allowed`) and from a `privacy::privacy_class`, so `.data = privacy::local_only`
/// keeps working.
///
/// ```cpp
/// specdec::hybrid::request_privacy a = specdec::hybrid::privacy::local_only;
/// specdec::hybrid::request_privacy b = specdec::privacy::privacy_class::cloud_allowed;
/// b.route = specdec::hybrid::route::cloud_prefix(8);
/// ```
struct request_privacy {
  specdec::privacy::privacy_class level = specdec::privacy::privacy_class::cloud_allowed;
  std::optional<hybrid::route> route{};  ///< the route executing the request; unset: the client's own
  specdec::privacy::payload_form form = specdec::privacy::payload_form::plain;
  std::array<std::uint32_t, specdec::privacy::pii_kind_count> detected{};  ///< spans per kind in the request

  constexpr request_privacy() noexcept = default;
  // NOLINTNEXTLINE(google-explicit-constructor): the two-valued API of earlier callers
  constexpr request_privacy(hybrid::privacy p) noexcept
      : level(p == hybrid::privacy::may_leave_device ? specdec::privacy::privacy_class::cloud_allowed
                                                     : specdec::privacy::privacy_class::local_only) {}
  // NOLINTNEXTLINE(google-explicit-constructor)
  constexpr request_privacy(specdec::privacy::privacy_class c) noexcept : level(c) {}

  /// The request as the detector judged it, executing route `r`.
  [[nodiscard]] static request_privacy of(const specdec::privacy::detection& d, const hybrid::route& r) {
    request_privacy p(d.decision);
    p.route = r;
    p.detected = d.counts();
    return p;
  }
  /// The route the rule is asked about: `route`, else `own`.
  [[nodiscard]] constexpr hybrid::route route_or(const hybrid::route& own) const noexcept {
    return route ? *route : own;
  }
};

/// The gate of one request on one client: `before_connect` and `before_send` (see the file
/// comment). Cheap to copy; holds a pointer to the audit log, which must outlive it.
///
/// ```cpp
/// specdec::hybrid::uplink_gate gate("127.0.0.1:8080", specdec::hybrid::route::in_cloud(),
///                                   specdec::privacy::privacy_class::cloud_allowed, &audit);
/// auto conn = specdec::hybrid::tcp_connection::connect("127.0.0.1", 8080, 2.0,
///                                                      gate.before_connect("my_client"));
/// gate.before_send(request_bytes, /*tokens=*/0);
/// conn.send_all(request_bytes, deadline);
/// ```
class uplink_gate {
 public:
  uplink_gate() = default;
  uplink_gate(std::string destination, const hybrid::route& own_route, request_privacy p,
              specdec::privacy::uplink_audit_log* log)
      : destination_(std::move(destination)), route_(p.route_or(own_route)), privacy_(p), log_(log) {}

  /// Whether the request's messages may leave the device at all.
  [[nodiscard]] bool allows() const noexcept {
    return specdec::privacy::may_leave_device(privacy_.level, route_, privacy_.form);
  }
  /// Throws `privacy_violation` naming `who`, the class, the route and the form unless
  /// `allows()`; returns the two-valued `privacy::may_leave_device` that
  /// `tcp_connection::connect` takes.
  hybrid::privacy before_connect(const char* who) const {
    if (!allows()) {
      try {
        specdec::privacy::require_may_leave_device(privacy_.level, route_, privacy_.form);
      } catch (const privacy_violation& e) {
        throw privacy_violation(std::string(who) + ": " + e.what() + "; nothing was sent");
      }
    }
    return hybrid::privacy::may_leave_device;
  }
  /// Authorises one message, `bytes` exactly as they will be written to the socket
  /// (framing and headers included) carrying `tokens` token ids, and records it in the
  /// audit log (if any) before the caller writes it. Throws `privacy_violation` (nothing
  /// recorded) or `privacy::audit_error` (the message must not be sent).
  void before_send(std::string_view bytes, std::size_t tokens) const {
    specdec::privacy::authorize_uplink({.destination = destination_,
                                        .route = route_,
                                        .privacy = privacy_.level,
                                        .form = privacy_.form,
                                        .detected = privacy_.detected,
                                        .payload = bytes,
                                        .tokens = tokens},
                                       log_);
  }
  void before_send(std::span<const std::uint8_t> bytes, std::size_t tokens) const {
    before_send(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), tokens);
  }

  [[nodiscard]] const hybrid::route& route() const noexcept { return route_; }
  [[nodiscard]] const request_privacy& privacy() const noexcept { return privacy_; }
  [[nodiscard]] specdec::privacy::uplink_audit_log* audit_log() const noexcept { return log_; }

 private:
  std::string destination_;
  hybrid::route route_{};
  request_privacy privacy_{};
  specdec::privacy::uplink_audit_log* log_ = nullptr;
};

}  // namespace specdec::hybrid
