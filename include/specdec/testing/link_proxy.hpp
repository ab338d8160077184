#pragma once
/// \file testing/link_proxy.hpp
/// A TCP proxy that turns loopback into a real network link for tests and benchmarks
/// (these machines have no `netem`): it listens on 127.0.0.1 (an ephemeral port), opens a
/// connection to an upstream server for every client, and forwards bytes both ways,
/// holding each chunk back by a one-way delay plus jitter, at a bandwidth limit, through
/// stalls, and cutting connections on demand. RTTs of 0, 10, 30, 60, 150 ms are then paid
/// for real by every round trip through it.
///
/// Model of one direction: a chunk read at time t enters a link that serialises it at
/// `bytes_per_second` (after the chunks before it), then arrives `one_way_delay_seconds`
/// plus a uniform draw from [0, `jitter_seconds`) later; arrivals keep the order of the
/// bytes (a TCP stream cannot reorder). During a `stall` nothing is delivered (bytes wait,
/// as behind a lossy stretch with retransmits); `disconnect_all` resets every open
/// connection. The TCP handshake itself is not delayed (the client connects to the proxy
/// locally). Delays are lower bounds up to scheduling: a loaded machine adds to them.
///
/// ```cpp
/// specdec::testing::link_proxy proxy("127.0.0.1", server_port, {.one_way_delay_seconds = 0.015});
/// specdec::hybrid::verify_client c("127.0.0.1", proxy.port());  // every round trip pays >= 30 ms
/// proxy.disconnect_all();                                       // a fault mid-generation
/// ```
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <ctime>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/validation.hpp"

namespace specdec::testing {

/// How a `link_proxy` shapes each direction of every connection.
///
/// ```cpp
/// specdec::testing::link_proxy_options o{.one_way_delay_seconds = 0.03, .jitter_seconds = 0.002,
///                                        .bytes_per_second = 1e6};
/// o.validate();
/// ```
struct link_proxy_options {
  double one_way_delay_seconds = 0.0;  ///< >= 0, per direction: RTT = 2x this
  double jitter_seconds = 0.0;         ///< >= 0, a uniform extra delay per chunk, order kept
  double bytes_per_second = 0.0;       ///< >= 0, per direction; 0 = unlimited
  std::uint64_t seed = 0;              ///< seeds the jitter draws

  void validate() const {
    specdec::detail::check_range("link_proxy_options.one_way_delay_seconds", one_way_delay_seconds, 0.0, 60.0,
                                 "in [0, 60]");
    specdec::detail::check_range("link_proxy_options.jitter_seconds", jitter_seconds, 0.0, 60.0, "in [0, 60]");
    specdec::detail::check_non_negative("link_proxy_options.bytes_per_second", bytes_per_second);
  }
};

/// The proxy of the file comment. Starts listening in its constructor and forwards until
/// it is destroyed (or `stop` is called). Thread-safe: shaping may change while it runs.
///
/// ```cpp
/// specdec::testing::link_proxy p("127.0.0.1", upstream_port);
/// p.set_options({.one_way_delay_seconds = 0.075});  // RTT 150 ms from now on
/// p.stall(0.5);                                     // half a second of silence
/// ```
class link_proxy {
 public:
  /// Forwards every connection made to `port()` to `upstream_host:upstream_port` (a
  /// numeric IPv4 address). Throws `invalid_argument` for bad options or an address that
  /// does not parse, `error` if it cannot listen.
  link_proxy(std::string upstream_host, std::uint16_t upstream_port, link_proxy_options o = {})
      : state_(std::make_shared<shared>()) {
    o.validate();
    state_->options = o;
    state_->rng.seed(o.seed);
    state_->upstream.sin_family = AF_INET;
    state_->upstream.sin_port = htons(upstream_port);
    if (::inet_pton(AF_INET, upstream_host.c_str(), &state_->upstream.sin_addr) != 1)
      throw invalid_argument("link_proxy: upstream host '" + upstream_host + "'; expected a numeric IPv4 address");
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (listen_fd_ < 0 || ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::listen(listen_fd_, 64) != 0 || ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      if (listen_fd_ >= 0) ::close(listen_fd_);
      throw error("link_proxy: cannot listen on 127.0.0.1: " + std::string(std::strerror(errno)));
    }
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  link_proxy(const link_proxy&) = delete;
  link_proxy& operator=(const link_proxy&) = delete;
  ~link_proxy() { stop(); }

  /// Where clients connect (127.0.0.1).
  [[nodiscard]] std::uint16_t port() const noexcept { return port_; }

  /// Changes the shaping of chunks read from now on.
  void set_options(const link_proxy_options& o) {
    o.validate();
    std::lock_guard lock(state_->mu);
    state_->options = o;
  }
  [[nodiscard]] link_proxy_options options() const {
    std::lock_guard lock(state_->mu);
    return state_->options;
  }
  /// Delivers nothing for `seconds` from now (bytes queue up and arrive afterwards).
  void stall(double seconds) {
    specdec::detail::check_range("link_proxy::stall seconds", seconds, 0.0, 3600.0, "in [0, 3600]");
    std::lock_guard lock(state_->mu);
    state_->stall_until = std::max(state_->stall_until, clock::now() + to_duration(seconds));
  }
  /// Resets every connection open now (both sides see it closed); new ones are accepted.
  void disconnect_all() noexcept {
    state_->cut_generation.fetch_add(1);
    state_->wake_all();
  }

  /// Connections accepted so far, and bytes delivered each way.
  [[nodiscard]] std::size_t connections() const noexcept { return state_->connections.load(); }
  [[nodiscard]] std::uint64_t bytes_up() const noexcept { return state_->bytes_up.load(); }
  [[nodiscard]] std::uint64_t bytes_down() const noexcept { return state_->bytes_down.load(); }

  /// Stops accepting and closes every connection; idempotent.
  void stop() noexcept {
    if (stopping_.exchange(true)) return;
    state_->stopping.store(true);
    state_->wake_all();
    if (acceptor_.joinable()) acceptor_.join();
    if (listen_fd_ >= 0) ::close(listen_fd_);
    listen_fd_ = -1;
    std::unique_lock lock(state_->mu);
    state_->idle.wait(lock, [&] { return state_->active == 0; });
  }

 private:
  using clock = std::chrono::steady_clock;
  static clock::duration to_duration(double s) {
    return std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(s));
  }

