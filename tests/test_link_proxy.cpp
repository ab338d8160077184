// Tests for include/specdec/testing/link_proxy.hpp: the delay, bandwidth limit, stall and
// disconnect it injects are paid for real by bytes crossing it (asserted as lower bounds,
// which load cannot break), and greedy split decoding through it, with connections cut
// mid-generation, still equals cloud-only greedy decoding through it.
#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "specdec/backend/cpu/batched_transformer.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/decoder.hpp"
#include "specdec/hybrid/completion_client.hpp"
#include "specdec/hybrid/remote_verifier.hpp"
#include "specdec/hybrid/transport.hpp"
#include "specdec/testing/link_proxy.hpp"
#include "specdec_serve/server.hpp"
#define SPECDEC_SERVE_TESTS
#include "serve_test_support.hpp"

namespace {
using namespace specdec;
using specdec::testing::link_proxy;
using clock_type = std::chrono::steady_clock;

const std::string models = SPECDEC_MODELS_DIR;

/// An upstream that echoes every byte back, on an ephemeral loopback port.
struct echo_server {
  int fd;
  std::uint16_t port;
  std::atomic<bool> stop{false};
  std::thread thread;
  echo_server() {
    std::tie(fd, port) = test_support::loopback_socket();
    thread = std::thread([this] {
      std::vector<std::thread> conns;
      while (!stop.load()) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 10) <= 0) continue;
        const int c = ::accept(fd, nullptr, nullptr);
        if (c < 0) continue;
        conns.emplace_back([c] {
          std::array<char, 65536> buf;
          for (;;) {
            const ssize_t n = ::recv(c, buf.data(), buf.size(), 0);
            if (n <= 0) break;
            for (ssize_t off = 0; off < n;) {
              const ssize_t w = ::send(c, buf.data() + off, static_cast<std::size_t>(n - off), MSG_NOSIGNAL);
              if (w <= 0) break;
              off += w;
            }
          }
          ::close(c);
        });
      }
      for (auto& t : conns) t.join();
    });
  }
  ~echo_server() {
    stop = true;
    thread.join();
    ::close(fd);
  }
};

