// Tests for include/specdec/hybrid/tls.hpp (and the TLS parts of transport.hpp and
// specdec-serve): certificates made at test time (tls_test_support.hpp), servers started
// in process on ephemeral loopback ports. Over mutual TLS, greedy split decoding and
// cloud completions give the target's own greedy tokens; an unknown CA, an expired
// certificate, a certificate for another name or address, a client without an accepted
// certificate, and plain/TLS mismatches each fail cleanly (and the server keeps serving);
// plain TCP goes only to loopback; a client that never handshakes is dropped; pinned keys
// admit the server and refuse another key its CA certified; revocation lists refuse a
// revoked server or client certificate; the byte counters count the ciphertext on the
// socket.
#include <gtest/gtest.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <poll.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "specdec/backend/cpu/batched_transformer.hpp"
#include "specdec/backend/cpu/tokenizer.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/decoder.hpp"
#include "specdec/hybrid/completion_client.hpp"
#include "specdec/hybrid/remote_verifier.hpp"
#include "specdec/hybrid/tls.hpp"
#include "specdec_serve/server.hpp"
#define SPECDEC_SERVE_TESTS
#include "serve_test_support.hpp"
#include "tls_test_support.hpp"

namespace {
using namespace specdec;
namespace hy = specdec::hybrid;

const std::string models = SPECDEC_MODELS_DIR;

test_support::test_pki& pki() {
  static test_support::test_pki p;
  return p;
}

/// Server options with TLS on both ports, `cert` as the server's certificate, and client
/// certificates from `client_ca` required when it is set.
serve::serve_options tls_options(const test_support::pem_files& cert, const std::string& client_ca = "") {
  serve::serve_options o = test_support::serve_options();
  o.tls = {.cert_file = cert.cert_file, .key_file = cert.key_file, .client_ca_file = client_ca,
           .handshake_timeout_seconds = 0.5};
  return o;
}

struct served {
  cpu::batched_transformer model;
  serve::server<cpu::batched_transformer> srv;
  served(const std::string& path, serve::serve_options o) : model(path, {.threads = 1}), srv(model, {}, std::move(o)) {
    srv.start();
  }
};

/// kjv-big behind mutual TLS: its certificate names 127.0.0.1 and localhost, and it
/// accepts clients whose certificates the test CA issued.
served& mtls_server() {
  static served s(models + "/kjv-big.bin", tls_options(pki().server, pki().ca));
  return s;
}

/// The device's good TLS settings for `mtls_server`.
hy::tls_client_options device() {
  return {.ca_file = pki().ca, .cert_file = pki().client.cert_file, .key_file = pki().client.key_file};
}

hy::verify_client_options verify_options(hy::transport_security s) {
  return {.connect_timeout_seconds = 2.0, .request_timeout_seconds = 5.0, .retries = 0, .security = std::move(s)};
}

/// One verify round trip: open a session on `port` with `security`.
void open_session(std::uint16_t port, const hy::transport_security& security) {
  hy::verify_client c("127.0.0.1", port, verify_options(security));
  const std::vector<token_id> prefix = {1, 5, 9};
  c.open(prefix);
}
/// One short completion on `port` with `security`; returns its tokens.
std::vector<token_id> complete(std::uint16_t port, const hy::transport_security& security) {
  hy::completion_client c("127.0.0.1", port, {.connect_timeout_seconds = 2.0, .read_timeout_seconds = 10.0, .security = security});
  return c.complete({.prompt = {1, 5, 9}, .max_tokens = 4}).tokens;
}

/// `f` throws `tls_error` whose message contains `reason` and names the peer
/// (127.0.0.1:`port` unless `host` says otherwise).
void expect_tls_error(const std::function<void()>& f, const std::string& reason, std::uint16_t port,
                      const std::string& host = "127.0.0.1") {
  try {
    f();
    ADD_FAILURE() << "expected tls_error (" << reason << ")";
  } catch (const hy::tls_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(reason), std::string::npos) << what;
    EXPECT_NE(what.find(host + ":" + std::to_string(port)), std::string::npos) << what;
  }
}

/// Waits (up to 5 s) until the server's handshake-failure counter on the verify port
/// reaches `n`; returns its value.
double handshake_failures(serve::metrics_registry& m, double n) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  double v = 0;
  while ((v = m.value("specdec_tls_handshake_failures_total", "port=\"verify\"")) < n &&
         std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  return v;
}

