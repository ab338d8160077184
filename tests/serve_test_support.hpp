#pragma once
// Shared by the tests of the network clients and of specdec-serve (test_serve.cpp,
// test_verify_client.cpp, test_completion_client.cpp, test_serve_auth.cpp,
// test_remote_verifier.cpp, test_pipelined.cpp, ...): a bare loopback socket for scripted
// peers, held-out prompts, and (with specdec_serve/server.hpp included first) server
// options for in-process runs on ephemeral loopback ports, a raw client of the verify
// port, split greedy decoding through a verify_client, and waiting for a child.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include <cstdint>
#include <fstream>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace specdec::test_support {

/// Waits up to `seconds` for child `pid` to exit (SIGKILL after that): its exit status,
/// or -1 if it did not exit by itself or was killed by a signal.
inline int wait_for_exit(pid_t pid, double seconds) {
  int status = 0;
  pid_t done = 0;
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while ((done = ::waitpid(pid, &status, WNOHANG)) == 0 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (done == 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    return -1;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

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

/// The first 60 characters of up to `n` held-out KJV chapter openings
/// (models/kjv_val_openings.tsv), encoded by `tok`; prompts shorter than 2 tokens skipped.
template <class Tokenizer>
std::vector<std::vector<std::int32_t>> held_out_prompts(const std::string& models_dir, Tokenizer& tok, std::size_t n) {
  std::vector<std::vector<std::int32_t>> out;
  std::ifstream f(models_dir + "/kjv_val_openings.tsv");
  std::string line;
  while (out.size() < n && std::getline(f, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto tab = line.rfind('\t');
    const std::string text = tab == std::string::npos ? line : line.substr(tab + 1);
    auto ids = tok.encode(text.substr(0, 60));
    if (ids.size() >= 2) out.emplace_back(ids.begin(), ids.end());
  }
  return out;
}

#ifdef SPECDEC_SERVE_TESTS
}  // namespace specdec::test_support
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/hybrid/verify_client.hpp"
#include "specdec/sampling.hpp"
namespace specdec::test_support {

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

// Greedy drafts from `draft` (re-fed the whole sequence each round); every `corrupt`-th
// draft token is replaced by a wrong one so that rounds also end in rejections.
std::vector<token_id> draft_greedy(cpu::transformer& draft, const std::vector<token_id>& seq, std::size_t k,
                                   std::size_t corrupt = 0) {
  std::vector<token_id> out;
  draft.truncate(0);
  logits_block l = draft.forward(seq);
  for (std::size_t i = 0; i < k; ++i) {
    token_id t = argmax(l.row(l.rows - 1));
    if (corrupt != 0 && (seq.size() + i) % corrupt == 0) t = (t + 1) % static_cast<token_id>(draft.vocab_size());
    out.push_back(t);
    l = draft.forward(std::span<const token_id>(&out.back(), 1));
  }
  return out;
}

// Split greedy decoding through `c`: n new tokens after `prompt`, drafting at most the
// announced number per round. `between(round)` runs before each round. With
// `first_block` > 0 the session is opened together with a first block of that many drafts
// (`open_and_verify`), else by `open` before the first round.
template <class Between>
std::vector<token_id> split_greedy(hybrid::verify_client& c, cpu::transformer& draft, const std::vector<token_id>& prompt,
                                   std::size_t n, std::size_t corrupt, Between between, std::size_t first_block = 0) {
  if (first_block == 0) c.open(prompt);
  std::vector<token_id> seq = prompt, delta;
  for (std::size_t round = 0; seq.size() < prompt.size() + n; ++round) {
    between(round);
    const bool opening = round == 0 && first_block > 0;
    const std::vector<token_id> d = draft_greedy(draft, seq, opening ? first_block : c.max_draft(), corrupt);
    const hybrid::verify_verdict v = opening ? c.open_and_verify(prompt, d) : c.verify(delta, d);
    delta.assign(d.begin(), d.begin() + static_cast<std::ptrdiff_t>(v.accepted));
    delta.push_back(v.next);
    delta.insert(delta.end(), v.following.begin(), v.following.end());  // a run-ahead at 0 drafts
    seq.insert(seq.end(), delta.begin(), delta.end());
  }
  return {seq.begin() + static_cast<std::ptrdiff_t>(prompt.size()),
          seq.begin() + static_cast<std::ptrdiff_t>(prompt.size() + n)};
}
std::vector<token_id> split_greedy(hybrid::verify_client& c, cpu::transformer& draft, const std::vector<token_id>& prompt,
                                   std::size_t n, std::size_t corrupt = 0) {
  return split_greedy(c, draft, prompt, n, corrupt, [](std::size_t) {});
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