/// Sends `bytes` bytes through `c` and waits until all have come back; the seconds it took.
double echo_round_trip(hybrid::tcp_connection& c, std::size_t bytes) {
  const std::vector<std::uint8_t> out(bytes, 0x5a);
  std::vector<std::uint8_t> in(65536);
  const auto t0 = clock_type::now();
  c.send_all(out, hybrid::deadline_after(10.0));
  for (std::size_t got = 0; got < bytes;) got += c.recv_some(in, hybrid::deadline_after(10.0));
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

TEST(link_proxy, round_trips_pay_twice_the_one_way_delay) {
  echo_server echo;
  for (const double one_way : {0.0, 0.005, 0.015}) {
    link_proxy proxy("127.0.0.1", echo.port, {.one_way_delay_seconds = one_way});
    auto c = hybrid::tcp_connection::connect("127.0.0.1", proxy.port(), 2.0, hybrid::privacy::may_leave_device);
    double best = 1e9;
    for (int i = 0; i < 5; ++i) best = std::min(best, echo_round_trip(c, 16));
    std::cout << "one-way delay " << one_way * 1e3 << " ms: fastest RTT " << best * 1e3 << " ms\n";
    EXPECT_GE(best, 2.0 * one_way);
    EXPECT_EQ(proxy.bytes_up(), 5u * 16u);
  }
}

TEST(link_proxy, jitter_only_adds_delay_and_keeps_the_byte_order) {
  echo_server echo;
  link_proxy proxy("127.0.0.1", echo.port, {.one_way_delay_seconds = 0.002, .jitter_seconds = 0.004, .seed = 3});
  auto c = hybrid::tcp_connection::connect("127.0.0.1", proxy.port(), 2.0, hybrid::privacy::may_leave_device);
  std::vector<std::uint8_t> out(4000), in;
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<std::uint8_t>(i * 7);
  // Many small writes: each chunk draws its own delay, yet the stream arrives in order.
  for (std::size_t i = 0; i < out.size(); i += 100)
    c.send_all(std::span<const std::uint8_t>(out).subspan(i, 100), hybrid::deadline_after(5.0));
  std::vector<std::uint8_t> buf(65536);
  while (in.size() < out.size()) {
    const std::size_t n = c.recv_some(buf, hybrid::deadline_after(5.0));
    in.insert(in.end(), buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(n));
  }
  EXPECT_EQ(in, out);
}

TEST(link_proxy, a_bandwidth_limit_slows_a_large_transfer) {
  echo_server echo;
  // 100 kB at 1 MB/s each way: at least 0.1 s up (the echo overlaps the way down).
  link_proxy proxy("127.0.0.1", echo.port, {.bytes_per_second = 1e6});
  auto c = hybrid::tcp_connection::connect("127.0.0.1", proxy.port(), 2.0, hybrid::privacy::may_leave_device);
  const double t = echo_round_trip(c, 100000);
  std::cout << "100 kB echoed at 1 MB/s: " << t << " s\n";
  EXPECT_GE(t, 0.1);
}

TEST(link_proxy, a_stall_holds_bytes_back_and_a_disconnect_cuts_the_connection) {
  echo_server echo;
  link_proxy proxy("127.0.0.1", echo.port);
  auto c = hybrid::tcp_connection::connect("127.0.0.1", proxy.port(), 2.0, hybrid::privacy::may_leave_device);
  EXPECT_LT(echo_round_trip(c, 8), 5.0);
  proxy.stall(0.08);
  EXPECT_GE(echo_round_trip(c, 8), 0.08);
  proxy.disconnect_all();
  std::vector<std::uint8_t> buf(16);
  EXPECT_THROW(
      {
        c.send_all(std::vector<std::uint8_t>(8, 1), hybrid::deadline_after(2.0));
        (void)c.recv_some(buf, hybrid::deadline_after(2.0));
      },
      hybrid::link_unavailable);
  // New connections still work.
  auto d = hybrid::tcp_connection::connect("127.0.0.1", proxy.port(), 2.0, hybrid::privacy::may_leave_device);
  EXPECT_LT(echo_round_trip(d, 8), 5.0);
  EXPECT_EQ(proxy.connections(), 2u);
  EXPECT_THROW(link_proxy("localhost", echo.port), invalid_argument);
  EXPECT_THROW(link_proxy("127.0.0.1", echo.port, {.one_way_delay_seconds = -1.0}), invalid_argument);
}

TEST(link_proxy, greedy_split_decoding_with_cut_connections_equals_cloud_only_greedy) {
  cpu::batched_transformer model(models + "/kjv-big.bin", cpu::transformer_options{.threads = 1});
  serve::server<cpu::batched_transformer> srv(model, {}, test_support::serve_options());
  srv.start();
  link_proxy verify_link("127.0.0.1", srv.verify_port(), {.one_way_delay_seconds = 0.002});
  link_proxy http_link("127.0.0.1", srv.http_port(), {.one_way_delay_seconds = 0.002});
  cpu::transformer little(models + "/kjv-little.bin", {.threads = 1});
  hybrid::remote_verifier cloud("127.0.0.1", verify_link.port(),
                                {.vocab = little.vocab_size(), .client = {.request_timeout_seconds = 5.0, .retries = 3}});
  basic_speculative_decoder dec(little, fixed_gamma{.gamma = 4}, std::move(cloud));
  hybrid::completion_client http("127.0.0.1", http_link.port());
  const std::vector<std::vector<token_id>> prompts{{1, 450, 1171}, {1, 1126, 278, 303}};
  const std::size_t n = 40;
  for (const auto& prompt : prompts) {
    const auto want = http.complete({.prompt = prompt, .max_tokens = n}).tokens;
    std::size_t emitted = 0;
    const auto got = dec.generate(prompt, {.max_new_tokens = n}, [&](token_id) {
      if (++emitted % 12 == 0) verify_link.disconnect_all();  // several cuts per generation
    });
    EXPECT_EQ(got.tokens, want);
  }
  EXPECT_GT(dec.verifier().client().reconnects(), 0u);
  EXPECT_GE(verify_link.connections(), 3u);
}

}  // namespace
