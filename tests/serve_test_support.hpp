#pragma once
// Shared by the tests of the network clients and of specdec-serve (test_serve.cpp,
// test_verify_client.cpp, test_completion_client.cpp, test_remote_verifier.cpp,
// test_pipelined.cpp, ...): a bare loopback socket for scripted peers, held-out prompts,
// and (with specdec_serve/server.hpp included first) server options for in-process runs
// on ephemeral loopback ports.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <string>
#include <utility>
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