  struct shared {
    mutable std::mutex mu;
    link_proxy_options options;
    std::mt19937_64 rng;
    clock::time_point stall_until{};
    sockaddr_in upstream{};
    std::atomic<bool> stopping{false};
    std::atomic<std::uint64_t> cut_generation{0};
    std::atomic<std::size_t> connections{0};
    std::atomic<std::uint64_t> bytes_up{0}, bytes_down{0};
    std::size_t active = 0;  ///< pump threads running (under mu)
    std::condition_variable idle;
    std::vector<int> wakers;  ///< write ends of the pumps' wake-up pipes (under mu)

    /// Wakes every pump from its poll (a cut or a stop); a full pipe is awake anyway.
    void wake_all() noexcept {
      std::lock_guard lock(mu);
      for (const int fd : wakers) {
        const char b = 1;
        [[maybe_unused]] const ssize_t n = ::write(fd, &b, 1);
      }
    }
  };

  /// One direction of a connection: chunks in flight with their arrival times.
  struct lane {
    int from = -1, to = -1;
    std::deque<std::pair<clock::time_point, std::vector<std::uint8_t>>> queue;
    clock::time_point wire_free{};  ///< when the serialiser finishes the previous chunk
    clock::time_point last_arrival{};
    bool eof = false;      ///< `from` closed its sending side
    bool shut = false;     ///< `to`'s sending side shut after the queue drained
    std::atomic<std::uint64_t>* counter = nullptr;
  };

