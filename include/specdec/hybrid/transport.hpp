#pragma once
/// \file hybrid/transport.hpp
/// A blocking TCP connection with deadlines and byte counters (POSIX sockets), the
/// privacy gate every device-side transport passes before it opens a connection, and the
/// frame reader of the verify protocol (wire.hpp) over such a connection. The verify
/// client, the completion client and `specdec-serve`'s verify listener all use it.
///
/// Every operation takes an absolute deadline; a missed deadline throws `link_timeout`, a
/// refused / reset / closed connection `link_unavailable`, both naming the peer. Bytes are
/// counted at the socket: exactly what `send` and `recv` moved, framing included (on a
/// TLS connection that is the ciphertext, records and handshake included).
///
/// Plain TCP goes to loopback addresses only: `connect` refuses any other address with
/// `tls_error` before it opens a socket, unless the caller secures the connection (a
/// `transport_security` from hybrid/tls.hpp, which needs OpenSSL) or sets
/// `allow_plaintext`. This header itself needs no TLS library.
///
/// ```cpp
/// using namespace specdec::hybrid;
/// tcp_connection c = tcp_connection::connect("127.0.0.1", port, /*timeout=*/2.0, privacy::may_leave_device);
/// c.send_all(std::string_view("ping"), deadline_after(1.0));
/// std::array<std::uint8_t, 64> buf;
/// std::size_t n = c.recv_some(buf, deadline_after(1.0));
/// ```
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/hybrid/errors.hpp"
#include "specdec/hybrid/wire.hpp"

namespace specdec::hybrid {

/// An absolute point in time by which an operation must finish.
using deadline = std::chrono::steady_clock::time_point;

/// The deadline `seconds` from now (finite, >= 0).
[[nodiscard]] inline deadline deadline_after(double seconds) {
  if (!(seconds >= 0.0) || seconds > 1e9)
    throw invalid_argument("deadline_after: " + std::to_string(seconds) + " seconds; expected finite and >= 0");
  return std::chrono::steady_clock::now() +
         std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(seconds));
}

/// Throws `privacy_violation` naming `what` unless `p` allows the data to leave the
/// device. Called before any connection is opened, so a refused request sends nothing.
///
/// ```cpp
/// specdec::hybrid::check_may_leave(request_privacy, "completion_client::complete");
/// ```
inline void check_may_leave(privacy p, const char* what) {
  if (p != privacy::may_leave_device)
    throw privacy_violation(std::string(what) +
                            ": the request is local_only; nothing was sent (expected privacy::may_leave_device "
                            "for a request that may leave the device)");
}

/// Whether `a` is a loopback address: 127.0.0.0/8, ::1, or 127.0.0.0/8 mapped into IPv6.
[[nodiscard]] inline bool is_loopback(const sockaddr* a) noexcept {
  if (a->sa_family == AF_INET)
    return (ntohl(reinterpret_cast<const sockaddr_in*>(a)->sin_addr.s_addr) >> 24) == 127;
  if (a->sa_family != AF_INET6) return false;
  const in6_addr& v6 = reinterpret_cast<const sockaddr_in6*>(a)->sin6_addr;
  return IN6_IS_ADDR_LOOPBACK(&v6) || (IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127);
}

/// Whether `host` (a numeric address or a name) resolves, and only to loopback
/// addresses: the hosts plain TCP may reach without `allow_plaintext`.
///
/// ```cpp
/// assert(specdec::hybrid::is_loopback_host("127.0.0.1") && !specdec::hybrid::is_loopback_host("0.0.0.0"));
/// ```
[[nodiscard]] inline bool is_loopback_host(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (::getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0) return false;
  bool all = res != nullptr;
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) all = all && is_loopback(a->ai_addr);
  ::freeaddrinfo(res);
  return all;
}

class tcp_connection;

/// A layer that secures a `tcp_connection`'s bytes (TLS: hybrid/tls.hpp). It moves its
/// records through the connection's own socket I/O (`send_raw` / `recv_raw`), so the
/// connection's deadlines, errors and byte counters hold under it unchanged.
class stream_layer {
 public:
  virtual ~stream_layer() = default;
  /// Writes all of `data` (plaintext) by `until`.
  virtual void send_all(tcp_connection& socket, std::span<const std::uint8_t> data, deadline until) = 0;
  /// Reads at least one byte of plaintext (at most `buf.size()`) by `until`.
  virtual std::size_t recv_some(tcp_connection& socket, std::span<std::uint8_t> buf, deadline until) = 0;
  /// Whether plaintext or unread records wait inside the layer (readable without the socket).
  [[nodiscard]] virtual bool buffered() const noexcept = 0;
  /// An orderly end (TLS close_notify), best effort: never blocks, never throws.
  virtual void close(tcp_connection& socket) noexcept = 0;
};

