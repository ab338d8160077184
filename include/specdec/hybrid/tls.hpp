#pragma once
/// \file hybrid/tls.hpp
/// TLS for the device/cloud transport (OpenSSL's libssl, Debian `libssl-dev`; link
/// `OpenSSL::SSL`). Only users of TLS include this header: transport.hpp and the clients
/// need no TLS library.
///
/// A TLS connection is a `tcp_connection` secured by a `stream_layer` that runs OpenSSL
/// over memory buffers and moves the records through the connection's own socket I/O, so
/// the deadlines, the errors (`link_timeout`, `link_unavailable`) and the byte counters
/// (which then count ciphertext: records and handshake) are those of plain TCP.
/// Failures to establish or keep the secure channel throw `tls_error` naming the peer and
/// OpenSSL's reason ("certificate has expired", "hostname mismatch", "IP address
/// mismatch", "unable to get local issuer certificate", "wrong version number",
/// "tlsv13 alert certificate required", ...).
///
/// Device side: `tls_client(options)` gives the `transport_security` for
/// `verify_client_options::security` and `completion_client_options::security`. The
/// server's certificate is always verified: against `ca_file` (else the system's default
/// store), and for the host name or IP address connected to (or `server_name`). TLS 1.2 is
/// the lowest version accepted. A client certificate (`cert_file`, `key_file`) enables
/// mutual TLS. `pinned_keys` additionally pins the server's public key (`public_key_pin`
/// of its certificate): a device that ships with the pins of its server's keys refuses a
/// certificate that a trusted but wrong CA issued. `crl_file` checks the chain against
/// certificate revocation lists (OCSP is not spoken). Connections made with one
/// `tls_client(...)` resume the last session with
/// the same server and name (TLS 1.3 tickets, which `tls_server` keeps in its own session
/// cache), so the certificates cross the link once, not per connection.
///
/// Server side: `tls_server(options)` loads the certificate and key (and, for mutual TLS,
/// the client CAs and optionally their CRLs); `accept` secures an accepted connection
/// within a deadline, and `configure` sets up another library's `SSL_CTX` (cpp-httplib's
/// `SSLServer`) the same way.
///
/// ```cpp
/// namespace hy = specdec::hybrid;
/// const hy::transport_security tls = hy::tls_client({.ca_file = "ca.pem"});
/// hy::verify_client verify("cloud.example", 9000, {.security = tls});
/// hy::completion_client cloud("cloud.example", 8443, {.security = tls});
/// ```
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/hybrid/errors.hpp"
#include "specdec/hybrid/transport.hpp"