  void accept_loop() {
    while (!state_->stopping.load()) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 5) <= 0) continue;
      const int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (client < 0) continue;
      state_->connections.fetch_add(1);
      {
        std::lock_guard lock(state_->mu);
        ++state_->active;
      }
      // Detached: a finished connection leaves nothing behind; stop() waits for the count.
      std::thread([s = state_, client] {
        pump(s, client);
        std::lock_guard lock(s->mu);
        if (--s->active == 0) s->idle.notify_all();
      }).detach();
    }
  }

  static void set_socket_options(int fd) {
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    const int flags = ::fcntl(fd, F_GETFL, 0);
    if (flags >= 0) ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  }

  /// Forwards one connection until both directions are closed, a side fails, the proxy
  /// stops or `disconnect_all` is called.
  static void pump(std::shared_ptr<shared> s, int client) {
    const std::uint64_t generation = s->cut_generation.load();
    const int server = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (server < 0 || ::connect(server, reinterpret_cast<const sockaddr*>(&s->upstream), sizeof s->upstream) != 0) {
      if (server >= 0) ::close(server);
      ::close(client);  // the upstream refused: so does the proxy
      return;
    }
    set_socket_options(client);
    set_socket_options(server);
    // Cuts and stops wake the poll through this pipe, so an idle connection sleeps in poll
    // until bytes arrive, a chunk falls due, or the proxy needs it.
    int wake[2];
    if (::pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0) {
      ::close(server);
      ::close(client);
      return;
    }
    {
      std::lock_guard lock(s->mu);
      s->wakers.push_back(wake[1]);
    }
    lane lanes[2];
    lanes[0].from = client, lanes[0].to = server, lanes[0].counter = &s->bytes_up;
    lanes[1].from = server, lanes[1].to = client, lanes[1].counter = &s->bytes_down;
    bool failed = false;
    while (!failed && !s->stopping.load() && s->cut_generation.load() == generation &&
           !(lanes[0].shut && lanes[1].shut)) {
      const auto now = clock::now();
      clock::time_point stall_until;
      {
        std::lock_guard lock(s->mu);
        stall_until = s->stall_until;
      }
      // Deliver what is due.
      std::optional<clock::time_point> due;  // the next time something falls due
      pollfd p[5];
      int n = 0;
      p[n++] = pollfd{wake[0], POLLIN, 0};
      for (lane& l : lanes) {
        bool full = false;  // the receiver's buffer is full: POLLOUT wakes us
        while (!l.queue.empty() && l.queue.front().first <= now && now >= stall_until) {
          auto& chunk = l.queue.front().second;
          const ssize_t w = ::send(l.to, chunk.data(), chunk.size(), MSG_NOSIGNAL);
          if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            full = true;
            break;
          }
          if (w <= 0) {
            failed = true;
            break;
          }
          l.counter->fetch_add(static_cast<std::uint64_t>(w));
          chunk.erase(chunk.begin(), chunk.begin() + w);
          if (chunk.empty()) l.queue.pop_front();
        }
        if (!l.queue.empty() && !full) {
          const auto t = std::max(l.queue.front().first, stall_until);
          due = due ? std::min(*due, t) : t;
        }
        if (l.eof && l.queue.empty() && !l.shut) {
          ::shutdown(l.to, SHUT_WR);
          l.shut = true;
        }
        if (!l.eof) p[n++] = pollfd{l.from, POLLIN, 0};
        if (full) p[n++] = pollfd{l.to, POLLOUT, 0};
      }
      if (failed) break;
      // Sleep until the next chunk is due to the nanosecond (ppoll, not poll's whole
      // milliseconds: rounding up would add up to 1 ms to every delayed hop).
      timespec wait{};
      const timespec* timeout = nullptr;
      if (due) {
        const auto left = std::max<std::int64_t>(
            0, std::chrono::duration_cast<std::chrono::nanoseconds>(*due - clock::now()).count());
        wait.tv_sec = static_cast<time_t>(std::min<std::int64_t>(left / 1'000'000'000, 1 << 30));
        wait.tv_nsec = static_cast<long>(left % 1'000'000'000);
        timeout = &wait;
      }
      if (::ppoll(p, static_cast<nfds_t>(n), timeout, nullptr) < 0 && errno != EINTR) break;
      // Read what arrived and schedule it.
      for (lane& l : lanes) {
        if (l.eof) continue;
        std::uint8_t buf[65536];
        const ssize_t r = ::recv(l.from, buf, sizeof buf, 0);
        if (r == 0) {
          l.eof = true;
        } else if (r > 0) {
          l.queue.emplace_back(arrival(*s, l, static_cast<std::size_t>(r)),
                               std::vector<std::uint8_t>(buf, buf + r));
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          failed = true;
        }
      }
    }
    // A cut or a failure resets both sides (SO_LINGER 0: RST, not an orderly close).
    if (failed || s->cut_generation.load() != generation || s->stopping.load()) {
      linger hard{1, 0};
      ::setsockopt(client, SOL_SOCKET, SO_LINGER, &hard, sizeof hard);
      ::setsockopt(server, SOL_SOCKET, SO_LINGER, &hard, sizeof hard);
    }
    ::close(client);
    ::close(server);
    {
      std::lock_guard lock(s->mu);
      std::erase(s->wakers, wake[1]);
    }
    ::close(wake[0]);
    ::close(wake[1]);
  }

  /// When a chunk of `bytes` read now arrives at the far side (see the file comment).
  static clock::time_point arrival(shared& s, lane& l, std::size_t bytes) {
    std::lock_guard lock(s.mu);
    const link_proxy_options& o = s.options;
    const auto now = clock::now();
    auto sent = now;
    if (o.bytes_per_second > 0.0) {
      sent = std::max(now, l.wire_free) + to_duration(static_cast<double>(bytes) / o.bytes_per_second);
      l.wire_free = sent;
    }
    double extra = o.one_way_delay_seconds;
    if (o.jitter_seconds > 0.0)
      extra += o.jitter_seconds * std::generate_canonical<double, 53>(s.rng);
    l.last_arrival = std::max(l.last_arrival, sent + to_duration(extra));
    return l.last_arrival;
  }

  std::shared_ptr<shared> state_;
  int listen_fd_ = -1;
  std::uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread acceptor_;
};

}  // namespace specdec::testing
