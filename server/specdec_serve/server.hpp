#pragma once
/// \file specdec_serve/server.hpp
/// `specdec-serve` as a class: the engine (one scheduler thread over the batched model),
/// the HTTP API on one port and the verify protocol on another, started and stopped
/// together. The program (server/main.cpp) and the tests (in process, on ephemeral
/// loopback ports) both use it.
///
/// API keys (auth.hpp): with `api_keys` non-empty both ports require one of them and
/// enforce its limits; without, both are open (for loopback development). Slow clients:
/// the HTTP port has read and write timeouts per operation, a keep-alive timeout and the
/// watchdog (http_watchdog.hpp) bounding each whole request; the verify port has its
/// handshake, idle and frame timeouts (verify_listener.hpp).
///
/// Graceful stop: new sessions, verify requests and completions are refused (503 /
/// `shutting_down`, and `/health` turns 503 "draining"), in-flight work gets
/// `drain_seconds` to finish, then whatever remains fails cleanly (streams end with an
/// error event and `[DONE]`, verify requests get `shutting_down`) and both ports close.
///
/// Transport security: with `tls` (a certificate and key) both ports speak only TLS, and
/// with `tls.client_ca_file` they require client certificates (mutual TLS). Without TLS
/// the server binds only loopback addresses unless `allow_plaintext` is set (e.g. behind
/// a TLS-terminating proxy): the constructor refuses anything else.
///
/// ```cpp
/// specdec::cpu::batched_transformer model("models/kjv-big.bin", {.threads = 2});
/// specdec::serve::server srv(model, {}, {.http_port = 0, .verify_port = 0});
/// srv.start();
/// std::uint16_t http = srv.http_port(), verify = srv.verify_port();
/// srv.stop();
/// ```
// The CPU backend before httplib.h: glibc's resolv.h, which httplib includes, defines a
// macro _res, a parameter name in Eigen's headers.
#include "specdec/backend/cpu/batched_transformer.hpp"

#include <httplib.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "specdec/batch.hpp"
#include "specdec/error.hpp"
#include "specdec/hybrid/tls.hpp"
#include "specdec_serve/auth.hpp"
#include "specdec_serve/engine.hpp"
#include "specdec_serve/http_watchdog.hpp"
#include "specdec_serve/http_api.hpp"
#include "specdec_serve/metrics.hpp"
#include "specdec_serve/verify_listener.hpp"

namespace specdec::serve {

/// Everything `specdec-serve` can be told.
struct serve_options {
  std::string host = "127.0.0.1";  ///< address both ports bind
  std::uint16_t http_port = 8080;  ///< 0 = ephemeral
  std::uint16_t verify_port = 0;   ///< 0 = ephemeral (announced in /health as "verify_port")
  std::size_t http_threads = 16;   ///< HTTP worker threads (a streaming completion holds one)
  /// Connections the HTTP port queues before its accept loop takes them (the kernel caps
  /// it at net.core.somaxconn). >= 1.
  int http_backlog = 512;
  double drain_seconds = 10.0;     ///< how long a graceful stop waits for in-flight work
  std::vector<api_key> api_keys{};  ///< empty = no authentication (see auth.hpp)
  double http_io_timeout_seconds = 10.0;    ///< one read or write on an HTTP connection
  double http_keep_alive_seconds = 5.0;     ///< an idle kept-alive HTTP connection
  watchdog_options watchdog{};              ///< a whole HTTP request (headers and body)
  engine_options engine{};
  http_options http{};
  listener_options listener{};     ///< host and port are taken from above
  /// TLS on both ports when `tls.cert_file` is set (see the file comment).
  hybrid::tls_server_options tls{};
  /// Serve plain HTTP and plain verify traffic on a non-loopback `host`.
  bool allow_plaintext = false;
};

template <batched_model B>
class server {
 public:
  server(B& model, text_codec codec, serve_options options);
  server(const server&) = delete;
  server& operator=(const server&) = delete;
  ~server();

