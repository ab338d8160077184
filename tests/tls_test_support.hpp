#pragma once
// Certificates for the TLS tests, generated at test time with OpenSSL's API (nothing
// secret is committed): a CA, a server certificate for 127.0.0.1 and localhost, an expired
// one, one for other names, two client certificates (all issued by the CA), an unrelated
// second CA and a client certificate it issued, and certificate revocation lists. Keys
// are EC P-256 (fast to make). Written as PEM files into a fresh directory, removed again
// by the destructor.
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>

namespace specdec::test_support {

/// A certificate and its key, as PEM files.
struct pem_files {
  std::string cert_file;
  std::string key_file;
};

class test_pki {
 public:
  test_pki() : dir_(std::filesystem::temp_directory_path() / ("specdec_tls_" + std::to_string(::getpid()))) {
    std::filesystem::create_directories(dir_);
    constexpr long day = 24 * 3600;
    const issued ca_root = make("specdec test CA", nullptr, -day, 30 * day, kind::ca, "");
    const issued other_root = make("unrelated test CA", nullptr, -day, 30 * day, kind::ca, "");
    ca = save("ca", ca_root).cert_file;
    other_ca = save("other_ca", other_root).cert_file;
    const issued server_cert = make("127.0.0.1", &ca_root, -day, 30 * day, kind::server, "IP:127.0.0.1,DNS:localhost");
    server = save("server", server_cert);
    expired = save("expired", make("127.0.0.1", &ca_root, -3 * day, -day, kind::server, "IP:127.0.0.1,DNS:localhost"));
    other_names = save("other_names", make("cloud.example", &ca_root, -day, 30 * day, kind::server,
                                           "DNS:cloud.example,IP:10.9.8.7"));
    client = save("client", make("device 1", &ca_root, -day, 30 * day, kind::client, ""));
    stranger = save("stranger", make("device 2", &other_root, -day, 30 * day, kind::client, ""));
    const issued revoked_cert = make("device 3", &ca_root, -day, 30 * day, kind::client, "");
    revoked_client = save("revoked_client", revoked_cert);
    crl_nothing_revoked = crl("crl_none", ca_root, {});
    crl_server_revoked = crl("crl_server", ca_root, {&server_cert});
    crl_client_revoked = crl("crl_client", ca_root, {&revoked_cert});
    crl_other_ca = crl("crl_other", other_root, {});
  }
  test_pki(const test_pki&) = delete;
  test_pki& operator=(const test_pki&) = delete;
  ~test_pki() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::string ca, other_ca;  ///< CA certificates (PEM)
  pem_files server;          ///< for 127.0.0.1 and localhost, valid now
  pem_files expired;         ///< for 127.0.0.1 and localhost, expired yesterday
  pem_files other_names;     ///< for cloud.example and 10.9.8.7 only
  pem_files client;          ///< a client certificate issued by `ca`
  pem_files stranger;        ///< a client certificate issued by `other_ca`
  pem_files revoked_client;  ///< a client certificate issued by `ca`, revoked by `crl_client_revoked`
  std::string crl_nothing_revoked;  ///< `ca`'s CRL (PEM), revoking nothing
  std::string crl_server_revoked;   ///< `ca`'s CRL revoking `server`
  std::string crl_client_revoked;   ///< `ca`'s CRL revoking `revoked_client`
  std::string crl_other_ca;         ///< `other_ca`'s CRL, revoking nothing (no CRL of `ca`)

 private:
  enum class kind { ca, server, client };
  struct key_free {
    void operator()(EVP_PKEY* k) const noexcept { EVP_PKEY_free(k); }
  };
  struct cert_free {
    void operator()(X509* x) const noexcept { X509_free(x); }
  };
  struct issued {
    std::unique_ptr<EVP_PKEY, key_free> key;
    std::unique_ptr<X509, cert_free> cert;
  };