/// How a client secures its connections: the `security` member of `verify_client_options`
/// and `completion_client_options`. The default is plain TCP, to loopback hosts only.
///
/// ```cpp
/// specdec::hybrid::transport_security tls = specdec::hybrid::tls_client({.ca_file = "ca.pem"});  // tls.hpp
/// specdec::hybrid::transport_security lan{.allow_plaintext = true};  // plain TCP beyond loopback, explicitly
/// ```
struct transport_security {
  /// Secures a freshly connected socket to `host` by the deadline (the handshake) and
  /// returns the layer; throws `tls_error` (or `link_timeout`). Empty: plain TCP.
  std::function<std::unique_ptr<stream_layer>(tcp_connection&, const std::string& host, deadline)> handshake{};
  /// Plain TCP to non-loopback addresses. Off (the default): refused before connecting.
  bool allow_plaintext = false;
};

/// A connected TCP socket (non-blocking underneath, TCP_NODELAY so small frames are not
/// held back), closed by the destructor, optionally secured by a `stream_layer` (TLS):
/// `send_all` and `recv_some` then carry plaintext through the layer, while the byte
/// counters keep counting what crossed the socket. Move-only.
class tcp_connection {
 public:
  tcp_connection() = default;
  /// Adopts a connected socket (e.g. from `accept`); `peer` names it in messages.
  explicit tcp_connection(int fd, std::string peer = "peer") : fd_(fd), peer_(std::move(peer)) { configure(); }
  tcp_connection(tcp_connection&& o) noexcept { *this = std::move(o); }
  tcp_connection& operator=(tcp_connection&& o) noexcept {
    if (this != &o) {
      close();
      fd_ = std::exchange(o.fd_, -1);
      peer_ = std::move(o.peer_);
      layer_ = std::move(o.layer_);
      sent_ = o.sent_;
      received_ = o.received_;
    }
    return *this;
  }
  tcp_connection(const tcp_connection&) = delete;
  tcp_connection& operator=(const tcp_connection&) = delete;
  ~tcp_connection() { close(); }