/// The server still answers a good client on both ports.
void expect_serving(served& s) {
  EXPECT_NO_THROW(open_session(s.srv.verify_port(), hy::tls_client(device())));
  EXPECT_FALSE(complete(s.srv.http_port(), hy::tls_client(device())).empty());
}

}  // namespace

TEST(tls, greedy_split_decoding_and_completions_over_mutual_tls_equal_the_target_s_greedy_output) {
  served& server = mtls_server();
  cpu::transformer little(models + "/kjv-little.bin", {.threads = 1});
  cpu::transformer big(models + "/kjv-big.bin", {.threads = 1});
  cpu::tokenizer tok(models + "/kjv2k-tokenizer.bin", big.vocab_size());
  std::vector<std::vector<token_id>> prompts;
  for (const char* text : {"In the beginning God", "And the LORD said unto Moses", "Blessed are they that"})
    prompts.push_back(tok.encode(text));
  const hy::transport_security tls = hy::tls_client(device());
  const generation_options opts{.max_new_tokens = 32, .stop_at_eos = false};
  hy::remote_verifier cloud("127.0.0.1", server.srv.verify_port(),
                            {.vocab = little.vocab_size(), .client = verify_options(tls)});
  basic_speculative_decoder dec(little, fixed_gamma{.gamma = 4}, std::move(cloud));
  hy::completion_client http("127.0.0.1", server.srv.http_port(), {.security = tls});
  std::size_t split_tokens = 0;
  for (const auto& p : prompts) {
    autoregressive_decoder ar(big);
    const auto want = ar.generate(p, opts).tokens;
    const auto got = dec.generate(p, opts);
    EXPECT_EQ(got.tokens, want);
    EXPECT_GT(got.stats.draft_tokens_accepted, 0u);
    split_tokens += got.tokens.size();
    // The cloud-only route: the server's own greedy completion (it may stop at EOS).
    const hy::completion_result r = http.complete({.prompt = p, .max_tokens = 16});
    ASSERT_FALSE(r.tokens.empty());
    ASSERT_LE(r.tokens.size(), want.size());
    EXPECT_EQ(r.tokens, std::vector<token_id>(want.begin(), want.begin() + static_cast<std::ptrdiff_t>(r.tokens.size())));
  }
  // Socket bytes (ciphertext, handshakes included) per generated token of split decoding.
  const auto& c = dec.verifier().client();
  const double per_token = static_cast<double>(c.bytes_sent() + c.bytes_received()) / static_cast<double>(split_tokens);
  RecordProperty("tls_socket_bytes_per_token", std::to_string(per_token));
  std::cout << "greedy split decoding over mutual TLS: " << per_token << " socket bytes per generated token ("
            << split_tokens << " tokens, " << c.reconnects() + 1 << " connections)\n";
}

TEST(tls, rejects_a_server_certificate_from_an_unknown_ca) {
  served& s = mtls_server();
  hy::tls_client_options o = device();
  o.ca_file = pki().other_ca;
  const hy::transport_security wrong = hy::tls_client(o);
  expect_tls_error([&] { open_session(s.srv.verify_port(), wrong); }, "certificate verify failed", s.srv.verify_port());
  expect_tls_error([&] { complete(s.srv.http_port(), wrong); }, "certificate verify failed", s.srv.http_port());
  expect_serving(s);
}

TEST(tls, rejects_an_expired_server_certificate) {
  served s(models + "/stories260K.bin", tls_options(pki().expired));
  const hy::transport_security tls = hy::tls_client({.ca_file = pki().ca});
  expect_tls_error([&] { open_session(s.srv.verify_port(), tls); }, "certificate has expired", s.srv.verify_port());
  expect_tls_error([&] { complete(s.srv.http_port(), tls); }, "certificate has expired", s.srv.http_port());
}

