#pragma once
/// \file specdec_serve/verify_listener.hpp
/// The verify port of `specdec-serve`: a raw TCP listener speaking the binary protocol of
/// specdec/hybrid/wire.hpp, one thread per connection. A connection is attached to at most
/// one session at a time (by `open_session` or `resume_session`); its `verify_request`s
/// go to that session. Requests are answered in order, one at a time.
///
/// A frame that does not decode is answered with `error_reply{malformed}` and the
/// connection is closed (the byte stream cannot be resynchronised); so is a missing or
/// unknown API key (`unauthorized`); every other error keeps the connection.
///
/// Keys and limits (auth.hpp): `open_session` and `resume_session` carry the key; the
/// connection then acts for that key, whose token bucket every open, resume and verify
/// request draws from (`rate_limited` when empty). Only the key that opened a session may
/// resume, verify or close it; for any other it does not exist (`unknown_session`).
///
/// Timeouts, so a slow or silent client cannot hold a thread: a new connection must send
/// its first frame within `handshake_timeout_seconds`; an attached one is closed after
/// `idle_timeout_seconds` without a frame (the device reconnects and resumes its session);
/// a frame, once begun, must arrive whole within `frame_timeout_seconds`.
///
/// With `tls` set, every accepted connection is secured first, in its own thread and
/// within the handshake timeout: a client that fails or never finishes the handshake is
/// dropped (counted in `specdec_tls_handshake_failures_total`) and nothing is decoded
/// from its bytes.
///
/// ```cpp
/// specdec::serve::verify_listener vl(engine, metrics, {.port = 0});
/// vl.start();
/// std::uint16_t port = vl.port();   // the ephemeral port the kernel chose
/// vl.stop();
/// ```
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/hybrid/tls.hpp"
#include "specdec/hybrid/transport.hpp"
#include "specdec/hybrid/wire.hpp"
#include "specdec_serve/auth.hpp"
#include "specdec_serve/metrics.hpp"
#include "specdec_serve/services.hpp"

namespace specdec::serve {

/// Where and how the verify port listens.
struct listener_options {
  std::string host = "127.0.0.1";     ///< address to bind ("0.0.0.0" for every interface)
  std::uint16_t port = 0;             ///< 0 = an ephemeral port (read it back with `port()`)
  std::size_t max_connections = 256;  ///< more are answered `overloaded` and closed
  /// Connections the port queues before the accept loop takes them (capped by
  /// net.core.somaxconn): a burst beyond it waits for the kernel's 1 s SYN retry. >= 1.
  int backlog = 512;
  double handshake_timeout_seconds = 10.0;  ///< from accept to the first frame
  double idle_timeout_seconds = 300.0;      ///< between two frames of an attached connection
  double frame_timeout_seconds = 30.0;      ///< from a frame's first byte to its last
  double write_timeout_seconds = 10.0;
  std::shared_ptr<const hybrid::tls_server> tls{};  ///< set: TLS on every connection
};

class verify_listener {
 public:
  /// Without `keys` (or with an empty ring) the port is open to anyone who reaches it.
  verify_listener(session_service& service, metrics_registry& metrics, listener_options options = {},
                  key_ring* keys = nullptr)
      : service_(service), metrics_(metrics), options_(std::move(options)), keys_(keys) {
    if (options_.backlog < 1)
      throw invalid_argument("listener_options.backlog = " + std::to_string(options_.backlog) + "; expected >= 1");
    metrics_.describe("specdec_verify_bytes_total", "counter",
                      "Bytes on the verify port's sockets (framing included), by direction");
    metrics_.describe("specdec_verify_connections", "gauge", "Open connections on the verify port");
    metrics_.describe("specdec_tls_handshake_failures_total", "counter",
                      "Connections dropped because the TLS handshake failed or timed out, by port");
    metrics_.describe("specdec_rejected_requests_total", "counter",
                      "Requests refused for their API key, by port and reason (unauthorized, rate_limited)");
  }
  verify_listener(const verify_listener&) = delete;
  verify_listener& operator=(const verify_listener&) = delete;
  ~verify_listener() { stop(); }