  /// Connects to `host:port` within `timeout_seconds` (every address `getaddrinfo`
  /// returns is tried in turn), then runs `security`'s handshake within the same time.
  /// Throws `privacy_violation` (before resolving anything) unless `p` allows leaving the
  /// device; `tls_error` before opening a socket when the connection would be plain TCP
  /// to an address that is not loopback and `security.allow_plaintext` is off, or when
  /// the handshake fails; `link_timeout` or `link_unavailable`.
  [[nodiscard]] static tcp_connection connect(const std::string& host, std::uint16_t port, double timeout_seconds,
                                              privacy p, const transport_security& security = {}) {
    check_may_leave(p, "tcp_connection::connect");
    const deadline until = deadline_after(timeout_seconds);
    const std::string peer = host + ":" + std::to_string(port);
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (const int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res); rc != 0)
      throw link_unavailable("tcp_connection::connect: cannot resolve " + peer + ": " + ::gai_strerror(rc));
    if (!security.handshake && !security.allow_plaintext)
      for (addrinfo* a = res; a != nullptr; a = a->ai_next)
        if (!is_loopback(a->ai_addr)) {
          ::freeaddrinfo(res);
          throw tls_error("tcp_connection::connect: refusing plain TCP to " + peer +
                          ", which is not a loopback address; nothing was sent (expected TLS, "
                          "transport_security from hybrid/tls.hpp, or allow_plaintext = true)");
        }
    const auto finish = [&](tcp_connection c) {
      if (security.handshake) c.layer_ = security.handshake(c, host, until);
      return c;
    };
    std::string last = "no address";
    bool timed_out = false;
    for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
      const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
      if (fd < 0) {
        last = std::strerror(errno);
        continue;
      }
      tcp_connection c(fd, peer);
      if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
        ::freeaddrinfo(res);
        return finish(std::move(c));
      }
      if (errno != EINPROGRESS) {
        last = std::strerror(errno);
        continue;
      }
      const int ready = c.wait(POLLOUT, until);
      if (ready == 0) {
        timed_out = true;
        last = "no answer";
        continue;
      }
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err == 0) {
        ::freeaddrinfo(res);
        return finish(std::move(c));
      }
      last = std::strerror(err);
    }
    ::freeaddrinfo(res);
    const std::string what = "tcp_connection::connect: cannot connect to " + peer + " within " +
                             std::to_string(timeout_seconds) + " s: " + last;
    if (timed_out) throw link_timeout(what);
    throw link_unavailable(what);
  }

  [[nodiscard]] bool is_open() const noexcept { return fd_ >= 0; }
  [[nodiscard]] int fd() const noexcept { return fd_; }
  [[nodiscard]] const std::string& peer() const noexcept { return peer_; }
  /// Bytes written to / read from the socket by this connection (with TLS: ciphertext).
  [[nodiscard]] std::uint64_t bytes_sent() const noexcept { return sent_; }
  [[nodiscard]] std::uint64_t bytes_received() const noexcept { return received_; }
  /// Whether a layer (TLS) secures this connection.
  [[nodiscard]] bool secured() const noexcept { return layer_ != nullptr; }
  /// Puts `layer` (already handshaken, e.g. by hybrid/tls.hpp's `tls_server::accept`)
  /// under `send_all` and `recv_some` from now on.
  void secure(std::unique_ptr<stream_layer> layer) noexcept { layer_ = std::move(layer); }

  /// Writes all of `data` by `until` (through the layer, if any).
  void send_all(std::span<const std::uint8_t> data, deadline until) {
    if (layer_) layer_->send_all(*this, data, until);
    else send_raw(data, until);
  }
  void send_all(std::string_view data, deadline until) {
    send_all(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(data.data()), data.size()), until);
  }

  /// Reads at least one byte (at most `buf.size()`) by `until` (through the layer, if
  /// any); the peer closing the connection throws `link_unavailable`.
  std::size_t recv_some(std::span<std::uint8_t> buf, deadline until) {
    return layer_ ? layer_->recv_some(*this, buf, until) : recv_raw(buf, until);
  }

  /// Writes all of `data` to the socket itself, below any layer, by `until`.
  void send_raw(std::span<const std::uint8_t> data, deadline until) {
    std::size_t off = 0;
    while (off < data.size()) {
      require_open("send");
      const ssize_t n = ::send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL);
      if (n > 0) {
        off += static_cast<std::size_t>(n);
        sent_ += static_cast<std::uint64_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (wait(POLLOUT, until) == 0) fail_timeout("send");
        continue;
      }
      fail_errno("send");
    }
  }

  /// Reads at least one byte (at most `buf.size()`) from the socket itself, below any
  /// layer, by `until`; the peer closing the connection throws `link_unavailable`.
  std::size_t recv_raw(std::span<std::uint8_t> buf, deadline until) {
    for (;;) {
      require_open("recv");
      const ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
      if (n > 0) {
        received_ += static_cast<std::uint64_t>(n);
        return static_cast<std::size_t>(n);
      }
      if (n == 0) throw link_unavailable("tcp_connection: " + peer_ + " closed the connection");
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (wait(POLLIN, until) == 0) fail_timeout("recv");
        continue;
      }
      fail_errno("recv");
    }
  }

  /// Whether bytes (or a close) are waiting to be read before `until`.
  [[nodiscard]] bool wait_readable(deadline until) const {
    return is_open() && ((layer_ && layer_->buffered()) || wait(POLLIN, until) != 0);
  }

  /// Shuts the socket down in both directions: a reader blocked in another thread wakes
  /// up and sees the connection closed. The descriptor stays owned until `close`.
  void shutdown() noexcept {
    if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
  }
  /// Ends the layer (best effort) and closes the socket.
  void close() noexcept {
    if (layer_ && fd_ >= 0) layer_->close(*this);
    layer_.reset();
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  void configure() {
    if (fd_ < 0) return;
    const int flags = ::fcntl(fd_, F_GETFL, 0);
    if (flags >= 0) ::fcntl(fd_, F_SETFL, flags | O_NONBLOCK);
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  /// poll() for `events` until `until`: > 0 ready (or error / hang-up), 0 timed out.
  int wait(short events, deadline until) const {
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
      const int ms = left.count() <= 0 ? 0 : static_cast<int>(std::min<std::int64_t>(left.count() + 1, 1 << 30));
      pollfd p{fd_, events, 0};
      const int rc = ::poll(&p, 1, ms);
      if (rc < 0 && errno == EINTR) continue;
      if (rc <= 0) return rc < 0 ? 1 : 0;  // a poll error surfaces in the next send/recv
      return rc;
    }
  }
  void require_open(const char* op) const {
    if (fd_ < 0) throw link_unavailable("tcp_connection::" + std::string(op) + ": the connection to " + peer_ + " is closed");
  }
  [[noreturn]] void fail_timeout(const char* op) const {
    throw link_timeout("tcp_connection::" + std::string(op) + ": " + peer_ + " did not answer before the deadline");
  }
  [[noreturn]] void fail_errno(const char* op) const {
    throw link_unavailable("tcp_connection::" + std::string(op) + " to " + peer_ + ": " + std::strerror(errno));
  }

  int fd_ = -1;
  std::string peer_;
  std::unique_ptr<stream_layer> layer_;
  std::uint64_t sent_ = 0;
  std::uint64_t received_ = 0;
};