  /// Calibrates the engine, binds both ports (throws `error` naming the address if one
  /// cannot be bound) and starts serving.
  void start();
  /// The graceful stop of the file comment. Idempotent.
  void stop();

  [[nodiscard]] std::uint16_t http_port() const noexcept { return http_port_; }
  [[nodiscard]] std::uint16_t verify_port() const noexcept { return listener_.port(); }
  [[nodiscard]] bool running() const noexcept { return running_; }
  [[nodiscard]] metrics_registry& metrics() noexcept { return metrics_; }
  [[nodiscard]] engine<B>& core() noexcept { return engine_; }
  /// Whether API keys are required.
  [[nodiscard]] bool authenticating() const noexcept { return keys_.enabled(); }
  /// HTTP connections the watchdog shut down for missing their deadline.
  [[nodiscard]] std::size_t connections_cut() const noexcept { return watchdog_.cut(); }

 private:
  listener_options with_address(listener_options l) const {
    l.host = options_.host;
    l.port = options_.verify_port;
    l.tls = tls_;
    return l;
  }
  /// The TLS configuration (loaded and checked), or null for plain TCP, which only a
  /// loopback host or `allow_plaintext` permits.
  static std::shared_ptr<const hybrid::tls_server> secure_setup(const serve_options& o) {
    if (!o.tls.cert_file.empty() || !o.tls.key_file.empty() || !o.tls.client_ca_file.empty() ||
        !o.tls.client_crl_file.empty())
      return std::make_shared<const hybrid::tls_server>(o.tls);
    if (!o.allow_plaintext && !hybrid::is_loopback_host(o.host))
      throw invalid_argument("specdec-serve: host = '" + o.host +
                             "' is not a loopback address and TLS is off; expected a certificate and key "
                             "(--tls-cert, --tls-key), or --allow-plaintext to serve plain HTTP beyond loopback");
    return nullptr;
  }
  static std::unique_ptr<httplib::Server> http_server(const std::shared_ptr<const hybrid::tls_server>& tls) {
    if (!tls) return std::make_unique<httplib::Server>();
    return std::make_unique<httplib::SSLServer>([tls](SSL_CTX& ctx) {
      tls->configure(ctx);  // the files loaded once already (tls_server's constructor): cannot fail now
      return true;
    });
  }

