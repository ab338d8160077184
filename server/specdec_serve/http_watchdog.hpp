#pragma once
/// \file specdec_serve/http_watchdog.hpp
/// A deadline on every HTTP connection of `specdec-serve`, so a slow or silent client
/// cannot hold one of the fixed HTTP worker threads. cpp-httplib's own timeouts bound
/// each read and write, not a whole request: a client sending one header byte every few
/// seconds would keep its worker forever. The watchdog gives each connection
/// `request_timeout_seconds` from its accept (and again from each response it received)
/// to deliver a complete request, headers and body; a connection past its deadline is shut
/// down, which ends the worker's blocking read. While a handler runs (the request was
/// read; a completion may stream for minutes) there is no deadline.
///
/// cpp-httplib (Debian's 0.11 build) does not hand accepted sockets to user code, so the
/// watchdog finds them itself: every `scan_seconds` it lists the process's sockets
/// (`/proc/self/fd`) whose local port is the HTTP port, and matches them to requests by
/// the peer address, which the handlers report through `begin` (the request was read) and
/// `end` (its response was written). A descriptor is shut down only while it is still a
/// connection to the HTTP port from the same peer, checked in the same scan; the scan
/// touches descriptors only through `getsockname`, `getpeername` and `shutdown`.
///
/// ```cpp
/// specdec::serve::http_watchdog dog({.request_timeout_seconds = 30});
/// http.set_post_routing_handler([&](const httplib::Request& r, httplib::Response&) { dog.begin(r); });
/// http.set_logger([&](const httplib::Request& r, const httplib::Response&) { dog.end(r); });
/// dog.start(port);
/// ```
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include "specdec/error.hpp"
#include "specdec_serve/services.hpp"

namespace specdec::serve {

/// The watchdog's deadlines.
struct watchdog_options {
  double request_timeout_seconds = 30.0;  ///< from accept (or the last response) to a whole request
  double scan_seconds = 0.25;             ///< how often the sockets are examined

  void validate() const {
    if (!(request_timeout_seconds > 0.0) || !(scan_seconds > 0.0))
      throw invalid_argument("watchdog_options: request_timeout_seconds = " + std::to_string(request_timeout_seconds) +
                             ", scan_seconds = " + std::to_string(scan_seconds) + "; expected both > 0");
  }
};

class http_watchdog {
 public:
  explicit http_watchdog(watchdog_options options = {}) : options_(options) { options_.validate(); }
  http_watchdog(const http_watchdog&) = delete;
  http_watchdog& operator=(const http_watchdog&) = delete;
  ~http_watchdog() { stop(); }

  /// Starts watching the connections accepted on local `port`.
  void start(std::uint16_t port) {
    if (thread_.joinable()) return;
    port_ = port;
    stop_ = false;
    thread_ = std::thread([this] { loop(); });
  }
  /// Idempotent.
  void stop() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  /// The request was read whole: no deadline while it is handled.
  void begin(const httplib::Request& r) {
    std::lock_guard lock(mu_);
    conns_[peer_of(r)].busy = true;
  }
  /// Its response was written: the connection has `request_timeout_seconds` for the next.
  void end(const httplib::Request& r) {
    std::lock_guard lock(mu_);
    conn& c = conns_[peer_of(r)];
    c.busy = false;
    c.deadline = clock::now() + timeout();
  }
  /// Connections shut down for missing their deadline, so far.
  [[nodiscard]] std::size_t cut() const noexcept { return cut_; }

 private:
  struct conn {
    clock::time_point deadline{};
    bool busy = false;
    bool seen = false;  ///< found in the current scan
  };

  [[nodiscard]] clock::duration timeout() const {
    return std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(options_.request_timeout_seconds));
  }
  static std::string peer_of(const httplib::Request& r) { return r.remote_addr + "|" + std::to_string(r.remote_port); }

  /// The peer ("addr|port") of `fd` if it is a connected TCP socket on local port `port_`.
  [[nodiscard]] std::optional<std::string> peer_of(int fd) const {
    sockaddr_storage local{}, peer{};  // getsockname fails (ENOTSOCK) on files and pipes
    socklen_t ll = sizeof local, pl = sizeof peer;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll) != 0 || port_of(local) != port_) return std::nullopt;
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) != 0) return std::nullopt;  // the listener
    char host[INET6_ADDRSTRLEN] = "";
    const void* addr = peer.ss_family == AF_INET6 ? static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(&peer)->sin6_addr)
                                                  : static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(&peer)->sin_addr);
    if (::inet_ntop(peer.ss_family, addr, host, sizeof host) == nullptr) return std::nullopt;
    return std::string(host) + "|" + std::to_string(port_of(peer));
  }
  static int port_of(const sockaddr_storage& a) {
    if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&a)->sin_port);
    if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6*>(&a)->sin6_port);
    return -1;
  }

  void loop() {
    const auto every = std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(options_.scan_seconds));
    std::unique_lock lock(mu_);
    while (!cv_.wait_for(lock, every, [&] { return stop_; })) {
      lock.unlock();
      scan();
      lock.lock();
    }
  }

  void scan() {
    DIR* dir = ::opendir("/proc/self/fd");
    if (dir == nullptr) return;
    const int own = ::dirfd(dir);
    const auto now = clock::now();
    std::lock_guard lock(mu_);
    for (auto& [peer, c] : conns_) c.seen = false;
    while (const dirent* e = ::readdir(dir)) {
      char* end = nullptr;
      const long fd = std::strtol(e->d_name, &end, 10);
      if (end == e->d_name || *end != '\0' || fd == own) continue;
      const std::optional<std::string> peer = peer_of(static_cast<int>(fd));
      if (!peer) continue;
      auto [it, fresh] = conns_.try_emplace(*peer);
      if (fresh) it->second.deadline = now + timeout();  // first seen: just accepted
      it->second.seen = true;
      if (!it->second.busy && now > it->second.deadline) {
        ::shutdown(static_cast<int>(fd), SHUT_RDWR);  // the worker's read fails; httplib closes the socket
        it->second.deadline = clock::time_point::max();
        ++cut_;
      }
    }
    ::closedir(dir);
    for (auto it = conns_.begin(); it != conns_.end();)  // closed connections
      it = it->second.seen || it->second.busy ? std::next(it) : conns_.erase(it);
  }

  watchdog_options options_;
  std::uint16_t port_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;                ///< guarded by mu_
  std::map<std::string, conn> conns_;  ///< by peer; guarded by mu_
  std::atomic<std::size_t> cut_{0};
  std::thread thread_;
};

}  // namespace specdec::serve