  /// Binds, listens and starts accepting. Throws `error` naming the address if it cannot.
  void start() {
    if (listen_fd_ >= 0) return;
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST;
    addrinfo* res = nullptr;
    const std::string where = options_.host + ":" + std::to_string(options_.port);
    if (const int rc = ::getaddrinfo(options_.host.c_str(), std::to_string(options_.port).c_str(), &hints, &res); rc != 0)
      throw error("verify_listener: cannot use address " + where + ": " + ::gai_strerror(rc) +
                  "; expected a numeric IPv4 or IPv6 address");
    const int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd >= 0) ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || ::bind(fd, res->ai_addr, res->ai_addrlen) != 0 || ::listen(fd, options_.backlog) != 0) {
      const std::string why = std::strerror(errno);
      if (fd >= 0) ::close(fd);
      ::freeaddrinfo(res);
      throw error("verify_listener: cannot listen on " + where + ": " + why);
    }
    ::freeaddrinfo(res);
    sockaddr_storage addr{};
    socklen_t len = sizeof addr;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port
                                             : reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
    if (::pipe2(wake_, O_CLOEXEC) != 0) {
      ::close(fd);
      throw error(std::string("verify_listener: pipe2 failed: ") + std::strerror(errno));
    }
    listen_fd_ = fd;
    acceptor_ = std::thread([this] { accept_loop(); });
  }

  /// The bound port (after `start`).
  [[nodiscard]] std::uint16_t port() const noexcept { return port_; }

  /// Stops accepting, shuts every connection down and joins their threads. A connection
  /// thread blocked in the engine returns once the engine answers (stop the engine first
  /// to fail what is in flight). Idempotent.
  void stop() {
    if (listen_fd_ < 0) return;
    stopping_ = true;
    const char b = 1;
    [[maybe_unused]] const auto w = ::write(wake_[1], &b, 1);
    if (acceptor_.joinable()) acceptor_.join();
    {
      std::lock_guard lock(mu_);
      for (auto& w : workers_) w.conn->shutdown();
    }
    for (auto& w : workers_) w.thread.join();
    workers_.clear();
    ::close(listen_fd_);
    ::close(wake_[0]);
    ::close(wake_[1]);
    listen_fd_ = -1;
  }

 private:
  struct worker {
    std::shared_ptr<hybrid::tcp_connection> conn;
    std::shared_ptr<std::atomic<bool>> done;
    std::thread thread;
  };

  void accept_loop() {
    while (!stopping_) {
      pollfd p[2] = {{listen_fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
      if (::poll(p, 2, 1000) < 0 && errno != EINTR) break;
      reap();
      if (stopping_ || (p[0].revents & POLLIN) == 0) continue;
      sockaddr_storage addr{};
      socklen_t len = sizeof addr;
      const int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd < 0) continue;
      auto conn = std::make_shared<hybrid::tcp_connection>(fd, describe(addr));
      std::lock_guard lock(mu_);
      if (workers_.size() >= options_.max_connections) {
        if (options_.tls) continue;  // no plaintext answer to a TLS client: just close
        try {
          hybrid::write_frame(*conn, error_message(hybrid::wire::error_code::overloaded,
                                                   "too many connections; decode on the device and retry later"),
                              hybrid::deadline_after(0.1));
        } catch (const std::exception&) {
        }
        continue;
      }
      auto done = std::make_shared<std::atomic<bool>>(false);
      workers_.push_back({conn, done, std::thread([this, conn, done] {
                            serve(*conn);
                            conn->shutdown();  // the peer sees the end now; the descriptor closes when reaped
                            account(*conn);
                            *done = true;
                          })});
      metrics_.set("specdec_verify_connections", "", static_cast<double>(workers_.size()));
    }
  }
  void reap() {
    std::lock_guard lock(mu_);
    for (auto it = workers_.begin(); it != workers_.end();) {
      if (*it->done) {
        it->thread.join();
        it = workers_.erase(it);
      } else {
        ++it;
      }
    }
    metrics_.set("specdec_verify_connections", "", static_cast<double>(workers_.size()));
  }
  void account(const hybrid::tcp_connection& c) {
    metrics_.add("specdec_verify_bytes_total", "direction=\"received\"", static_cast<double>(c.bytes_received()));
    metrics_.add("specdec_verify_bytes_total", "direction=\"sent\"", static_cast<double>(c.bytes_sent()));
  }
  static std::string describe(const sockaddr_storage& a) {
    char host[INET6_ADDRSTRLEN] = "?";
    std::uint16_t port = 0;
    if (a.ss_family == AF_INET) {
      const auto* v4 = reinterpret_cast<const sockaddr_in*>(&a);
      ::inet_ntop(AF_INET, &v4->sin_addr, host, sizeof host);
      port = ntohs(v4->sin_port);
    } else if (a.ss_family == AF_INET6) {
      const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&a);
      ::inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof host);
      port = ntohs(v6->sin6_port);
    }
    return std::string(host) + ":" + std::to_string(port);
  }

  /// One connection's request loop.
  void serve(hybrid::tcp_connection& conn) {
    namespace wire = hybrid::wire;
    if (options_.tls) {
      try {
        conn.secure(options_.tls->accept(conn, hybrid::deadline_after(options_.tls->options().handshake_timeout_seconds)));
      } catch (const hybrid::link_unavailable&) {  // tls_error or link_timeout
        metrics_.add("specdec_tls_handshake_failures_total", "port=\"verify\"", 1.0);
        return;
      }
    }
    const wire::limits lim = service_.wire_limits();
    std::vector<std::uint8_t> buf;
    std::optional<wire::session_id> attached;
    principal who;  // the key the connection acts for, once open/resume authenticated it
    while (!stopping_) {
      hybrid::received_frame f;
      try {
        if (buf.empty()) {  // wait for the next frame's first bytes
          std::uint8_t chunk[4096];
          const std::size_t n = conn.recv_some(chunk, hybrid::deadline_after(attached ? options_.idle_timeout_seconds
                                                                                      : options_.handshake_timeout_seconds));
          buf.insert(buf.end(), chunk, chunk + n);
        }
        f = hybrid::read_frame(conn, buf, lim, hybrid::deadline_after(options_.frame_timeout_seconds));
      } catch (const hybrid::protocol_error& e) {
        send(conn, error_message(wire::error_code::malformed, e.what()));
        return;
      } catch (const hybrid::link_unavailable&) {
        return;  // closed by the client, idle too long, or shut down by stop()
      }
      bool close_after = false;
      const wire::message reply = std::visit(
          [&](auto& m) -> wire::message {
            using T = std::decay_t<decltype(m)>;
            if constexpr (std::is_same_v<T, wire::open_session> || std::is_same_v<T, wire::resume_session>) {
              const std::optional<principal> p = keys_ != nullptr ? keys_->authenticate(m.api_key) : principal{};
              wipe(m.api_key);
              if (!p) {
                close_after = true;
                return reject(wire::error_code::unauthorized, "unauthorized",
                              "a missing or unknown API key; expected one of the server's --api-keys");
              }
              if (keys_ != nullptr && !keys_->admit(*p))
                return reject(wire::error_code::rate_limited, "rate_limited",
                              "the API key's request rate is exhausted; decode on the device and retry later");
              wire::message r;
              if constexpr (std::is_same_v<T, wire::open_session>) r = service_.open(std::move(m), *p);
              else r = service_.resume(m.id, *p);
              if (const auto* o = std::get_if<wire::session_opened>(&r)) {
                attached = o->id;
                who = *p;
              }
              return r;
            } else if constexpr (std::is_same_v<T, wire::verify_request>) {
              if (!attached)
                return error_message(wire::error_code::unknown_session,
                                     "no session on this connection; send open_session or resume_session first",
                                     m.seq);
              if (keys_ != nullptr && !keys_->admit(who))
                return reject(wire::error_code::rate_limited, "rate_limited",
                              "the API key's request rate is exhausted; decode on the device and retry later", m.seq);
              return service_.verify(*attached, who, std::move(m), f.body_hash);
            } else if constexpr (std::is_same_v<T, wire::close_session>) {
              if (attached) service_.close(*attached, who);
              close_after = true;
              return wire::close_session{};
            } else {
              close_after = true;
              return error_message(wire::error_code::invalid_request,
                                   std::string("a client sends open_session, resume_session, verify_request or "
                                               "close_session, not ") +
                                       wire::name_of(f.message));
            }
          },
          f.message);
      if (!std::holds_alternative<wire::close_session>(reply) && !send(conn, reply)) return;
      if (close_after) return;
    }
  }
  hybrid::wire::message reject(hybrid::wire::error_code code, const char* reason, const char* text,
                               std::uint64_t seq = 0) {
    metrics_.add("specdec_rejected_requests_total", std::string("port=\"verify\",reason=\"") + reason + "\"");
    return error_message(code, text, seq);
  }
  bool send(hybrid::tcp_connection& conn, const hybrid::wire::message& m) {
    try {
      hybrid::write_frame(conn, m, hybrid::deadline_after(options_.write_timeout_seconds));
      return true;
    } catch (const hybrid::link_unavailable&) {
      return false;
    }
  }

  session_service& service_;
  metrics_registry& metrics_;
  listener_options options_;
  key_ring* keys_;
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  std::uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread acceptor_;
  std::mutex mu_;
  std::list<worker> workers_;
};

}  // namespace specdec::serve
