// Tests for include/specdec/privacy/recognizers.hpp: the validators against published
// examples and their defining rules, each recognizer's exact spans and base scores on
// positives and look-alikes, boundaries (inside words, inside longer numbers, at the text's
// ends, cut patterns), and that any byte string yields spans inside the text.
#include <gtest/gtest.h>

#include <initializer_list>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "specdec/privacy/recognizers.hpp"

namespace {
namespace pv = specdec::privacy;
using pv::pii_kind;
using pv::pii_span;

using finder = void (*)(std::string_view, std::vector<pii_span>&);

std::vector<std::string> found(finder f, std::string_view text) {
  std::vector<pii_span> spans;
  f(text, spans);
  std::vector<std::string> out;
  for (const auto& s : spans) out.emplace_back(text.substr(s.begin, s.size()));
  return out;
}

using strings = std::vector<std::string>;

// The scores of what `f` finds in `text`, in order.
std::vector<float> scores(finder f, std::string_view text) {
  std::vector<pii_span> spans;
  f(text, spans);
  std::vector<float> out;
  for (const auto& s : spans) out.push_back(s.score);
  return out;
}
using floats = std::vector<float>;

// `f` finds nothing in any of `texts`.
void expect_nothing(finder f, std::initializer_list<std::string_view> texts) {
  for (auto t : texts) EXPECT_TRUE(found(f, t).empty()) << t;
}

TEST(validators, luhn) {
  EXPECT_TRUE(pv::luhn_valid("4111111111111111"));
  EXPECT_TRUE(pv::luhn_valid("378282246310005"));
  EXPECT_TRUE(pv::luhn_valid("79927398713"));  // the textbook example
  EXPECT_FALSE(pv::luhn_valid("79927398710"));
  EXPECT_FALSE(pv::luhn_valid("4111111111111112"));
  EXPECT_FALSE(pv::luhn_valid(""));
  EXPECT_FALSE(pv::luhn_valid("4111 1111"));
  // Every single-digit change of a valid number breaks the check.
  const std::string good = "4012888888881881";
  for (std::size_t i = 0; i < good.size(); ++i)
    for (char d = '0'; d <= '9'; ++d) {
      if (d == good[i]) continue;
      std::string s = good;
      s[i] = d;
      EXPECT_FALSE(pv::luhn_valid(s)) << s;
    }
}

TEST(validators, card_issuers) {
  EXPECT_TRUE(pv::known_card_issuer("4111111111111111"));     // Visa 16
  EXPECT_TRUE(pv::known_card_issuer("4222222222222"));        // Visa 13
  EXPECT_TRUE(pv::known_card_issuer("5555555555554444"));     // Mastercard
  EXPECT_TRUE(pv::known_card_issuer("2223003122003222"));     // Mastercard 2-series
  EXPECT_TRUE(pv::known_card_issuer("378282246310005"));      // Amex
  EXPECT_TRUE(pv::known_card_issuer("6011111111111117"));     // Discover
  EXPECT_TRUE(pv::known_card_issuer("3530111333300000"));     // JCB
  EXPECT_TRUE(pv::known_card_issuer("30569309025904"));       // Diners
  EXPECT_TRUE(pv::known_card_issuer("6200000000000005"));     // UnionPay
  EXPECT_FALSE(pv::known_card_issuer("378282246310005000"));  // Amex prefix, wrong length
  EXPECT_FALSE(pv::known_card_issuer("9780306406157"));       // an ISBN-13
  EXPECT_FALSE(pv::known_card_issuer("1234567812345670"));
}

TEST(validators, iban_registry_examples_and_single_changes) {
  // Examples from the SWIFT IBAN registry.
  for (std::string_view s :
       {"GB82WEST12345698765432", "DE89370400440532013000", "FR1420041010050500013M02606", "NL91ABNA0417164300",
        "BE68539007547034", "CH9300762011623852957", "ES9121000418450200051332", "IT60X0542811101000000123456",
        "NO9386011117947", "MT84MALT011000012345MTLCAST001S"})
    EXPECT_TRUE(pv::iban_valid(s)) << s;
  EXPECT_EQ(pv::iban_length("DE"), 22u);
  EXPECT_EQ(pv::iban_length("NO"), 15u);
  EXPECT_EQ(pv::iban_length("US"), 0u);
  EXPECT_FALSE(pv::iban_valid("GB82WEST1234569876543"));   // one short
  EXPECT_FALSE(pv::iban_valid("US82WEST12345698765432"));  // no IBANs in the US
  EXPECT_FALSE(pv::iban_valid("gb82west12345698765432"));  // compact form is upper case
  const std::string good = "GB82WEST12345698765432";
  for (std::size_t i = 4; i < good.size(); ++i) {
    std::string s = good;
    s[i] = s[i] == '9' ? '0' : (s[i] == 'Z' ? 'A' : static_cast<char>(s[i] + 1));
    EXPECT_FALSE(pv::iban_valid(s)) << s;
  }
}

TEST(validators, us_ssn_rules) {
  EXPECT_TRUE(pv::us_ssn_valid("536221492"));
  EXPECT_TRUE(pv::us_ssn_valid("001010001"));
  EXPECT_TRUE(pv::us_ssn_valid("899999999"));
  EXPECT_FALSE(pv::us_ssn_valid("000221492"));  // area 000
  EXPECT_FALSE(pv::us_ssn_valid("666221492"));  // area 666
  EXPECT_FALSE(pv::us_ssn_valid("900221492"));  // area 9xx
  EXPECT_FALSE(pv::us_ssn_valid("536001492"));  // group 00
  EXPECT_FALSE(pv::us_ssn_valid("536220000"));  // serial 0000
  EXPECT_FALSE(pv::us_ssn_valid("222222222"));  // one digit repeated
  EXPECT_FALSE(pv::us_ssn_valid("078051120"));  // the Woolworth wallet card
  EXPECT_FALSE(pv::us_ssn_valid("123456789"));
  EXPECT_FALSE(pv::us_ssn_valid("53622149"));
  EXPECT_FALSE(pv::us_ssn_valid("53622149x"));
}

TEST(validators, ip_addresses) {
  EXPECT_TRUE(pv::ipv4_valid("0.0.0.0"));
  EXPECT_TRUE(pv::ipv4_valid("255.255.255.255"));
  EXPECT_FALSE(pv::ipv4_valid("256.1.1.1"));
  EXPECT_FALSE(pv::ipv4_valid("1.2.3"));
  EXPECT_FALSE(pv::ipv4_valid("1.2.3.4.5"));
  EXPECT_FALSE(pv::ipv4_valid("01.2.3.4"));
  EXPECT_FALSE(pv::ipv4_valid("1..3.4"));
  bool c = false;
  EXPECT_EQ(pv::ipv6_groups("2001:db8:85a3:0:0:8a2e:370:7334", c), 8);
  EXPECT_FALSE(c);
  EXPECT_EQ(pv::ipv6_groups("2001:db8::1", c), 3);
  EXPECT_TRUE(c);
  EXPECT_EQ(pv::ipv6_groups("::ffff:192.0.2.1", c), 3);
  EXPECT_EQ(pv::ipv6_groups("::", c), 0);
  EXPECT_EQ(pv::ipv6_groups("1::2::3", c), -1);
  EXPECT_EQ(pv::ipv6_groups("1:2:3:4:5:6:7", c), -1);  // seven groups, no "::"
  EXPECT_EQ(pv::ipv6_groups("1:2:3:4:5:6:7:8:9", c), -1);
  EXPECT_EQ(pv::ipv6_groups("12345::1", c), -1);
  EXPECT_EQ(pv::ipv6_groups("1:2:3:4:5:6:7::8", c), -1);  // "::" must stand for >= 1 group
  EXPECT_EQ(pv::ipv6_groups(":1:2:3:4:5:6:7", c), -1);
  EXPECT_EQ(pv::ipv6_groups("1:2:3:4:5:6:7:", c), -1);
  EXPECT_EQ(pv::ipv6_groups("00:1A:2B:3C:4D:5E", c), -1);  // a MAC address
}

TEST(find_emails, spans_and_lookalikes) {
  EXPECT_EQ(found(pv::find_emails, "mail jane.doe@example.org."), strings{"jane.doe@example.org"});
  EXPECT_EQ(found(pv::find_emails, "<J.Smith+tag@Mail.Example.CO.UK>"), strings{"J.Smith+tag@Mail.Example.CO.UK"});
  EXPECT_EQ(found(pv::find_emails, "a@b.io and c_d@e-f.museum"), (strings{"a@b.io", "c_d@e-f.museum"}));
  EXPECT_EQ(found(pv::find_emails, "...john@x.org"), strings{"john@x.org"});  // leading dots are punctuation
  EXPECT_TRUE(found(pv::find_emails, "user@localhost").empty());
  EXPECT_TRUE(found(pv::find_emails, "@property def x").empty());
  EXPECT_TRUE(found(pv::find_emails, "pkg@1.2.3").empty());
  EXPECT_TRUE(found(pv::find_emails, "a@-bad.com").empty());
  EXPECT_TRUE(found(pv::find_emails, "a.@b.com").empty());
  EXPECT_TRUE(found(pv::find_emails, "x@y.c").empty());  // one-letter TLD
  EXPECT_TRUE(found(pv::find_emails, "@").empty());
  EXPECT_TRUE(found(pv::find_emails, "a@").empty());
  EXPECT_TRUE(found(pv::find_emails, std::string(70, 'a') + "@example.com").empty());  // local part > 64
  std::vector<pii_span> s;
  pv::find_emails("x a@b.org", s);
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].begin, 2u);
  EXPECT_EQ(s[0].end, 9u);
  EXPECT_EQ(s[0].kind, pii_kind::email);
  EXPECT_FLOAT_EQ(s[0].score, 0.9f);
}

