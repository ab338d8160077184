#pragma once
// Shared by the tests of the network clients and of specdec-serve (test_serve.cpp,
// test_verify_client.cpp, test_completion_client.cpp): a bare loopback socket for
// scripted peers, and (with specdec_serve/server.hpp included first) server options for
// in-process runs on ephemeral loopback ports and a raw client of the verify port.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <utility>
#include <variant>
#include <vector>

namespace specdec::test_support {

/// A TCP socket bound to 127.0.0.1 on an ephemeral port, listening when `listen` is set:
/// (descriptor, port). Closing it without listening leaves a port nothing answers on.
inline std::pair<int, std::uint16_t> loopback_socket(bool listen = true) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  if (listen) ::listen(fd, 8);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  return {fd, ntohs(a.sin_port)};
}

#ifdef SPECDEC_SERVE_TESTS
/// A client of the verify port speaking raw frames, for scripted protocol tests.
struct raw_connection {
  hybrid::tcp_connection conn;
  std::vector<std::uint8_t> buf;
  explicit raw_connection(std::uint16_t port)
      : conn(hybrid::tcp_connection::connect("127.0.0.1", port, 2.0, hybrid::privacy::may_leave_device)) {}
  hybrid::wire::message ask(const hybrid::wire::message& m) {
    hybrid::write_frame(conn, m, hybrid::deadline_after(5.0));
    return receive();
  }
  hybrid::wire::message receive() { return hybrid::read_frame(conn, buf, {}, hybrid::deadline_after(5.0)).message; }
};

/// The error code of an `error_reply`, or 0 for any other message.
inline hybrid::wire::error_code error_of(const hybrid::wire::message& m) {
  const auto* e = std::get_if<hybrid::wire::error_reply>(&m);
  return e != nullptr ? e->code : hybrid::wire::error_code{};
}

/// Both ports ephemeral, few threads, a fixed announcement (4 drafts) and no startup
/// calibration, so tests are fast and deterministic.
inline serve::serve_options serve_options() {
  serve::serve_options o;
  o.http_port = 0;
  o.verify_port = 0;
  o.http_threads = 6;
  o.drain_seconds = 5.0;
  o.engine.speculation.fixed = 4;
  o.engine.speculation.calibrate = false;
  return o;
}
#endif

}  // namespace specdec::test_support