namespace specdec::hybrid {

/// The device's TLS settings.
///
/// ```cpp
/// specdec::hybrid::tls_client_options o{.ca_file = "ca.pem", .cert_file = "device.pem", .key_file = "device.key"};
/// ```
struct tls_client_options {
  std::string ca_file{};      ///< PEM file of the CAs trusted for the server; empty: the system's store
  std::string server_name{};  ///< the DNS name or IP the server's certificate must carry; empty: the host connected to
  std::string cert_file{};    ///< PEM certificate (chain) of this client, for mutual TLS; with `key_file`
  std::string key_file{};     ///< PEM private key of `cert_file`
  /// Non-empty: the server's leaf public key must also be one of these pins,
  /// "sha256//" + base64 of the SHA-256 of its DER SubjectPublicKeyInfo (curl's
  /// --pinnedpubkey form; `public_key_pin` computes one). List the next key's pin beside
  /// the current one before the server's key rotates.
  std::vector<std::string> pinned_keys{};
  /// Non-empty: a PEM file of certificate revocation lists; every certificate of the
  /// server's chain below the trusted root must be covered by an unexpired CRL of its
  /// issuer in it and not be revoked, else the handshake fails (revocation is then
  /// checked fail-closed, as far as the file is current: it is read once).
  std::string crl_file{};
};

/// The server's TLS settings.
///
/// ```cpp
/// specdec::hybrid::tls_server_options o{.cert_file = "server.pem", .key_file = "server.key",
///                                       .client_ca_file = "devices-ca.pem"};  // mutual TLS
/// ```
struct tls_server_options {
  std::string cert_file{};       ///< PEM certificate chain of the server (leaf first)
  std::string key_file{};        ///< PEM private key of `cert_file`
  std::string client_ca_file{};  ///< non-empty: require a client certificate issued by these CAs
  /// Non-empty (with `client_ca_file`): a PEM file of CRLs; a client certificate must be
  /// covered by an unexpired CRL of its issuer in it and not be revoked (read at start).
  std::string client_crl_file{};
  /// A client that has not completed the handshake by then is dropped (it cannot hold a
  /// connection thread by never handshaking).
  double handshake_timeout_seconds = 10.0;
};

namespace detail {

struct ssl_ctx_free {
  void operator()(SSL_CTX* c) const noexcept { SSL_CTX_free(c); }
};
using ssl_ctx_ptr = std::shared_ptr<SSL_CTX>;

/// OpenSSL's reasons on this thread's error queue, oldest first (and clears it).
inline std::string openssl_reasons() {
  std::string out;
  while (const unsigned long e = ERR_get_error()) {
    const char* r = ERR_reason_error_string(e);
    if (!out.empty()) out += "; ";
    out += r != nullptr ? r : ("error " + std::to_string(e));
  }
  return out.empty() ? "no reason given" : out;
}

[[nodiscard]] inline ssl_ctx_ptr new_context(const SSL_METHOD* method, const char* who) {
  ERR_clear_error();
  SSL_CTX* c = SSL_CTX_new(method);
  if (c == nullptr) throw resource_error(std::string(who) + ": SSL_CTX_new failed: " + openssl_reasons());
  SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
  return ssl_ctx_ptr(c, ssl_ctx_free{});
}

/// Loads a PEM certificate chain and its key into `c`; `invalid_argument` names the file.
inline void use_certificate(SSL_CTX* c, const std::string& cert, const std::string& key, const char* who) {
  if (cert.empty() != key.empty())
    throw invalid_argument(std::string(who) + ": cert_file = '" + cert + "', key_file = '" + key +
                           "'; expected both (a certificate and its key) or neither");
  if (cert.empty()) return;
  ERR_clear_error();
  if (SSL_CTX_use_certificate_chain_file(c, cert.c_str()) != 1)
    throw invalid_argument(std::string(who) + ": cert_file = '" + cert + "': " + openssl_reasons() +
                           "; expected a readable PEM certificate chain");
  if (SSL_CTX_use_PrivateKey_file(c, key.c_str(), SSL_FILETYPE_PEM) != 1)
    throw invalid_argument(std::string(who) + ": key_file = '" + key + "': " + openssl_reasons() +
                           "; expected a readable PEM private key matching cert_file = '" + cert + "'");
}

/// "sha256//" + base64(SHA-256(DER SubjectPublicKeyInfo)) of `cert`'s public key.
[[nodiscard]] inline std::string key_pin(X509* cert) {
  unsigned char* der = nullptr;
  const int n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &der);
  if (n <= 0) throw tls_error("tls: cannot encode a certificate's public key: " + openssl_reasons());
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(der, static_cast<std::size_t>(n), digest);
  OPENSSL_free(der);
  unsigned char b64[4 * ((SHA256_DIGEST_LENGTH + 2) / 3) + 1];
  const int len = EVP_EncodeBlock(b64, digest, SHA256_DIGEST_LENGTH);
  return "sha256//" + std::string(reinterpret_cast<const char*>(b64), static_cast<std::size_t>(len));
}

/// Whether `pin` has the form `key_pin` produces: "sha256//", 43 base64 characters, "=".
[[nodiscard]] inline bool well_formed_pin(const std::string& pin) {
  constexpr std::string_view prefix = "sha256//";
  if (pin.size() != prefix.size() + 44 || pin.compare(0, prefix.size(), prefix) != 0 || pin.back() != '=') return false;
  return std::all_of(pin.begin() + static_cast<std::ptrdiff_t>(prefix.size()), pin.end() - 1, [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
  });
}

inline void trust(SSL_CTX* c, const std::string& ca_file, const char* who) {
  ERR_clear_error();
  if (SSL_CTX_load_verify_locations(c, ca_file.c_str(), nullptr) != 1)
    throw invalid_argument(std::string(who) + ": ca_file = '" + ca_file + "': " + openssl_reasons() +
                           "; expected a readable PEM file of CA certificates");
}

/// Loads the CRLs of the PEM file `crl_file` into `c`'s store and checks every
/// certificate of a peer's chain against them (`field` names the option in errors).
inline void check_revocation(SSL_CTX* c, const std::string& crl_file, const char* who, const char* field) {
  ERR_clear_error();
  X509_STORE* store = SSL_CTX_get_cert_store(c);
  X509_LOOKUP* lookup = store != nullptr ? X509_STORE_add_lookup(store, X509_LOOKUP_file()) : nullptr;
  if (lookup == nullptr || X509_load_crl_file(lookup, crl_file.c_str(), X509_FILETYPE_PEM) <= 0)
    throw invalid_argument(std::string(who) + ": " + field + " = '" + crl_file + "': " + openssl_reasons() +
                           "; expected a readable PEM file of certificate revocation lists");
  X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
}

/// The sessions one `tls_client` may resume, one per server and expected name: a resumed
/// handshake skips the certificates (about 2 KB with mutual TLS), which matters because
/// each generation opens its own connection. A session is only offered to the server and
/// for the name it was verified for.
struct session_cache {
  std::mutex mu;
  std::map<std::string, std::shared_ptr<SSL_SESSION>> sessions;