TEST(find_phones, international_north_american_and_national_forms) {
  for (std::string_view p : {"+44 20 7946 0958", "+1 415 555 2671", "+1-415-555-2671", "+14155552671", "(415) 555-2671",
                             "415-555-2671", "415.555.2671", "1-415-555-2671", "+1 (415) 555-2671", "+33 1 23 45 67 89",
                             "01 23 45 67 89", "020 7946 0958", "030/12345678", "+49 30 12345678", "0044 20 7946 0958",
                             "+7 (495) 123-45-67", "+44 (0)20 7946 0958", "(02) 9876 5432", "010-1234-5678"}) {
    EXPECT_EQ(found(pv::find_phones, "call " + std::string(p) + ", thanks"), strings{std::string(p)}) << p;
  }
  EXPECT_EQ(scores(pv::find_phones, "x 4155552671 y 415 555 2671"), (floats{0.3f, 0.5f}));  // bare, spaced: weak
}

TEST(find_phones, lookalikes) {
  expect_nothing(pv::find_phones, {"(123) 456-7890",  // NANP area code cannot start with 1
                                   "415-155-2671",    // nor an exchange
                                   "911-555-2671",    // N11 area code
                                   "+1 123 456 7890",
                                   "2024-03-15",
                                   "15.03.2024",
                                   "03/15/2024 10:30",
                                   "ISBN 0-306-40615-2",
                                   "02134-1234",
                                   "1 234 567 890",
                                   "555-2671",
                                   "v1.415.555.2671",
                                   "ORD-415-555-2671",
                                   "3:16",
                                   "+",
                                   "(",
                                   "+1",
                                   "0",
                                   "0044",
                                   "4294967296x",
                                   "+123456",
                                   "1-800-FLOWERS"});
}