TEST(tls, verifies_the_host_name_or_address_the_certificate_is_for) {
  served& s = mtls_server();
  hy::tls_client_options o = device();
  o.server_name = "cloud.example";  // a DNS name the certificate does not carry
  expect_tls_error([&] { open_session(s.srv.verify_port(), hy::tls_client(o)); }, "hostname mismatch",
                   s.srv.verify_port());
  expect_tls_error([&] { complete(s.srv.http_port(), hy::tls_client(o)); }, "hostname mismatch", s.srv.http_port());
  o.server_name = "127.0.0.2";  // an address it does not carry
  expect_tls_error([&] { open_session(s.srv.verify_port(), hy::tls_client(o)); }, "IP address mismatch",
                   s.srv.verify_port());
  // Positive control: the name it does carry passes.
  o.server_name = "localhost";
  EXPECT_NO_THROW(open_session(s.srv.verify_port(), hy::tls_client(o)));

  // A certificate for other names only, reached by address.
  served other(models + "/stories260K.bin", tls_options(pki().other_names));
  const hy::transport_security by_address = hy::tls_client({.ca_file = pki().ca});
  expect_tls_error([&] { open_session(other.srv.verify_port(), by_address); }, "IP address mismatch",
                   other.srv.verify_port());
  expect_tls_error([&] { complete(other.srv.http_port(), by_address); }, "IP address mismatch", other.srv.http_port());
  EXPECT_NO_THROW(open_session(other.srv.verify_port(), hy::tls_client({.ca_file = pki().ca, .server_name = "cloud.example"})));
}

TEST(tls, mutual_tls_refuses_a_client_without_an_accepted_certificate) {
  served& s = mtls_server();
  auto& m = s.srv.metrics();
  const double failures = handshake_failures(m, 0);
  const hy::transport_security anonymous = hy::tls_client({.ca_file = pki().ca});
  const hy::transport_security stranger = hy::tls_client(
      {.ca_file = pki().ca, .cert_file = pki().stranger.cert_file, .key_file = pki().stranger.key_file});
  // Under TLS 1.3 the client learns of the refusal after its handshake, from the
  // server's alert when it next reads or writes.
  for (const auto& [who, alert] : {std::pair{&anonymous, "certificate required"}, std::pair{&stranger, "unknown ca"}}) {
    expect_tls_error([&] { open_session(s.srv.verify_port(), *who); }, alert, s.srv.verify_port());
    expect_tls_error([&] { complete(s.srv.http_port(), *who); }, alert, s.srv.http_port());
  }
  EXPECT_EQ(handshake_failures(m, failures + 2), failures + 2);
  expect_serving(s);
}

TEST(tls, plain_and_tls_mismatches_fail_cleanly) {
  served& s = mtls_server();
  // A plain client (allowed: loopback) to the TLS ports: the server drops it.
  EXPECT_THROW(open_session(s.srv.verify_port(), {}), hy::link_unavailable);
  EXPECT_THROW(complete(s.srv.http_port(), {}), hy::link_unavailable);
  expect_serving(s);
  // A TLS client to a plain server: the handshake fails and names the peer.
  served plain(models + "/stories260K.bin", test_support::serve_options());
  const hy::transport_security tls = hy::tls_client({.ca_file = pki().ca});
  expect_tls_error([&] { open_session(plain.srv.verify_port(), tls); }, "handshake", plain.srv.verify_port());
  // (cpp-httplib may wait for a request line that the hello never ends: then the
  // handshake's deadline ends it.)
  EXPECT_THROW(complete(plain.srv.http_port(), tls), hy::link_unavailable);
  EXPECT_NO_THROW(open_session(plain.srv.verify_port(), {}));
}