  [[nodiscard]] std::shared_ptr<SSL_SESSION> find(const std::string& key) {
    std::lock_guard lock(mu);
    const auto it = sessions.find(key);
    return it == sessions.end() ? nullptr : it->second;
  }
  void store(const std::string& key, SSL_SESSION* s) {
    std::lock_guard lock(mu);
    sessions[key] = std::shared_ptr<SSL_SESSION>(s, SSL_SESSION_free);
  }
};

/// OpenSSL over two memory buffers: records go to and come from the socket through the
/// connection's raw I/O, so its deadlines and byte counters apply. One thread at a time.
class tls_layer final : public stream_layer {
 public:
  tls_layer(const ssl_ctx_ptr& ctx, std::string peer) : ctx_(ctx), peer_(std::move(peer)) {
    ssl_ = SSL_new(ctx_.get());
    in_ = BIO_new(BIO_s_mem());
    out_ = BIO_new(BIO_s_mem());
    if (ssl_ == nullptr || in_ == nullptr || out_ == nullptr) {
      BIO_free(in_);
      BIO_free(out_);
      SSL_free(ssl_);
      throw resource_error("tls: cannot create a TLS session for " + peer_ + ": " + openssl_reasons());
    }
    BIO_set_mem_eof_return(in_, -1);  // an empty input buffer means "wait for the socket", not EOF
    SSL_set_bio(ssl_, in_, out_);     // the session owns both buffers now
  }
  tls_layer(const tls_layer&) = delete;
  tls_layer& operator=(const tls_layer&) = delete;
  ~tls_layer() override { SSL_free(ssl_); }

  [[nodiscard]] SSL* ssl() noexcept { return ssl_; }