TEST(find_payment_cards, shapes_luhn_and_issuers) {
  for (std::string_view c : {"4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111", "3782-822463-10005",
                             "3056 930902 5904", "4222222222222", "6200 0000 0000 0000 0"}) {
    EXPECT_EQ(found(pv::find_payment_cards, "card " + std::string(c) + ".").size(), 1u) << c;
  }
  EXPECT_EQ(found(pv::find_payment_cards, "4111 1111 1111 1111 12/29"), strings{"4111 1111 1111 1111"});
  EXPECT_TRUE(found(pv::find_payment_cards, "4111 1111 1111 1111 123").empty());  // the documented limit
  EXPECT_EQ(scores(pv::find_payment_cards, "1234567812345670"), floats{0.3f});  // Luhn-valid, no known issuer
  expect_nothing(pv::find_payment_cards,
                 {"4111 1111 1111 1112",       // Luhn fails
                  "4111-1111 1111-1111",       // mixed separators
                  "41111 1111 1111 111",       // not a printed shape
                  "4111 1111 1111 1111 1111",  // twenty digits in fours
                  "4111111111111111111111",    // too long
                  "x4111111111111111", "4111111111111111x", "4111111111111111.5", "+4111111111111111"});
}

TEST(find_us_ssns, forms_scores_and_rules) {
  EXPECT_EQ(scores(pv::find_us_ssns, "a 536-22-1492 b 536 22 1492 c 536.22.1492 d 536221492"),
            (floats{0.6f, 0.5f, 0.4f, 0.2f}));
  expect_nothing(pv::find_us_ssns,
                 {"666-22-1492", "000-22-1492", "936-22-1492", "536-00-1492", "536-22-0000", "078-05-1120",
                  "536-22-14920", "536-22-1492-1", "5536-22-1492", "536-22 1492", "x536-22-1492"});
}