TEST(tls, plain_tcp_goes_to_loopback_only) {
  EXPECT_TRUE(hy::is_loopback_host("127.0.0.1"));
  EXPECT_TRUE(hy::is_loopback_host("127.3.2.1"));
  EXPECT_TRUE(hy::is_loopback_host("::1"));
  EXPECT_TRUE(hy::is_loopback_host("::ffff:127.0.0.1"));
  EXPECT_FALSE(hy::is_loopback_host("0.0.0.0"));
  EXPECT_FALSE(hy::is_loopback_host("10.1.2.3"));
  EXPECT_FALSE(hy::is_loopback_host("::"));
  EXPECT_FALSE(hy::is_loopback_host("2001:db8::1"));

  // Linux delivers a connection to 0.0.0.0 to the local host, so a listener on 127.0.0.1
  // sees whether anything was attempted: 0.0.0.0 is not a loopback address, and plain TCP
  // to it is refused before a socket is opened ...
  const auto [fd, port] = test_support::loopback_socket();
  const auto pending = [fd = fd] {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 200) > 0;
  };
  expect_tls_error([&] { hy::verify_client("0.0.0.0", port, verify_options({})).open(std::vector<token_id>{1}); },
                   "refusing plain TCP", port, "0.0.0.0");
  expect_tls_error([&] { hy::completion_client("0.0.0.0", port).complete({.prompt = {1}}); }, "refusing plain TCP",
                   port, "0.0.0.0");
  EXPECT_THROW((void)hy::tcp_connection::connect("0.0.0.0", port, 1.0, hy::privacy::may_leave_device), hy::tls_error);
  EXPECT_FALSE(pending());
  // ... unless plain TCP is explicitly allowed (the control: the connection arrives).
  {
    hy::tcp_connection c = hy::tcp_connection::connect("0.0.0.0", port, 1.0, hy::privacy::may_leave_device,
                                                        {.allow_plaintext = true});
    EXPECT_TRUE(pending());
  }
  ::close(fd);

  // The server refuses to bind a non-loopback address without TLS (before binding).
  cpu::batched_transformer model(models + "/stories260K.bin", {.threads = 1});
  serve::serve_options o = test_support::serve_options();
  o.host = "0.0.0.0";
  try {
    serve::server<cpu::batched_transformer> srv(model, {}, o);
    ADD_FAILURE() << "a plain server on 0.0.0.0 was accepted";
  } catch (const invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("--allow-plaintext"), std::string::npos) << e.what();
  }
}