  serve_options options_;
  std::shared_ptr<const hybrid::tls_server> tls_;
  key_ring keys_;
  http_watchdog watchdog_;
  metrics_registry metrics_;
  engine<B> engine_;
  http_api http_api_;
  verify_listener listener_;
  std::unique_ptr<httplib::Server> http_;  // an httplib::SSLServer with TLS
  std::thread http_thread_;
  std::uint16_t http_port_ = 0;
  int http_socket_ = -1;  // the HTTP port's listening socket (httplib owns it)
  std::atomic<bool> running_{false};
};


// The members that build, start and stop everything are defined out of the class: with
// the explicit instantiation declaration below, a translation unit that runs a server of
// the CPU backend compiles the engine, the HTTP API and the listener only where it calls
// them itself; the one definition is server/server.cpp's (the CMake target
// specdec_serve_core).
template <batched_model B>
server<B>::server(B& model, text_codec codec, serve_options options)
    : options_(std::move(options)),
      tls_(secure_setup(options_)),
      keys_(std::move(options_.api_keys)),
      watchdog_(options_.watchdog),
      engine_(model, options_.engine, metrics_),
      http_api_(engine_, metrics_, std::move(codec), options_.http,
                [this](json& h) {
                  h["verify_port"] = listener_.port();
                  h["step_time_curve"] = engine_.cost_points();  // [[rows, seconds], ...]
                  // The rule a simulation of this server models (hybrid::run_ahead_rule).
                  if (const speculation_options& o = options_.engine.speculation; o.device_gain && o.anticipate)
                    h["run_ahead"] = {
                        {"depth", o.run_ahead}, {"device_gain", *o.device_gain}, {"reply", o.run_ahead_reply}};
                },
                &keys_),
      listener_(engine_, metrics_, with_address(options_.listener), &keys_),
      http_(http_server(tls_)) {}

template <batched_model B>
server<B>::~server() {
  stop();
}

template <batched_model B>
void server<B>::start() {
  if (options_.http_backlog < 1)
    throw invalid_argument("serve_options.http_backlog = " + std::to_string(options_.http_backlog) + "; expected >= 1");
  engine_.start();
  listener_.start();
  http_->new_task_queue = [n = options_.http_threads] { return new httplib::ThreadPool(n); };
  // Debian's httplib (a compiled library) listens with a backlog of 5: a burst of more
  // devices connecting at once than that, while the accept loop waits for a CPU the
  // forward keeps busy, overflows the queue, and each dropped SYN is retried only after
  // the kernel's 1 s timeout. The socket is remembered here and listened on again with
  // the wanted backlog once bound (on Linux a second listen() changes only the backlog).
  // SO_REUSEADDR, not httplib's default SO_REUSEPORT: a second server on a port in use
  // must fail to bind, not quietly take half of its connections.
  http_->set_socket_options([this](socket_t fd) {
    http_socket_ = fd;
    const int yes = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  const auto io = std::chrono::duration<double>(options_.http_io_timeout_seconds);
  http_->set_read_timeout(io);
  http_->set_write_timeout(io);
  http_->set_keep_alive_timeout(static_cast<time_t>(std::max(1.0, std::ceil(options_.http_keep_alive_seconds))));
  http_api_.install(*http_, &watchdog_);
  int port = options_.http_port == 0 ? http_->bind_to_any_port(options_.host)
                                     : (http_->bind_to_port(options_.host, options_.http_port) ? options_.http_port : -1);
  if (port <= 0) {
    listener_.stop();
    engine_.stop();
    throw error("specdec-serve: cannot bind HTTP on " + options_.host + ":" + std::to_string(options_.http_port));
  }
  http_port_ = static_cast<std::uint16_t>(port);
  if (::listen(http_socket_, options_.http_backlog) != 0) {
    listener_.stop();
    engine_.stop();
    throw error("specdec-serve: cannot listen on " + options_.host + ":" + std::to_string(http_port_) +
                " with a backlog of " + std::to_string(options_.http_backlog));
  }
  watchdog_.start(http_port_);
  // bind_to_*port already listens: connections queue until the accept loop runs.
  http_thread_ = std::thread([this] { http_->listen_after_bind(); });
  // httplib's stop() does nothing until the accept loop has started, so a SIGTERM right
  // after start() could leave the loop running and stop() joining it forever: start()
  // returns only once the loop runs.
  const auto until = clock::now() + std::chrono::seconds(10);
  while (!http_->is_running() && clock::now() < until) std::this_thread::sleep_for(std::chrono::microseconds(200));
  if (!http_->is_running()) {
    http_->stop();
    if (http_thread_.joinable()) http_thread_.join();
    listener_.stop();
    engine_.stop();
    throw error("specdec-serve: the HTTP accept loop on " + options_.host + ":" + std::to_string(http_port_) +
                " did not start within 10 s");
  }
  running_ = true;
}

template <batched_model B>
void server<B>::stop() {
  if (!running_.exchange(false)) return;
  engine_.begin_drain();
  engine_.wait_idle(clock::now() + std::chrono::duration_cast<clock::duration>(
                                       std::chrono::duration<double>(options_.drain_seconds)));
  engine_.stop();  // every stream now has its last event queued
  listener_.stop();
  // Let the HTTP workers write those last events before the server closes the sockets
  // (httplib abandons a chunked response that is still being written when stopped).
  const auto until = clock::now() + std::chrono::seconds(2);
  while (http_api_.responses_in_flight() > 0 && clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  http_->stop();
  if (http_thread_.joinable()) http_thread_.join();
  watchdog_.stop();
}

#if !defined(SPECDEC_SERVE_CORE_SOURCE)
extern template class server<cpu::batched_transformer>;
#endif

}  // namespace specdec::serve