/// One frame of the verify protocol read off a connection: the message, a hash of its
/// body (what the server compares to recognise a replayed request) and its size on the
/// wire.
struct received_frame {
  wire::message message;
  std::uint64_t body_hash = 0;
  std::size_t bytes = 0;
};

/// 64-bit FNV-1a of `bytes`: identifies a replayed request's body (not a security hash).
[[nodiscard]] inline std::uint64_t fnv1a(std::span<const std::uint8_t> bytes) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (std::uint8_t b : bytes) h = (h ^ b) * 0x100000001b3ull;
  return h;
}

/// Reads the next frame from `conn` by `until`, buffering in `buf` (bytes after the frame
/// stay there for the next call). Throws `protocol_error` for a malformed frame,
/// `link_timeout` / `link_unavailable` as `recv_some`.
///
/// ```cpp
/// std::vector<std::uint8_t> buf;
/// specdec::hybrid::received_frame f = specdec::hybrid::read_frame(conn, buf, limits, deadline);
/// ```
inline received_frame read_frame(tcp_connection& conn, std::vector<std::uint8_t>& buf, const wire::limits& lim,
                                 deadline until) {
  std::uint8_t chunk[4096];
  for (;;) {
    if (const auto h = wire::peek_frame(buf, lim); h && buf.size() >= h->frame_bytes()) {
      const std::span<const std::uint8_t> body(buf.data() + h->header_bytes, h->body_bytes);
      received_frame f{wire::decode_body(body, lim), fnv1a(body), h->frame_bytes()};
      buf.erase(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(h->frame_bytes()));
      return f;
    }
    const std::size_t n = conn.recv_some(chunk, until);
    buf.insert(buf.end(), chunk, chunk + n);
  }
}

/// Whether `c` may appear in an API key: RFC 6750's bearer-token (token68) alphabet.
///
/// ```cpp
/// bool ok = specdec::hybrid::api_key_char('-');  // true; ' ', '\r', ':' are not
/// ```
[[nodiscard]] inline bool api_key_char(char c) noexcept {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '-' || c == '.' || c == '_' || c == '~' ||
         c == '+' || c == '/' || c == '=';
}

/// Throws `invalid_argument` naming `what` unless `key` is empty or a bearer token: 1 to
/// `wire::limits{}.max_key` characters of `A-Z a-z 0-9 - . _ ~ + / =` (so it can neither
/// break an HTTP header nor exceed what a server decodes).
///
/// ```cpp
/// specdec::hybrid::check_api_key("sk-device-fleet-4f0c9a7d2b8e61f3", "api_key");  // fine
/// ```
inline void check_api_key(std::string_view key, const char* what) {
  const bool ok = key.size() <= wire::limits{}.max_key && std::all_of(key.begin(), key.end(), api_key_char);
  if (!ok)
    throw invalid_argument(std::string(what) + ": a key of " + std::to_string(key.size()) +
                           " bytes with characters outside A-Z a-z 0-9 - . _ ~ + / = or longer than " +
                           std::to_string(wire::limits{}.max_key) + "; expected a bearer token");
}

/// Encodes `m` and writes it to `conn` by `until`.
inline void write_frame(tcp_connection& conn, const wire::message& m, deadline until) {
  thread_local std::vector<std::uint8_t> out;
  out.clear();
  wire::encode_to(m, out);
  conn.send_all(out, until);
}

}  // namespace specdec::hybrid
