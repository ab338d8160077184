// Tests for include/specdec/privacy/sha256.hpp: the FIPS 180 example vectors (NIST CSRC
// "SHA256.pdf" examples and the one-million-'a' message), padding boundaries, incremental
// updates at every split point, and agreement with OpenSSL's libcrypto on random inputs.
#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <cstdint>
#include <random>
#include <string>

#include "specdec/privacy/sha256.hpp"

namespace {
using specdec::privacy::sha256;
using specdec::privacy::sha256_hex;

std::string openssl_sha256_hex(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EXPECT_EQ(EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr), 1);
  sha256::digest d{};
  for (unsigned i = 0; i < len && i < d.size(); ++i) d[i] = md[i];
  return specdec::privacy::to_hex(d);
}

TEST(sha256, nist_example_vectors) {
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(
      sha256_hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrs"
                 "mnopqrstnopqrstu"),
      "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  EXPECT_EQ(sha256_hex(std::string(1000000, 'a')), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(sha256, incremental_updates_equal_one_update_at_every_split) {
  std::string msg;
  for (int i = 0; i < 300; ++i) msg.push_back(static_cast<char>(i * 7 + 3));
  const std::string whole = sha256_hex(msg);
  for (std::size_t a = 0; a <= msg.size(); a += 7)
    for (std::size_t b = a; b <= msg.size(); b += 29) {
      sha256 h;
      h.update(std::string_view(msg).substr(0, a));
      h.update(std::string_view(msg).substr(a, b - a));
      h.update(std::string_view(msg).substr(b));
      EXPECT_EQ(specdec::privacy::to_hex(h.finish()), whole) << a << ' ' << b;
    }
}

TEST(sha256, agrees_with_openssl_on_random_inputs_across_padding_boundaries) {
  std::mt19937_64 rng(5);
  for (std::size_t n = 0; n < 300; ++n) {  // every length through 55/56/63/64/119/120/...
    std::string data(n, '\0');
    for (auto& c : data) c = static_cast<char>(rng());
    EXPECT_EQ(sha256_hex(data), openssl_sha256_hex(data)) << "length " << n;
  }
  std::string big(100000 + rng() % 1000, '\0');
  for (auto& c : big) c = static_cast<char>(rng());
  EXPECT_EQ(sha256_hex(big), openssl_sha256_hex(big));
}

TEST(sha256, a_changed_bit_changes_the_digest) {
  std::string a = "uplink payload";
  std::string b = a;
  b[3] ^= 1;
  EXPECT_NE(sha256_hex(a), sha256_hex(b));
}

}  // namespace