  /// Offers the session `cache` holds under `key` (if any) and stores the server's new
  /// tickets there. Call before the handshake; the context must have
  /// `new_session_callback` installed.
  void resume_from(std::shared_ptr<session_cache> cache, std::string key) {
    cache_ = std::move(cache);
    cache_key_ = std::move(key);
    SSL_set_ex_data(ssl_, ex_index(), this);
    if (const auto s = cache_->find(cache_key_)) SSL_set_session(ssl_, s.get());
  }
  /// Whether the handshake resumed an earlier session.
  [[nodiscard]] bool resumed() const noexcept { return SSL_session_reused(ssl_) == 1; }
  /// For `SSL_CTX_sess_set_new_cb`: keeps a ticket the server sent (returns 1: the
  /// cache now owns the reference).
  static int new_session_callback(SSL* ssl, SSL_SESSION* session) {
    auto* self = static_cast<tls_layer*>(SSL_get_ex_data(ssl, ex_index()));
    if (self == nullptr || !self->cache_) return 0;
    self->cache_->store(self->cache_key_, session);
    return 1;
  }

  /// The handshake, by `until`. The peer closing the connection during it is a
  /// `tls_error` too: a server that does not speak TLS, or refused this client.
  void handshake(tcp_connection& s, deadline until) {
    try {
      drive(s, until, "handshake", [&] { return SSL_do_handshake(ssl_); });
    } catch (const tls_error&) {
      throw;
    } catch (const link_timeout&) {
      throw;
    } catch (const link_unavailable& e) {
      throw tls_error("tls: handshake with " + peer_ + " failed: " + e.what() +
                      " (does the peer speak TLS, and accept this client?)");
    }
  }

  void send_all(tcp_connection& s, std::span<const std::uint8_t> data, deadline until) override {
    while (!data.empty()) {
      const int n = drive(s, until, "write", [&] {
        return SSL_write(ssl_, data.data(), static_cast<int>(std::min<std::size_t>(data.size(), INT_MAX)));
      });
      data = data.subspan(static_cast<std::size_t>(n));
    }
  }
  std::size_t recv_some(tcp_connection& s, std::span<std::uint8_t> buf, deadline until) override {
    return static_cast<std::size_t>(drive(s, until, "read", [&] {
      return SSL_read(ssl_, buf.data(), static_cast<int>(std::min<std::size_t>(buf.size(), INT_MAX)));
    }));
  }
  [[nodiscard]] bool buffered() const noexcept override {
    return SSL_pending(ssl_) > 0 || BIO_ctrl_pending(in_) > 0;
  }
  void close(tcp_connection& s) noexcept override {
    if (failed_ || SSL_is_init_finished(ssl_) != 1) return;  // no close_notify after a fatal error
    ERR_clear_error();
    SSL_shutdown(ssl_);  // queues close_notify; the peer's answer is not awaited
    ERR_clear_error();
    try {
      flush(s, std::chrono::steady_clock::now());
    } catch (...) {
    }
  }