TEST(tls, a_client_that_never_handshakes_is_dropped_at_the_deadline) {
  served& s = mtls_server();
  auto& m = s.srv.metrics();
  const double failures = handshake_failures(m, 0);
  hy::tcp_connection idle = hy::tcp_connection::connect("127.0.0.1", s.srv.verify_port(), 1.0,
                                                        hy::privacy::may_leave_device);
  std::uint8_t b[16];
  const auto t0 = std::chrono::steady_clock::now();
  // The server closes it after its 0.5 s handshake timeout: the read sees the close,
  // long before its own 10 s deadline.
  try {
    (void)idle.recv_some(b, hy::deadline_after(10.0));
    ADD_FAILURE() << "the server sent bytes to a client that never said hello";
  } catch (const hy::link_timeout&) {
    ADD_FAILURE() << "the server kept the connection for 10 s";
  } catch (const hy::link_unavailable&) {
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
  EXPECT_EQ(handshake_failures(m, failures + 1), failures + 1);
  expect_serving(s);
}

TEST(tls, byte_counters_count_the_ciphertext_on_the_socket) {
  // A TLS echo of one message over a loopback socket pair: what the client's counter says
  // it sent is exactly what the server's socket received, and more than the plaintext.
  const auto [fd, port] = test_support::loopback_socket();
  const hy::tls_server server({.cert_file = pki().server.cert_file, .key_file = pki().server.key_file});
  const std::string message(1000, 'x');
  std::uint64_t server_received = 0;
  std::string echoed;
  std::thread peer([&, fd = fd] {
    hy::tcp_connection c(::accept(fd, nullptr, nullptr), "client");
    c.secure(server.accept(c, hy::deadline_after(5.0)));
    std::string got;
    std::uint8_t buf[4096];
    while (got.size() < message.size()) {
      const std::size_t n = c.recv_some(buf, hy::deadline_after(5.0));
      got.append(reinterpret_cast<const char*>(buf), n);
    }
    server_received = c.bytes_received();
    c.send_all(got, hy::deadline_after(5.0));
  });
  hy::tcp_connection c = hy::tcp_connection::connect("127.0.0.1", port, 5.0, hy::privacy::may_leave_device,
                                                     hy::tls_client({.ca_file = pki().ca}));
  EXPECT_TRUE(c.secured());
  c.send_all(message, hy::deadline_after(5.0));
  std::uint8_t buf[4096];
  while (echoed.size() < message.size()) {
    const std::size_t n = c.recv_some(buf, hy::deadline_after(5.0));
    echoed.append(reinterpret_cast<const char*>(buf), n);
  }
  peer.join();
  ::close(fd);
  EXPECT_EQ(echoed, message);
  EXPECT_EQ(server_received, c.bytes_sent());
  EXPECT_GT(c.bytes_sent(), message.size() + 100);  // records and the handshake on top of the payload
  EXPECT_GT(c.bytes_received(), message.size() + 100);
}

TEST(tls, resumes_sessions_only_with_the_server_and_name_they_were_verified_for) {
  served& s = mtls_server();
  const hy::transport_security tls = hy::tls_client(device());
  // Socket bytes of opening one session on a new connection to `host`.
  const auto bytes = [&](const std::string& host, const hy::transport_security& security) {
    hy::verify_client c(host, s.srv.verify_port(), verify_options(security));
    c.open(std::vector<token_id>{1, 5, 9});
    return c.bytes_sent() + c.bytes_received();
  };
  const std::uint64_t first = bytes("127.0.0.1", tls);
  const std::uint64_t again = bytes("127.0.0.1", tls);
  // Resumed: no certificates either way (each is several hundred bytes).
  EXPECT_LT(again + 1000, first) << "first " << first << ", again " << again;
  // Not offered to another name (a full handshake) nor by another client configuration.
  EXPECT_GT(bytes("localhost", tls) + 200, first);
  EXPECT_GT(bytes("127.0.0.1", hy::tls_client(device())) + 200, first);
}

// Revocation: the device checks the server's chain against crl_file (fail-closed: a
// chain no CRL of its issuer covers is refused too), the server a client certificate
// against client_crl_file.
TEST(tls, certificate_revocation_lists_refuse_revoked_certificates_on_both_sides) {
  served& s = mtls_server();
  hy::tls_client_options o = device();
  o.crl_file = pki().crl_nothing_revoked;  // positive control: the CA's CRL, the server not on it
  EXPECT_NO_THROW(open_session(s.srv.verify_port(), hy::tls_client(o)));
  EXPECT_FALSE(complete(s.srv.http_port(), hy::tls_client(o)).empty());
  o.crl_file = pki().crl_server_revoked;
  expect_tls_error([&] { open_session(s.srv.verify_port(), hy::tls_client(o)); }, "certificate revoked",
                   s.srv.verify_port());
  expect_tls_error([&] { complete(s.srv.http_port(), hy::tls_client(o)); }, "certificate revoked", s.srv.http_port());
  o.crl_file = pki().crl_other_ca;  // no CRL of the server's CA
  expect_tls_error([&] { open_session(s.srv.verify_port(), hy::tls_client(o)); }, "unable to get certificate CRL",
                   s.srv.verify_port());

  serve::serve_options checked = tls_options(pki().server, pki().ca);
  checked.tls.client_crl_file = pki().crl_client_revoked;
  served r(models + "/stories260K.bin", checked);
  EXPECT_NO_THROW(open_session(r.srv.verify_port(), hy::tls_client(device())));
  EXPECT_FALSE(complete(r.srv.http_port(), hy::tls_client(device())).empty());
  const hy::transport_security revoked = hy::tls_client(
      {.ca_file = pki().ca, .cert_file = pki().revoked_client.cert_file, .key_file = pki().revoked_client.key_file});
  expect_tls_error([&] { open_session(r.srv.verify_port(), revoked); }, "revoked", r.srv.verify_port());
  expect_tls_error([&] { complete(r.srv.http_port(), revoked); }, "revoked", r.srv.http_port());
  EXPECT_NO_THROW(open_session(r.srv.verify_port(), hy::tls_client(device())));  // still serving
}

TEST(tls, configuration_errors_name_the_file) {
  try {
    (void)hy::tls_client({.ca_file = "/nonexistent/ca.pem"});
    ADD_FAILURE() << "a missing CA file was accepted";
  } catch (const invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/ca.pem"), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)hy::tls_client({.ca_file = pki().ca, .cert_file = pki().client.cert_file}), invalid_argument);
  try {
    hy::tls_server s({.cert_file = pki().server.cert_file, .key_file = pki().client.key_file});
    ADD_FAILURE() << "a key that does not match the certificate was accepted";
  } catch (const invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("client.key"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("matching cert_file"), std::string::npos) << e.what();
  }
  EXPECT_THROW(hy::tls_server({.cert_file = pki().server.cert_file}), invalid_argument);
  // Pins: the form public_key_pin gives, else an error naming the option and the entry.
  for (const std::string& bad : std::vector<std::string>{"sha256/AAAA", "md5//" + std::string(43, 'A') + "=", "sha256//" + std::string(43, '!') + "="}) {
    try {
      (void)hy::tls_client({.ca_file = pki().ca, .pinned_keys = {bad}});
      ADD_FAILURE() << "a malformed pin was accepted: " << bad;
    } catch (const invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("pinned_keys entry '" + bad + "'"), std::string::npos) << e.what();
    }
  }
  // CRL files: missing, or holding no CRL (a certificate), named; a client CRL needs the client CAs.
  for (const std::string& bad : {std::string("/nonexistent/crl.pem"), pki().ca}) {
    try {
      (void)hy::tls_client({.ca_file = pki().ca, .crl_file = bad});
      ADD_FAILURE() << "a CRL file without a CRL was accepted: " << bad;
    } catch (const invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("crl_file = '" + bad + "'"), std::string::npos) << e.what();
    }
  }
  try {
    hy::tls_server s({.cert_file = pki().server.cert_file, .key_file = pki().server.key_file,
                      .client_crl_file = pki().crl_client_revoked});
    ADD_FAILURE() << "client_crl_file without client_ca_file was accepted";
  } catch (const invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("without client_ca_file"), std::string::npos) << e.what();
  }
  EXPECT_THROW(hy::tls_server({.cert_file = pki().server.cert_file, .key_file = pki().server.key_file,
                               .client_ca_file = pki().ca, .client_crl_file = pki().client.cert_file}),
               invalid_argument);
  EXPECT_THROW((void)hy::public_key_pin("/nonexistent/server.pem"), invalid_argument);
  EXPECT_THROW((void)hy::public_key_pin(pki().server.key_file), invalid_argument);  // a key, not a certificate
}

