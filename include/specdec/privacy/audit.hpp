#pragma once
/// \file audit.hpp
/// The uplink gate and its audit log. Every message that leaves the device passes
/// `authorize_uplink`, which (1) refuses it with `privacy_violation` unless
/// `may_leave_device` allows its class, route and form, and (2) appends one JSON Lines record
/// to the `uplink_audit_log` before the transport hands the bytes to a socket (write-ahead:
/// a message is never sent without its record; a send that then fails leaves a record of
/// bytes that may have only partly left).
///
/// A record holds the time, the destination, the route, the privacy class, the detector's
/// decision (spans per kind and whether the payload was redacted), the byte count, the
/// token count and the SHA-256 of the payload - never the payload:
///
/// ```
/// {"time":"2026-12-05T10:11:12.123456Z","destination":"127.0.0.1:8443","route":"cloud",
///  "gamma":0,"prefix_tokens":0,"privacy_class":"redactable","decision":{"pii":true,
///  "spans":{"EMAIL":1},"payload":"redacted"},"bytes":83,"tokens":0,"sha256":"9f86d0..."}
/// ```
/// (one line per record in the file). The log is opened with `O_APPEND`, so records
/// of concurrent processes and threads never overwrite or interleave with each other (one
/// `write(2)` per record), and existing records are never rewritten. `specdec-audit`
/// (tools/) summarises a log. POSIX only.
///
/// ```cpp
/// specdec::privacy::uplink_audit_log log("/var/log/specdec/uplink.jsonl");
/// std::string payload = R"({"prompt":"Reply to <EMAIL_1>"})";
/// specdec::privacy::authorize_uplink({.destination = "cloud.example:443",
///                                     .route = specdec::hybrid::route::in_cloud(),
///                                     .privacy = specdec::privacy::privacy_class::redactable,
///                                     .form = specdec::privacy::payload_form::redacted,
///                                     .payload = payload}, &log);
/// send(payload);  // only now
/// ```
#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>
#include <string_view>
#include <utility>

#include "specdec/error.hpp"
#include "specdec/hybrid/arbiter.hpp"
#include "specdec/privacy/policy.hpp"
#include "specdec/privacy/recognizers.hpp"
#include "specdec/privacy/sha256.hpp"

namespace specdec::privacy {

/// The audit log cannot be opened or written. The message it was about was not sent.
class audit_error : public error {
 public:
  using error::error;
};

/// One message about to leave the device. `payload` is hashed and counted, never stored.
///
/// ```cpp
/// specdec::privacy::pii_detector detector;
/// std::string prompt = "What is 2 + 2?";
/// auto d = detector.analyze(prompt);
/// specdec::privacy::uplink_message m{.destination = "127.0.0.1:8080",
///                                    .route = specdec::hybrid::route::in_cloud(),
///                                    .privacy = d.decision, .detected = d.counts(),
///                                    .payload = prompt, .tokens = 7};
/// ```
struct uplink_message {
  std::string_view destination{};  ///< "host:port" or a URL: printable ASCII, no spaces
  hybrid::route route{};
  privacy_class privacy = privacy_class::local_only;  ///< the request's class (detector's decision)
  payload_form form = payload_form::plain;
  std::array<std::uint32_t, pii_kind_count> detected{};  ///< spans per kind in the request
  std::string_view payload{};                            ///< the bytes to be sent
  std::size_t tokens = 0;                                ///< token ids the payload carries (0 for text)
};

namespace detail {

inline void check_destination(std::string_view d) {
  if (d.empty() || d.size() > 512)
    throw invalid_argument("uplink_message.destination must be 1-512 bytes, got " + std::to_string(d.size()));
  for (std::size_t i = 0; i < d.size(); ++i)
    if (d[i] < 0x21 || d[i] > 0x7e)
      throw invalid_argument("uplink_message.destination must be printable ASCII without spaces; byte " +
                             std::to_string(i) + " is " + std::to_string(static_cast<unsigned char>(d[i])));
}

inline std::string rfc3339_utc(std::chrono::system_clock::time_point t) {
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
  std::time_t secs = static_cast<std::time_t>(us / 1000000);
  long frac = static_cast<long>(us % 1000000);
  if (frac < 0) {
    frac += 1000000;
    --secs;
  }
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[128];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
  return buf;
}

}  // namespace detail

/// The JSON Lines record of `m` at time `t` (ending in '\n'): see the file comment. Throws
/// `invalid_argument` for a malformed destination.
///
/// ```cpp
/// std::string line = specdec::privacy::audit_record(
///     {.destination = "127.0.0.1:8080", .route = specdec::hybrid::route::speculative(4),
///      .privacy = specdec::privacy::privacy_class::cloud_allowed, .payload = "xyz"},
///     std::chrono::system_clock::now());
/// ```
[[nodiscard]] inline std::string audit_record(const uplink_message& m, std::chrono::system_clock::time_point t) {
  detail::check_destination(m.destination);
  std::string s;
  s.reserve(384);
  s += R"({"time":")" + detail::rfc3339_utc(t) + R"(","destination":")";
  for (char c : m.destination) {
    if (c == '"' || c == '\\') s += '\\';
    s += c;
  }
  s += R"(","route":")" + std::string(hybrid::to_string(m.route.kind)) + R"(","gamma":)" +
       std::to_string(m.route.gamma) + R"(,"prefix_tokens":)" + std::to_string(m.route.prefix_tokens) +
       R"(,"privacy_class":")" + std::string(to_string(m.privacy)) + R"(","decision":{"pii":)";
  bool any = false;
  for (auto n : m.detected) any = any || n > 0;
  s += any ? "true" : "false";
  s += R"(,"spans":{)";
  bool first = true;
  for (auto k : all_pii_kinds) {
    const auto n = m.detected[static_cast<std::size_t>(k)];
    if (n == 0) continue;
    s += first ? "\"" : ",\"";
    s += to_string(k);
    s += "\":" + std::to_string(n);
    first = false;
  }
  s += R"(},"payload":")" + std::string(to_string(m.form)) + R"("},"bytes":)" + std::to_string(m.payload.size()) +
       R"(,"tokens":)" + std::to_string(m.tokens) + R"(,"sha256":")" + sha256_hex(m.payload) + "\"}\n";
  return s;
}