TEST(find_ibans, grouped_compact_and_lookalikes) {
  EXPECT_EQ(found(pv::find_ibans, "IBAN DE89 3704 0044 0532 0130 00."), strings{"DE89 3704 0044 0532 0130 00"});
  EXPECT_EQ(found(pv::find_ibans, "to GB82WEST12345698765432 ok"), strings{"GB82WEST12345698765432"});
  EXPECT_EQ(found(pv::find_ibans, "iban: be68 5390 0754 7034"), strings{"be68 5390 0754 7034"});
  EXPECT_EQ(scores(pv::find_ibans, "DE89370400440532013000"), (floats{0.95f}));
  expect_nothing(pv::find_ibans, {"DE89 3704 0044 0532 0130 01",   // check fails
                                  "DE89370400440532013000X",       // runs on
                                  "XDE89370400440532013000",       // inside a word
                                  "DE89 370 400 440 532 013 000",  // not grouped by four
                                  "US82WEST12345698765432", "DE89 3704", "DE"});
}

TEST(find_ipv4, addresses_cidr_and_lookalikes) {
  EXPECT_EQ(found(pv::find_ipv4, "ssh to 10.20.30.40 now"), strings{"10.20.30.40"});
  EXPECT_EQ(found(pv::find_ipv4, "net 192.168.0.0/16."), strings{"192.168.0.0/16"});
  EXPECT_EQ(found(pv::find_ipv4, "host 8.8.8.8:53"), strings{"8.8.8.8"});
  EXPECT_EQ(found(pv::find_ipv4, "10.0.0.1-10.0.0.9"), (strings{"10.0.0.1", "10.0.0.9"}));
  EXPECT_EQ(found(pv::find_ipv4, "http://192.168.1.1/admin"), strings{"192.168.1.1"});
  expect_nothing(pv::find_ipv4, {"1.2.3.4.5", "256.1.1.1", "01.2.3.4", "1.2.3", "v1.2.3.4", "1.2.3.4-beta", "a1.2.3.4",
                                 "0.0.0.0", "127.0.0.1", "255.255.255.0", "::ffff:192.0.2.1", "10.1.2.3x"});
}

TEST(find_ipv6, forms_and_lookalikes) {
  EXPECT_EQ(found(pv::find_ipv6, "from [2001:db8:85a3::8a2e:370:7334]:443"), strings{"2001:db8:85a3::8a2e:370:7334"});
  EXPECT_EQ(found(pv::find_ipv6, "a 2001:0db8:0000:0000:0000:ff00:0042:8329."),
            strings{"2001:0db8:0000:0000:0000:ff00:0042:8329"});
  EXPECT_EQ(found(pv::find_ipv6, "mapped ::ffff:192.0.2.1 here"), strings{"::ffff:192.0.2.1"});
  EXPECT_EQ(found(pv::find_ipv6, "at 2001:db8::1: done"), strings{"2001:db8::1"});
  EXPECT_EQ(scores(pv::find_ipv6, "1:2:3:4:5:6:7:8 and 1:2::3"), (floats{0.7f, 0.6f}));
  expect_nothing(pv::find_ipv6, {"::1", "fe80::1", "std::vector<int>", "a::b::c", "12:30:45", "00:1A:2B:3C:4D:5E",
                                 "John 3:16", "2001:db8::1g", "::", ":::"});
}