/// The pin of the public half of the PEM private key in `key_file`: the same digest as
/// `public_key_pin` of its certificate, reached from the key instead.
std::string pin_of_key_file(const std::string& key_file) {
  const std::unique_ptr<BIO, decltype(&BIO_free)> in(BIO_new_file(key_file.c_str(), "r"), &BIO_free);
  const std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(PEM_read_bio_PrivateKey(in.get(), nullptr, nullptr, nullptr),
                                                               &EVP_PKEY_free);
  unsigned char* der = nullptr;
  const int n = i2d_PUBKEY(key.get(), &der);
  unsigned char digest[32];
  unsigned int len = 0;
  EVP_Digest(der, static_cast<std::size_t>(n), digest, &len, EVP_sha256(), nullptr);
  OPENSSL_free(der);
  unsigned char b64[45];
  EVP_EncodeBlock(b64, digest, 32);
  return "sha256//" + std::string(reinterpret_cast<const char*>(b64), 44);
}

TEST(tls, pinned_keys_admit_the_server_s_key_and_refuse_another_key_its_ca_certified) {
  served& s = mtls_server();
  const std::string pin = hy::public_key_pin(pki().server.cert_file);
  EXPECT_EQ(pin, pin_of_key_file(pki().server.key_file));
  const std::string other = hy::public_key_pin(pki().other_names.cert_file);
  EXPECT_NE(pin, other);
  hy::tls_client_options o = device();
  o.pinned_keys = {other, pin};  // the current key and, say, the next one
  const hy::transport_security pinned = hy::tls_client(o);
  for (int i = 0; i < 2; ++i) {  // the second connection resumes the first's session
    EXPECT_NO_THROW(open_session(s.srv.verify_port(), pinned));
    EXPECT_FALSE(complete(s.srv.http_port(), pinned).empty());
  }
  // A certificate the trusted CA issued for this address, but not with a pinned key: the
  // chain and name checks pass, the pin refuses it, also when a session is resumed.
  o.pinned_keys = {other};
  const hy::transport_security wrong = hy::tls_client(o);
  for (int i = 0; i < 2; ++i) {
    expect_tls_error([&] { open_session(s.srv.verify_port(), wrong); }, "is " + pin + ", not among tls_client_options.pinned_keys",
                     s.srv.verify_port());
    expect_tls_error([&] { complete(s.srv.http_port(), wrong); }, "not among tls_client_options.pinned_keys",
                     s.srv.http_port());
  }
  expect_serving(s);
}