 private:
  /// Runs `op` (an SSL call) until it makes progress, feeding it socket bytes when it
  /// wants to read and sending whatever it wrote. Returns op's positive result.
  template <class Op>
  int drive(tcp_connection& s, deadline until, const char* stage, Op&& op) {
    for (;;) {
      ERR_clear_error();
      const int rc = op();
      const int err = rc > 0 ? SSL_ERROR_NONE : SSL_get_error(ssl_, rc);
      if (err == SSL_ERROR_SSL || err == SSL_ERROR_SYSCALL) {
        failed_ = true;
        const std::string why = reason();
        try {
          flush(s, std::chrono::steady_clock::now());  // the alert, if OpenSSL wrote one
        } catch (...) {
        }
        throw tls_error("tls: " + std::string(stage) + " with " + peer_ + " failed: " + why);
      }
      try {
        flush(s, until);
        if (err == SSL_ERROR_NONE) return rc;
        if (err == SSL_ERROR_ZERO_RETURN) throw link_unavailable("tls: " + peer_ + " closed the connection");
        if (err == SSL_ERROR_WANT_READ) fill(s, until);
        // SSL_ERROR_WANT_WRITE cannot last: the output buffer is memory and was just drained.
      } catch (const link_timeout&) {
        throw;
      } catch (const link_unavailable&) {
        surface_alert(s, stage);
        throw;
      }
    }
  }
  /// The peer dropped the connection (reset, broken pipe, closed): if it said why first
  /// in a TLS alert (a refused client certificate, say), throws that as `tls_error`.
  void surface_alert(tcp_connection& s, const char* stage) {
    if (failed_) return;
    try {
      while (s.is_open()) fill(s, std::chrono::steady_clock::now());  // what already arrived, without waiting
    } catch (const link_unavailable&) {
    }
    if (BIO_ctrl_pending(in_) == 0) return;
    ERR_clear_error();
    std::uint8_t b = 0;
    const int rc = SSL_peek(ssl_, &b, 1);
    if (rc > 0 || SSL_get_error(ssl_, rc) != SSL_ERROR_SSL) return;
    failed_ = true;
    throw tls_error("tls: " + std::string(stage) + " with " + peer_ + " failed: " + reason());
  }
  /// Why the session failed: the certificate verdict if verification failed, else
  /// OpenSSL's error queue.
  std::string reason() const {
    const long v = SSL_get_verify_result(ssl_);
    std::string queue = openssl_reasons();
    if (v != X509_V_OK) return "certificate verify failed: " + std::string(X509_verify_cert_error_string(v));
    return queue;
  }
  void flush(tcp_connection& s, deadline until) {
    std::uint8_t chunk[16384];
    while (BIO_ctrl_pending(out_) > 0) {
      const int n = BIO_read(out_, chunk, sizeof chunk);
      if (n <= 0) break;
      s.send_raw(std::span<const std::uint8_t>(chunk, static_cast<std::size_t>(n)), until);
    }
  }
  static int ex_index() {
    static const int i = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
    return i;
  }
  void fill(tcp_connection& s, deadline until) {
    std::uint8_t chunk[16384];
    const std::size_t n = s.recv_raw(chunk, until);
    if (BIO_write(in_, chunk, static_cast<int>(n)) != static_cast<int>(n))
      throw resource_error("tls: cannot buffer " + std::to_string(n) + " bytes from " + peer_);
  }

  ssl_ctx_ptr ctx_;  // keeps the configuration alive as long as the session
  std::string peer_;
  SSL* ssl_ = nullptr;
  BIO* in_ = nullptr;   // socket -> OpenSSL
  BIO* out_ = nullptr;  // OpenSSL -> socket
  std::shared_ptr<session_cache> cache_;
  std::string cache_key_;
  bool failed_ = false;  // a fatal error: the session may not be used or shut down any more
};

}  // namespace detail