TEST(find_secrets, published_formats) {
  const std::string jwt =
      "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
  const std::string pem =
      "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n"
      "-----END RSA PRIVATE KEY-----";
  for (const std::string& tok :
       {std::string("AKIAIOSFODNN7EXAMPLE"), std::string("ghp_abcdefghijklmnopqrstuvwxyz0123456789"),
        std::string("github_pat_11ABCDEFG0123456789abc_defghijklmnopqrstuvwxyz0123456789"),
        std::string("xoxb-123456789012-abcdefghijkl"), std::string("sk-proj-abcdefghij1234567890ABCD"),
        std::string("sk_live_4eC39HqLyjWDarjtT1zdp7dc"), std::string("AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe"),
        std::string("glpat-x7Rk2PqL9mZt4VwN8bYc"), std::string("npm_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"),
        std::string("hf_QwErTyUiOpAsDfGhJkLzXcVbNm12345678"), jwt, pem}) {
    EXPECT_EQ(found(pv::find_secrets, "key=" + tok + " end"), strings{tok}) << tok;
  }
  // A private key cut off by the end of the text is a secret up to that end.
  const std::string cut = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC";
  EXPECT_EQ(found(pv::find_secrets, "see " + cut), strings{cut});
  // The shape of an AWS secret access key is weak on its own.
  EXPECT_EQ(scores(pv::find_secrets, "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"), (floats{0.3f}));
  expect_nothing(pv::find_secrets,
                 {"pip install scikit-learn sk-learn", "xoxo hugs", "AKIA is a prefix", "ghp_short", "eyJhbGciOi",
                  "eyJhbGciOiJIUzI1NiJ9.x", "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----",
                  "-----BEGIN CERTIFICATE-----", "AKIAIOSFODNN7EXAMPLEX", "xAKIAIOSFODNN7EXAMPLE",
                  "sk-aaaaaaaaaaaaaaaaaaaaaaaaa", "0123456789abcdef0123456789abcdef01234567"});
}

TEST(recognizers, every_span_lies_inside_any_byte_string) {
  // Random bytes biased towards the characters the scanners branch on; sanitizer builds
  // turn any out-of-bounds read into a failure.
  const std::string alphabet = "0123456789+-()./: @_abcdefxoskAKIGHDEBN=\n\t\x80\xff";
  std::mt19937_64 rng(3);
  const finder all[] = {pv::find_emails, pv::find_phones, pv::find_payment_cards, pv::find_us_ssns,
                        pv::find_ibans,  pv::find_ipv4,   pv::find_ipv6,          pv::find_secrets};
  for (int n = 0; n < 3000; ++n) {
    std::string t(rng() % 80, ' ');
    for (auto& c : t) c = alphabet[rng() % alphabet.size()];
    for (auto f : all) {
      std::vector<pii_span> spans;
      f(t, spans);
      for (const auto& s : spans) {
        EXPECT_LT(s.begin, s.end) << t;
        EXPECT_LE(s.end, t.size()) << t;
        EXPECT_GE(s.score, 0.0f);
        EXPECT_LE(s.score, 1.0f);
      }
    }
  }
}

TEST(recognizers, builtin_set_covers_every_kind_once) {
  const auto rs = pv::builtin_recognizers();
  ASSERT_EQ(rs.size(), pv::pii_kind_count);
  for (std::size_t i = 0; i < rs.size(); ++i) {
    EXPECT_EQ(rs[i].kind, pv::all_pii_kinds[i]);
    EXPECT_TRUE(static_cast<bool>(rs[i].find));
    for (const auto& w : rs[i].context)
      for (char c : w) EXPECT_FALSE(c >= 'A' && c <= 'Z') << w;  // context words are lower case
  }
  for (auto k : pv::all_pii_kinds) EXPECT_EQ(pv::parse_pii_kind(to_string(k)), k);
  EXPECT_FALSE(pv::parse_pii_kind("NAME").has_value());
}

}  // namespace
