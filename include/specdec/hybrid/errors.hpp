#pragma once
/// \file hybrid/errors.hpp
/// The exceptions of the device/cloud layer, all derived from `specdec::error`:
///
/// | exception           | meaning                                                     | what a device does      |
/// |---------------------|-------------------------------------------------------------|-------------------------|
/// | `link_unavailable`  | the remote side could not be reached or did not answer      | continue on the device  |
/// | `link_timeout`      | (a `link_unavailable`) a deadline passed                    | continue on the device  |
/// | `tls_error`         | (a `link_unavailable`) the connection could not be secured  | continue; fix the setup |
/// | `protocol_error`    | the peer sent bytes that are not a valid message            | drop the connection     |
/// | `remote_error`      | the server answered with an error (code + message)          | depends on `code()`     |
/// | `privacy_violation` | a request marked local-only was about to leave the device   | a bug in the caller     |
///
/// ```cpp
/// try { client.verify(delta, draft); }
/// catch (const specdec::hybrid::link_unavailable&) { /* decode on the device */ }
/// catch (const specdec::hybrid::remote_error& e) { log(e.code(), e.what()); }
/// ```
#include <string>

#include "specdec/error.hpp"

namespace specdec::hybrid {

/// The link failed (outage, refused connection, reset, or a message lost more often than
/// the retransmit limit): a remote call could not complete. The caller's committed tokens
/// are unaffected; the device continues on its own model.
///
/// ```cpp
/// try { dec.generate(prompt, opts); }
/// catch (const specdec::hybrid::link_unavailable&) { continue_on_device(); }
/// ```
class link_unavailable : public error {
 public:
  using error::error;
};

/// A deadline (connect or request) passed before the remote side answered.
///
/// ```cpp
/// catch (const specdec::hybrid::link_timeout& e) { monitor.record_timeout(); }
/// ```
class link_timeout : public link_unavailable {
 public:
  using link_unavailable::link_unavailable;
};

/// The connection could not be secured, so nothing of the request was sent: the peer's
/// certificate failed verification (unknown issuer, expired, not for this host name or
/// IP address), the handshake failed (the peer does not speak TLS, or refused this
/// client's certificate), or the connection would have been plain TCP to a non-loopback
/// address without `allow_plaintext`. The message names the peer and the reason. Retrying
/// does not help; the device continues on its own model like after any
/// `link_unavailable`.
///
/// ```cpp
/// catch (const specdec::hybrid::tls_error& e) { log_misconfiguration(e.what()); }
/// ```
class tls_error : public link_unavailable {
 public:
  using link_unavailable::link_unavailable;
};

/// The peer sent bytes that do not decode to a valid message (wire format, HTTP or
/// server-sent events); the message names what was wrong and where.
///
/// ```cpp
/// try { auto m = specdec::hybrid::wire::decode_frame(bytes, limits); }
/// catch (const specdec::hybrid::protocol_error& e) { reject(e.what()); }
/// ```
class protocol_error : public error {
 public:
  using error::error;
};

/// The server answered a request with an error. `code()` is the wire protocol's error
/// code (see `wire::error_code`) or, for HTTP, the status; `status()` is the HTTP status
/// (0 on the verify protocol).
///
/// ```cpp
/// catch (const specdec::hybrid::remote_error& e) { if (e.status() == 401) ask_for_a_key(); }
/// ```
class remote_error : public error {
 public:
  remote_error(int code, int status, const std::string& what) : error(what), code_(code), status_(status) {}
  [[nodiscard]] int code() const noexcept { return code_; }
  [[nodiscard]] int status() const noexcept { return status_; }

 private:
  int code_ = 0;
  int status_ = 0;
};

/// A request whose privacy class keeps it on the device reached a transport: it is
/// refused before any connection is opened, so not one byte leaves the device.
///
/// ```cpp
/// EXPECT_THROW(client.open(prefix, params, seed, specdec::hybrid::privacy::local_only),
///              specdec::hybrid::privacy_violation);
/// ```
class privacy_violation : public error {
 public:
  using error::error;
};

/// Whether a request's data may leave the device. Every client transport checks it before
/// opening a connection or sending a byte.
///
/// ```cpp
/// auto p = specdec::hybrid::privacy::may_leave_device;
/// ```
enum class privacy {
  local_only,        ///< nothing of this request may be sent anywhere
  may_leave_device,  ///< the request may be sent to the configured server
};

}  // namespace specdec::hybrid
