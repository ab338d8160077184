#pragma once
/// \file net.hpp
/// The device side of the hybrid layer over real sockets: the TCP transport with deadlines
/// and byte counters, the verify-protocol client, the remote verifier (split speculative
/// decoding against `specdec-serve`) and the OpenAI-compatible completion client. Beyond
/// `specdec::specdec` it needs POSIX sockets and nlohmann/json: link the
/// `specdec::net` CMake target (`find_package(specdec COMPONENTS net)`).
///
/// ```cpp
/// #include <specdec/net.hpp>
///
/// // Split decoding: draft with `little` on the device, verify on the server at `port`.
/// template <specdec::language_model Draft>
/// std::vector<specdec::token_id> split(Draft& little, std::uint16_t port, std::span<const specdec::token_id> prompt) {
///   specdec::hybrid::remote_verifier cloud("127.0.0.1", port, {.vocab = little.vocab_size()});
///   specdec::basic_speculative_decoder dec(little, specdec::fixed_gamma{.gamma = 4}, std::move(cloud));
///   return dec.generate(prompt, {.max_new_tokens = 32}).tokens;
/// }
/// ```
///
/// Every public header that needs the network is listed here (tests/umbrella checks it).
#include "specdec/specdec.hpp"
#include "specdec/hybrid/transport.hpp"
#include "specdec/hybrid/verify_client.hpp"
#include "specdec/hybrid/completion_client.hpp"
#include "specdec/hybrid/remote_verifier.hpp"
#include "specdec/hybrid/tls.hpp"
#include "specdec/hybrid/pipelined.hpp"
#include "specdec/hybrid/net_session.hpp"