/// The device's TLS: a `transport_security` whose handshake verifies the server's
/// certificate chain against `o.ca_file` (or the system's store) and its name or IP
/// address against the host connected to (or `o.server_name`), presenting `o.cert_file`
/// when set. Throws `invalid_argument` naming a file that cannot be loaded; connections
/// then throw `tls_error` for a certificate or handshake failure.
///
/// ```cpp
/// specdec::hybrid::completion_client cloud("10.0.0.7", 8443, {.security = specdec::hybrid::tls_client({.ca_file = "ca.pem"})});
/// ```
[[nodiscard]] inline transport_security tls_client(const tls_client_options& o) {
  const char* who = "tls_client_options";
  detail::ssl_ctx_ptr ctx = detail::new_context(TLS_client_method(), who);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  if (o.ca_file.empty()) {
    if (SSL_CTX_set_default_verify_paths(ctx.get()) != 1)
      throw invalid_argument(std::string(who) + ": ca_file is empty and the system's CA store cannot be loaded: " +
                             detail::openssl_reasons() + "; expected a PEM file of CA certificates");
  } else {
    detail::trust(ctx.get(), o.ca_file, who);
  }
  detail::use_certificate(ctx.get(), o.cert_file, o.key_file, who);
  if (!o.crl_file.empty()) detail::check_revocation(ctx.get(), o.crl_file, who, "crl_file");
  for (const std::string& pin : o.pinned_keys)
    if (!detail::well_formed_pin(pin))
      throw invalid_argument(std::string(who) + ": pinned_keys entry '" + pin +
                             "'; expected \"sha256//\" and the base64 of a SHA-256 digest (44 characters), as "
                             "public_key_pin gives");
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(ctx.get(), &detail::tls_layer::new_session_callback);
  auto sessions = std::make_shared<detail::session_cache>();
  transport_security t;
  t.handshake = [ctx, sessions, name = o.server_name, pins = o.pinned_keys](
                    tcp_connection& s, const std::string& host, deadline until) -> std::unique_ptr<stream_layer> {
    auto layer = std::make_unique<detail::tls_layer>(ctx, s.peer());
    SSL* ssl = layer->ssl();
    const std::string& expect = name.empty() ? host : name;
    layer->resume_from(sessions, s.peer() + " as " + expect);
    in6_addr ip{};
    const bool literal = ::inet_pton(AF_INET, expect.c_str(), &ip) == 1 || ::inet_pton(AF_INET6, expect.c_str(), &ip) == 1;
    // An IP literal must be among the certificate's IP addresses; a name among its DNS
    // names (and is sent as SNI, which may not carry an address).
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    const bool ok = literal ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), expect.c_str()) == 1
                            : SSL_set1_host(ssl, expect.c_str()) == 1 &&
                                  SSL_set_tlsext_host_name(ssl, const_cast<char*>(expect.c_str())) == 1;
    if (!ok)
      throw invalid_argument("tls_client: server name '" + expect + "': " + detail::openssl_reasons() +
                             "; expected a DNS name or an IP address");
    SSL_set_connect_state(ssl);
    layer->handshake(s, until);
    if (!pins.empty()) {
      // After the chain and name checks (a resumed session carries the certificate it
      // was verified with); before a byte of the request.
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
      const std::unique_ptr<X509, decltype(&X509_free)> cert(SSL_get1_peer_certificate(ssl), &X509_free);
#else
      const std::unique_ptr<X509, decltype(&X509_free)> cert(SSL_get_peer_certificate(ssl), &X509_free);
#endif
      const std::string pin = cert ? detail::key_pin(cert.get()) : std::string("(no certificate)");
      if (std::find(pins.begin(), pins.end(), pin) == pins.end()) {
        layer->close(s);
        throw tls_error("tls: the public key of " + s.peer() + " is " + pin +
                        ", not among tls_client_options.pinned_keys; expected one of the " +
                        std::to_string(pins.size()) + " pinned keys");
      }
    }
    return layer;
  };
  return t;
}

/// The pin of the first certificate in the PEM file `cert_file` (a server's leaf):
/// "sha256//" + base64 of the SHA-256 of its DER SubjectPublicKeyInfo, for
/// `tls_client_options::pinned_keys`. `specdec-serve` prints its own at start-up. Throws
/// `invalid_argument` naming the file if it holds no PEM certificate.
///
/// ```cpp
/// std::string pin = specdec::hybrid::public_key_pin("server.pem");  // "sha256//r8u..."
/// auto tls = specdec::hybrid::tls_client({.ca_file = "ca.pem", .pinned_keys = {pin}});
/// ```
[[nodiscard]] inline std::string public_key_pin(const std::string& cert_file) {
  const std::unique_ptr<BIO, decltype(&BIO_free)> in(BIO_new_file(cert_file.c_str(), "r"), &BIO_free);
  const std::unique_ptr<X509, decltype(&X509_free)> cert(
      in ? PEM_read_bio_X509(in.get(), nullptr, nullptr, nullptr) : nullptr, &X509_free);
  if (!cert)
    throw invalid_argument("public_key_pin: cert_file = '" + cert_file + "': " + detail::openssl_reasons() +
                           "; expected a readable PEM certificate");
  return detail::key_pin(cert.get());
}