/// An append-only JSON Lines file of uplink records (mode 0600 when created).
///
/// ```cpp
/// specdec::privacy::uplink_audit_log log("uplink.jsonl");
/// log.append({.destination = "127.0.0.1:8080", .route = specdec::hybrid::route::in_cloud(),
///             .privacy = specdec::privacy::privacy_class::cloud_allowed, .payload = "hello"});
/// ```
class uplink_audit_log {
 public:
  /// Opens (creating if needed) `path` for appending; throws `audit_error` naming the path
  /// and the system's reason.
  explicit uplink_audit_log(std::string path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd_ < 0)
      throw audit_error("uplink audit log '" + path_ + "': cannot open for appending: " + std::strerror(errno));
  }
  uplink_audit_log(const uplink_audit_log&) = delete;
  uplink_audit_log& operator=(const uplink_audit_log&) = delete;
  uplink_audit_log(uplink_audit_log&& o) noexcept : path_(std::move(o.path_)), fd_(std::exchange(o.fd_, -1)) {}
  uplink_audit_log& operator=(uplink_audit_log&& o) noexcept {
    if (this != &o) {
      close();
      path_ = std::move(o.path_);
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~uplink_audit_log() { close(); }

  /// Appends the record of `m` at time `t` with one `write(2)`; throws `audit_error` if the
  /// record could not be written whole.
  void append(const uplink_message& m, std::chrono::system_clock::time_point t = std::chrono::system_clock::now()) {
    const std::string line = audit_record(m, t);
    ssize_t n;
    do n = ::write(fd_, line.data(), line.size());
    while (n < 0 && errno == EINTR);
    if (n < 0) throw audit_error("uplink audit log '" + path_ + "': write failed: " + std::strerror(errno));
    if (static_cast<std::size_t>(n) != line.size())
      throw audit_error("uplink audit log '" + path_ + "': short write (" + std::to_string(n) + " of " +
                        std::to_string(line.size()) + " bytes); the record is incomplete");
  }

  [[nodiscard]] const std::string& path() const noexcept { return path_; }

 private:
  void close() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  std::string path_;
  int fd_ = -1;
};

/// The uplink gate the transport calls for every message, before connecting and before
/// writing: throws `privacy_violation` (nothing recorded) unless `may_leave_device` allows
/// the message's class, route and form, then appends its record to `log` (if not null).
///
/// ```cpp
/// specdec::privacy::uplink_message m{.destination = "127.0.0.1:8080",
///                                    .route = specdec::hybrid::route::in_cloud(),
///                                    .privacy = specdec::privacy::privacy_class::local_only,
///                                    .payload = "secret"};
/// try {
///   specdec::privacy::authorize_uplink(m, nullptr);
/// } catch (const specdec::privacy::privacy_violation&) {
///   // the transport opens no connection
/// }
/// ```
inline void authorize_uplink(const uplink_message& m, uplink_audit_log* log) {
  require_may_leave_device(m.privacy, m.route, m.form);
  if (log != nullptr) log->append(m);
}

}  // namespace specdec::privacy