  static void check(bool ok, const char* what) {
    if (!ok) throw std::runtime_error(std::string("test_pki: ") + what + " failed");
  }
  static void extend(X509* x, X509V3_CTX& ctx, int nid, const std::string& value) {
    X509_EXTENSION* e = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
    check(e != nullptr && X509_add_ext(x, e, -1) == 1, "adding an extension");
    X509_EXTENSION_free(e);
  }
  /// A certificate for `cn` valid from now + `from` to now + `to` seconds, signed by
  /// `issuer` (self-signed when null).
  issued make(const std::string& cn, const issued* issuer, long from, long to, kind k, const std::string& san) {
    issued out{std::unique_ptr<EVP_PKEY, key_free>(EVP_EC_gen("P-256")), std::unique_ptr<X509, cert_free>(X509_new())};
    check(out.key && out.cert, "key generation");
    X509* x = out.cert.get();
    check(X509_set_version(x, 2) == 1 && ASN1_INTEGER_set(X509_get_serialNumber(x), ++serial_) == 1, "serial");
    check(X509_gmtime_adj(X509_getm_notBefore(x), from) && X509_gmtime_adj(X509_getm_notAfter(x), to), "validity");
    check(X509_set_pubkey(x, out.key.get()) == 1, "public key");
    X509_NAME* name = X509_get_subject_name(x);
    check(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1,
                                     -1, 0) == 1,
          "subject");
    X509* signer = issuer != nullptr ? issuer->cert.get() : x;
    check(X509_set_issuer_name(x, X509_get_subject_name(signer)) == 1, "issuer");
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, signer, x, nullptr, nullptr, 0);
    extend(x, ctx, NID_subject_key_identifier, "hash");
    if (k == kind::ca) {
      extend(x, ctx, NID_basic_constraints, "critical,CA:TRUE");
      extend(x, ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
      extend(x, ctx, NID_authority_key_identifier, "keyid:always");
      extend(x, ctx, NID_basic_constraints, "critical,CA:FALSE");
      extend(x, ctx, NID_key_usage, "critical,digitalSignature");
      extend(x, ctx, NID_ext_key_usage, k == kind::server ? "serverAuth" : "clientAuth");
      if (!san.empty()) extend(x, ctx, NID_subject_alt_name, san);
    }
    EVP_PKEY* signing_key = issuer != nullptr ? issuer->key.get() : out.key.get();
    check(X509_sign(x, signing_key, EVP_sha256()) > 0, "signing");
    return out;
  }
  /// `ca`'s CRL, valid from an hour ago for 30 days, revoking `revoked`; its PEM file.
  std::string crl(const std::string& stem, const issued& ca, std::initializer_list<const issued*> revoked) const {
    const std::unique_ptr<X509_CRL, decltype(&X509_CRL_free)> c(X509_CRL_new(), &X509_CRL_free);
    const std::unique_ptr<ASN1_TIME, decltype(&ASN1_TIME_free)> last(X509_gmtime_adj(nullptr, -3600), &ASN1_TIME_free);
    const std::unique_ptr<ASN1_TIME, decltype(&ASN1_TIME_free)> next(X509_gmtime_adj(nullptr, 30L * 24 * 3600),
                                                                      &ASN1_TIME_free);
    check(c && last && next && X509_CRL_set_version(c.get(), 1) == 1 &&
              X509_CRL_set_issuer_name(c.get(), X509_get_subject_name(ca.cert.get())) == 1 &&
              X509_CRL_set1_lastUpdate(c.get(), last.get()) == 1 && X509_CRL_set1_nextUpdate(c.get(), next.get()) == 1,
          "CRL");
    for (const issued* r : revoked) {
      X509_REVOKED* entry = X509_REVOKED_new();
      const bool ok = entry != nullptr &&
                      X509_REVOKED_set_serialNumber(entry, X509_get_serialNumber(r->cert.get())) == 1 &&
                      X509_REVOKED_set_revocationDate(entry, last.get()) == 1 &&
                      X509_CRL_add0_revoked(c.get(), entry) == 1;
      if (!ok) X509_REVOKED_free(entry);
      check(ok, "revoking a certificate");
    }
    check(X509_CRL_sort(c.get()) == 1 && X509_CRL_sign(c.get(), ca.key.get(), EVP_sha256()) > 0, "signing a CRL");
    const std::string path = (dir_ / (stem + ".pem")).string();
    std::FILE* f = std::fopen(path.c_str(), "w");
    const bool ok = f != nullptr && PEM_write_X509_CRL(f, c.get()) == 1;
    if (f != nullptr) std::fclose(f);
    check(ok, "writing a CRL");
    return path;
  }
  pem_files save(const std::string& stem, const issued& c) const {
    pem_files f{(dir_ / (stem + ".pem")).string(), (dir_ / (stem + ".key")).string()};
    std::FILE* cf = std::fopen(f.cert_file.c_str(), "w");
    std::FILE* kf = std::fopen(f.key_file.c_str(), "w");
    const bool ok = cf != nullptr && kf != nullptr && PEM_write_X509(cf, c.cert.get()) == 1 &&
                    PEM_write_PrivateKey(kf, c.key.get(), nullptr, nullptr, 0, nullptr, nullptr) == 1;
    if (cf != nullptr) std::fclose(cf);
    if (kf != nullptr) std::fclose(kf);
    check(ok, "writing PEM files");
    return f;
  }

  std::filesystem::path dir_;
  long serial_ = 0;
};

}  // namespace specdec::test_support