/// The server's TLS: the certificate and key (and for mutual TLS the client CAs) loaded
/// once; `accept` secures accepted connections, `configure` another `SSL_CTX`.
/// Copies share the loaded configuration.
///
/// ```cpp
/// specdec::hybrid::tls_server tls({.cert_file = "server.pem", .key_file = "server.key"});
/// conn.secure(tls.accept(conn, specdec::hybrid::deadline_after(tls.options().handshake_timeout_seconds)));
/// ```
class tls_server {
 public:
  /// Loads the files; throws `invalid_argument` naming one that is missing or invalid.
  explicit tls_server(tls_server_options o) : options_(std::move(o)) {
    if (options_.cert_file.empty() || options_.key_file.empty())
      throw invalid_argument("tls_server_options: cert_file = '" + options_.cert_file + "', key_file = '" +
                             options_.key_file + "'; expected both");
    if (!(options_.handshake_timeout_seconds > 0.0))
      throw invalid_argument("tls_server_options: handshake_timeout_seconds = " +
                             std::to_string(options_.handshake_timeout_seconds) + "; expected > 0");
    ctx_ = detail::new_context(TLS_server_method(), "tls_server_options");
    configure(*ctx_);
  }

  /// Sets `ctx` up as this server: TLS 1.2 or later, the certificate and key, and with
  /// `client_ca_file` a required client certificate (checked against `client_crl_file`
  /// when set). Throws `invalid_argument` naming a file that cannot be loaded.
  void configure(SSL_CTX& ctx) const {
    const char* who = "tls_server_options";
    SSL_CTX_set_min_proto_version(&ctx, TLS1_2_VERSION);
    // One ticket per connection (the device resumes its last session), stateful: the
    // ticket is a short id into this server's session cache, not the encrypted session
    // with the client's certificate inside, so resuming costs a few hundred bytes.
    SSL_CTX_set_num_tickets(&ctx, 1);
    SSL_CTX_set_options(&ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_session_cache_mode(&ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_sess_set_cache_size(&ctx, 4096);  // bounded: older sessions are evicted (the device then handshakes in full)
    // Resumption under client verification needs a session context (else OpenSSL refuses it).
    static constexpr unsigned char context[] = "specdec-serve";
    SSL_CTX_set_session_id_context(&ctx, context, sizeof context - 1);
    detail::use_certificate(&ctx, options_.cert_file, options_.key_file, who);
    if (options_.client_ca_file.empty()) {
      if (!options_.client_crl_file.empty())
        throw invalid_argument(std::string(who) + ": client_crl_file = '" + options_.client_crl_file +
                               "' without client_ca_file; expected the CAs of the client certificates too");
      return;
    }
    detail::trust(&ctx, options_.client_ca_file, who);
    if (!options_.client_crl_file.empty())
      detail::check_revocation(&ctx, options_.client_crl_file, who, "client_crl_file");
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(options_.client_ca_file.c_str());
    if (names == nullptr)
      throw invalid_argument(std::string(who) + ": client_ca_file = '" + options_.client_ca_file +
                             "': no certificate in it; expected a PEM file of CA certificates");
    SSL_CTX_set_client_CA_list(&ctx, names);
    SSL_CTX_set_verify(&ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }

  /// Runs the server side of the handshake on `conn` by `until` and returns the layer
  /// for `conn.secure`. Throws `tls_error` (a client without TLS, without an accepted
  /// certificate under mutual TLS, ...) or `link_timeout`.
  [[nodiscard]] std::unique_ptr<stream_layer> accept(tcp_connection& conn, deadline until) const {
    auto layer = std::make_unique<detail::tls_layer>(ctx_, conn.peer());
    SSL_set_accept_state(layer->ssl());
    layer->handshake(conn, until);
    return layer;
  }

  [[nodiscard]] const tls_server_options& options() const noexcept { return options_; }

 private:
  tls_server_options options_;
  detail::ssl_ctx_ptr ctx_;
};

}  // namespace specdec::hybrid
