#pragma once
/// \file recognizers.hpp
/// On-device recognizers of personal data and secrets, in the style of Microsoft Presidio:
/// each recognizer finds candidates by a pattern, keeps only those its validator accepts
/// (Luhn, mod-97, SSN area rules, address syntax, token formats) and gives each a base
/// score; context words near a candidate raise or lower the score (detector.hpp).
///
/// The patterns are hand-written scanners over bytes, not regular expressions: every
/// recognizer reads the text once, left to right, with bounded look-around per candidate,
/// so a prompt costs time linear in its length (bench/bench_privacy.cpp measures it).
/// Offsets are byte offsets; bytes >= 0x80 (UTF-8 letters) count as separators, so the
/// recognizers find ASCII forms (internationalised e-mail addresses are not recognised).
///
/// | kind           | pattern (examples)                                          | validation                     |
/// |----------------|-------------------------------------------------------------|--------------------------------|
/// | `email`        | `jane.doe+x@mail.example.org`                               | domain labels, alphabetic TLD  |
/// | `phone`        | `+44 20 7946 0958`, `(415) 555-2671`, `01 23 45 67 89`       | E.164 length, NANP digits      |
/// | `payment_card` | `4111 1111 1111 1111`, `3782-822463-10005`                  | Luhn, issuer prefix and length |
/// | `iban`         | `DE89 3704 0044 0532 0130 00`                               | country length, ISO 7064 mod-97|
/// | `us_ssn`       | `536-22-1492`                                               | area/group/serial rules        |
/// | `ipv4`         | `192.168.10.4`, `10.0.0.0/8`                                | octets <= 255, no leading zero |
/// | `ipv6`         | `2001:db8:85a3::8a2e:370:7334`                              | RFC 4291 text form             |
/// | `secret`       | `AKIA...`, `ghp_...`, `xoxb-...`, `sk-...`, JWTs, PEM private keys | prefix, length, JWT header |
///
/// ```cpp
/// std::vector<specdec::privacy::pii_span> found;
/// specdec::privacy::find_payment_cards("card 4111 1111 1111 1111, exp 12/29", found);
/// // found[0]: bytes [5, 24), kind payment_card, score 0.9
/// ```
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace specdec::privacy {

/// What a detected span is.
///
/// ```cpp
/// auto k = specdec::privacy::pii_kind::iban;
/// ```
enum class pii_kind : std::uint8_t { email, phone, payment_card, iban, us_ssn, ipv4, ipv6, secret };

/// Number of `pii_kind` values.
inline constexpr std::size_t pii_kind_count = 8;

/// Every kind, in declaration order.
///
/// ```cpp
/// for (auto k : specdec::privacy::all_pii_kinds) std::cout << to_string(k) << '\n';
/// ```
inline constexpr std::array<pii_kind, pii_kind_count> all_pii_kinds{
    pii_kind::email,  pii_kind::phone, pii_kind::payment_card, pii_kind::iban,
    pii_kind::us_ssn, pii_kind::ipv4,  pii_kind::ipv6,         pii_kind::secret};

/// Upper-case name of a kind ("EMAIL", "PHONE", "CARD", "IBAN", "US_SSN", "IPV4", "IPV6",
/// "SECRET"): the corpus labels, the audit log's keys and the redaction placeholders' stem.
///
/// ```cpp
/// std::string_view n = specdec::privacy::to_string(specdec::privacy::pii_kind::payment_card);  // "CARD"
/// ```
[[nodiscard]] constexpr std::string_view to_string(pii_kind k) noexcept {
  switch (k) {
    case pii_kind::email: return "EMAIL";
    case pii_kind::phone: return "PHONE";
    case pii_kind::payment_card: return "CARD";
    case pii_kind::iban: return "IBAN";
    case pii_kind::us_ssn: return "US_SSN";
    case pii_kind::ipv4: return "IPV4";
    case pii_kind::ipv6: return "IPV6";
    case pii_kind::secret: return "SECRET";
  }
  return "?";
}

/// The kind named `name` (as written by `to_string`), or nothing.
///
/// ```cpp
/// auto k = specdec::privacy::parse_pii_kind("IBAN");  // pii_kind::iban
/// ```
[[nodiscard]] constexpr std::optional<pii_kind> parse_pii_kind(std::string_view name) noexcept {
  for (auto k : all_pii_kinds)
    if (to_string(k) == name) return k;
  return std::nullopt;
}

/// One detected span: bytes [begin, end) of the text, its kind, its score in [0, 1] and the
/// name of the recognizer that found it (a string with static storage for the built-ins).
///
/// ```cpp
/// specdec::privacy::pii_span s{.begin = 5, .end = 24, .kind = specdec::privacy::pii_kind::payment_card,
///                              .score = 0.9f, .recognizer = "payment_card"};
/// std::size_t n = s.size();  // 19
/// ```
struct pii_span {
  std::size_t begin = 0;
  std::size_t end = 0;
  pii_kind kind = pii_kind::email;
  float score = 0.0f;
  std::string_view recognizer{};

  [[nodiscard]] constexpr std::size_t size() const noexcept { return end - begin; }
  [[nodiscard]] constexpr bool overlaps(const pii_span& o) const noexcept { return begin < o.end && o.begin < end; }
  friend constexpr bool operator==(const pii_span&, const pii_span&) = default;
};

/// A Presidio-style recognizer: `find` appends candidates of kind `kind` with base scores;
/// words of `context` (lower case) within the detector's context window before a candidate
/// raise its score, words of `negative_context` lower it. `name` must outlive the detector
/// (a string literal).
///
/// ```cpp
/// specdec::privacy::recognizer employee_ids{
///     .name = "employee_id", .kind = specdec::privacy::pii_kind::secret,
///     .find = [](std::string_view text, std::vector<specdec::privacy::pii_span>& out) {
///       for (auto at = text.find("EMP-"); at != std::string_view::npos; at = text.find("EMP-", at + 1))
///         out.push_back({.begin = at, .end = std::min(text.size(), at + 10),
///                        .kind = specdec::privacy::pii_kind::secret, .score = 0.4f});
///     },
///     .context = {"employee", "staff"}};
/// ```
struct recognizer {
  std::string_view name;
  pii_kind kind = pii_kind::email;
  std::function<void(std::string_view text, std::vector<pii_span>& out)> find;
  std::vector<std::string> context{};
  std::vector<std::string> negative_context{};
};

namespace detail {

constexpr bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }
constexpr bool is_upper(char c) noexcept { return c >= 'A' && c <= 'Z'; }
constexpr bool is_lower(char c) noexcept { return c >= 'a' && c <= 'z'; }
constexpr bool is_alpha(char c) noexcept { return is_upper(c) || is_lower(c); }
constexpr bool is_alnum(char c) noexcept { return is_alpha(c) || is_digit(c); }
constexpr bool is_word(char c) noexcept { return is_alnum(c) || c == '_'; }
constexpr bool is_hex(char c) noexcept { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
constexpr bool is_b64url(char c) noexcept { return is_alnum(c) || c == '-' || c == '_'; }
constexpr char to_lower(char c) noexcept { return is_upper(c) ? static_cast<char>(c - 'A' + 'a') : c; }
constexpr char to_upper(char c) noexcept { return is_lower(c) ? static_cast<char>(c - 'a' + 'A') : c; }
constexpr int hex_value(char c) noexcept {
  return is_digit(c) ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : c - 'A' + 10;
}

/// Length of the run of bytes satisfying `pred` starting at `at`.
template <class Pred>
constexpr std::size_t run_length(std::string_view t, std::size_t at, Pred pred) noexcept {
  std::size_t p = at;
  while (p < t.size() && pred(t[p])) ++p;
  return p - at;
}

constexpr bool starts_with_at(std::string_view t, std::size_t at, std::string_view s) noexcept {
  return at <= t.size() && t.substr(at).starts_with(s);
}

/// A number may start at `i`: the byte before is no letter, digit, '_' or '+', and not a
/// separator glued to a word ("ORD-1234", "v1.2", "x/5551234").
constexpr bool number_starts_at(std::string_view t, std::size_t i) noexcept {
  if (i == 0) return true;
  const char p = t[i - 1];
  if (is_word(p) || p == '+') return false;
  if ((p == '-' || p == '.' || p == '/' || p == ',') && i >= 2 && is_alnum(t[i - 2])) return false;
  if (p == ':' && i >= 2 && is_digit(t[i - 2])) return false;  // "3:16", "10:30"; "tel:+1..." starts a number
  return true;
}

/// A run of digit groups such as "+1 (415) 555-2671" or "4111-1111-1111-1111": at most
/// `max_groups` groups of digits, each optionally in parentheses, separated by one of
/// ' ', '-', '.', '/' (or nothing next to a parenthesis).
struct digit_run {
  static constexpr std::size_t max_groups = 8;
  struct group {
    std::size_t begin = 0, end = 0;  ///< the digits
    char sep = 0;                    ///< separator before this group (0: none or first)
    bool paren = false;              ///< written as "(digits)"
    [[nodiscard]] constexpr std::size_t size() const noexcept { return end - begin; }
  };
  std::size_t begin = 0;  ///< the '+' or the first group's '(' or digit
  bool plus = false;
  bool truncated = false;  ///< more groups followed than `max_groups`
  std::size_t count = 0;
  std::array<group, max_groups> g{};

  /// End of group k, after its closing parenthesis.
  [[nodiscard]] constexpr std::size_t end_of(std::size_t k) const noexcept { return g[k].end + (g[k].paren ? 1 : 0); }
  [[nodiscard]] constexpr std::size_t digits(std::size_t last) const noexcept {
    std::size_t d = 0;
    for (std::size_t k = 0; k <= last; ++k) d += g[k].size();
    return d;
  }
  /// Whether a match may end after group `k`: either a space separates the next group, or
  /// the run ends there and the next byte does not continue a word or a number.
  [[nodiscard]] constexpr bool ends_cleanly_after(std::string_view t, std::size_t k) const noexcept {
    if (k + 1 < count) return g[k + 1].sep == ' ' && !g[k + 1].paren;
    if (truncated) return false;
    const std::size_t e = end_of(k);
    if (e >= t.size()) return true;
    const char c = t[e];
    if (is_word(c) || c == '@') return false;
    if ((c == '.' || c == ',' || c == '-' || c == '/' || c == ':') && e + 1 < t.size() && is_alnum(t[e + 1]))
      return false;
    return true;
  }
  /// Copies the digits of groups [0, last] into `out` (at most `out.size()`); returns how many.
  template <std::size_t N>
  constexpr std::size_t copy_digits(std::string_view t, std::size_t last, std::array<char, N>& out) const noexcept {
    std::size_t n = 0;
    for (std::size_t k = 0; k <= last; ++k)
      for (std::size_t p = g[k].begin; p < g[k].end && n < N; ++p) out[n++] = t[p];
    return n;
  }
};

/// Parses the digit run starting at `i` ('+', '(' or a digit); nothing if no group follows.
constexpr std::optional<digit_run> parse_digit_run(std::string_view t, std::size_t i) noexcept {
  digit_run r;
  r.begin = i;
  std::size_t pos = i;
  if (t[pos] == '+') {
    r.plus = true;
    ++pos;
  }
  char sep = 0;
  for (;;) {
    std::size_t p = pos;
    bool paren = false;
    if (p < t.size() && t[p] == '(') {
      paren = true;
      ++p;
    }
    if (p >= t.size() || !is_digit(t[p])) break;
    const std::size_t gb = p;
    while (p < t.size() && is_digit(t[p])) ++p;
    const std::size_t ge = p;
    if (paren) {
      if (p < t.size() && t[p] == ')')
        ++p;
      else
        break;  // an unclosed parenthesis ends the run before this group
    }
    if (r.count == digit_run::max_groups) {
      r.truncated = true;
      break;
    }
    r.g[r.count++] = {gb, ge, sep, paren};
    sep = 0;
    std::size_t q = p;
    if (q < t.size() && (t[q] == ' ' || t[q] == '-' || t[q] == '.' || t[q] == '/')) sep = t[q++];
    const bool next = q < t.size() && (is_digit(t[q]) || (t[q] == '(' && q + 1 < t.size() && is_digit(t[q + 1])));
    if (!next) break;
    pos = q;
  }
  if (r.count == 0) return std::nullopt;
  return r;
}

/// Calls `f(run)` for every digit run that starts at a number boundary, left to right.
template <class F>
void for_each_digit_run(std::string_view t, F&& f) {
  std::size_t i = 0;
  while (i < t.size()) {
    const char c = t[i];
    if (!(is_digit(c) || c == '+' || c == '(') || !number_starts_at(t, i)) {
      ++i;
      continue;
    }
    const auto run = parse_digit_run(t, i);
    if (!run) {
      ++i;
      continue;
    }
    f(*run);
    i = std::max(i + 1, run->end_of(run->count - 1));
  }
}

/// All groups 1..last separated by the same byte, which is one of `allowed`.
constexpr bool uniform_separator(const digit_run& r, std::size_t last, std::string_view allowed) noexcept {
  if (last == 0) return true;
  const char s = r.g[1].sep;
  if (allowed.find(s) == std::string_view::npos || s == 0) return false;
  for (std::size_t k = 2; k <= last; ++k)
    if (r.g[k].sep != s) return false;
  return true;
}

constexpr bool any_paren(const digit_run& r, std::size_t last) noexcept {
  for (std::size_t k = 0; k <= last; ++k)
    if (r.g[k].paren) return true;
  return false;
}

/// Whether the three NANP area digits and three exchange digits are assignable: both start
/// with 2-9 and the area code is no N11 service code.
constexpr bool nanp_valid(std::string_view area, std::string_view exchange) noexcept {
  return area.size() == 3 && exchange.size() == 3 && area[0] >= '2' && exchange[0] >= '2' &&
         !(area[1] == '1' && area[2] == '1');
}

/// Decodes base64url (no padding) into `out`, at most `max` bytes; false on a bad byte.
inline bool base64url_decode(std::string_view s, std::string& out, std::size_t max) {
  std::uint32_t acc = 0;
  int bits = 0;
  for (char c : s) {
    int v = is_upper(c)   ? c - 'A'
            : is_lower(c) ? c - 'a' + 26
            : is_digit(c) ? c - '0' + 52
            : c == '-'    ? 62
            : c == '_'    ? 63
                          : -1;
    if (v < 0) return false;
    acc = (acc << 6) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFFu));
      if (out.size() >= max) return true;
    }
  }
  return true;
}

}  // namespace detail

// ---------------------------------------------------------------------------------------
// Validators

/// The Luhn (mod-10) check over a string of decimal digits (false if any byte is no digit
/// or the string is empty).
///
/// ```cpp
/// bool ok = specdec::privacy::luhn_valid("4111111111111111");   // true
/// bool bad = specdec::privacy::luhn_valid("4111111111111112");  // false
/// ```
[[nodiscard]] constexpr bool luhn_valid(std::string_view digits) noexcept {
  if (digits.empty()) return false;
  int sum = 0;
  bool twice = false;
  for (std::size_t i = digits.size(); i-- > 0;) {
    if (!detail::is_digit(digits[i])) return false;
    int d = digits[i] - '0';
    if (twice) d = d * 2 > 9 ? d * 2 - 9 : d * 2;
    sum += d;
    twice = !twice;
  }
  return sum % 10 == 0;
}

/// Whether a card number's issuer prefix (IIN) belongs to a major scheme whose numbers
/// have this length: Visa, Mastercard, American Express, Discover, JCB, Diners Club,
/// UnionPay, Maestro.
///
/// ```cpp
/// bool amex = specdec::privacy::known_card_issuer("378282246310005");  // true (34/37, 15 digits)
/// ```
[[nodiscard]] constexpr bool known_card_issuer(std::string_view d) noexcept {
  const std::size_t n = d.size();
  if (n < 12 || n > 19) return false;
  auto prefix = [&](std::size_t k) {
    int v = 0;
    for (std::size_t i = 0; i < k; ++i) v = v * 10 + (d[i] - '0');
    return v;
  };
  const int p2 = prefix(2), p3 = prefix(3), p4 = prefix(4);
  if (d[0] == '4') return n == 13 || n == 16 || n == 19;                             // Visa
  if (p2 >= 51 && p2 <= 55) return n == 16;                                          // Mastercard
  if (p4 >= 2221 && p4 <= 2720) return n == 16;                                      // Mastercard 2-series
  if (p2 == 34 || p2 == 37) return n == 15;                                          // American Express
  if (p4 == 6011 || p2 == 65 || (p3 >= 644 && p3 <= 649)) return n >= 16;            // Discover
  if (p4 >= 3528 && p4 <= 3589) return n >= 16;                                      // JCB
  if ((p3 >= 300 && p3 <= 305) || p2 == 36 || p2 == 38 || p2 == 39) return n >= 14;  // Diners Club
  if (p2 == 62) return n >= 16;                                                      // UnionPay
  if (p2 == 50 || (p2 >= 56 && p2 <= 69)) return n >= 12;                            // Maestro
  return false;
}

/// Length of an IBAN of the given ISO 3166 country (two upper-case letters) in the SWIFT
/// IBAN registry, or 0 for a country without IBANs.
///
/// ```cpp
/// std::size_t n = specdec::privacy::iban_length("DE");  // 22
/// ```
[[nodiscard]] constexpr std::size_t iban_length(std::string_view country) noexcept {
  struct entry {
    char c[3];
    unsigned char len;
  };
  constexpr entry table[] = {
      {"AD", 24}, {"AE", 23}, {"AL", 28}, {"AT", 20}, {"AZ", 28}, {"BA", 20}, {"BE", 16}, {"BG", 22}, {"BH", 22},
      {"BR", 29}, {"BY", 28}, {"CH", 21}, {"CR", 22}, {"CY", 28}, {"CZ", 24}, {"DE", 22}, {"DK", 18}, {"DO", 28},
      {"EE", 20}, {"EG", 29}, {"ES", 24}, {"FI", 18}, {"FO", 18}, {"FR", 27}, {"GB", 22}, {"GE", 22}, {"GI", 23},
      {"GL", 18}, {"GR", 27}, {"GT", 28}, {"HR", 21}, {"HU", 28}, {"IE", 22}, {"IL", 23}, {"IQ", 23}, {"IS", 26},
      {"IT", 27}, {"JO", 30}, {"KW", 30}, {"KZ", 20}, {"LB", 28}, {"LC", 32}, {"LI", 21}, {"LT", 20}, {"LU", 20},
      {"LV", 21}, {"MC", 27}, {"MD", 24}, {"ME", 22}, {"MK", 19}, {"MR", 27}, {"MT", 31}, {"MU", 30}, {"NL", 18},
      {"NO", 15}, {"PK", 24}, {"PL", 28}, {"PS", 29}, {"PT", 25}, {"QA", 29}, {"RO", 24}, {"RS", 22}, {"SA", 24},
      {"SC", 31}, {"SE", 24}, {"SI", 19}, {"SK", 24}, {"SM", 27}, {"ST", 25}, {"SV", 28}, {"TL", 23}, {"TN", 24},
      {"TR", 26}, {"UA", 29}, {"VA", 22}, {"VG", 24}, {"XK", 20},
  };
  if (country.size() != 2) return 0;
  for (const auto& e : table)
    if (e.c[0] == country[0] && e.c[1] == country[1]) return e.len;
  return 0;
}

/// Whether `iban` (compact: no spaces, upper case) has its country's length and passes the
/// ISO 7064 mod-97-10 check (the number with its first four characters moved to the end,
/// letters as 10..35, is 1 modulo 97).
///
/// ```cpp
/// bool ok = specdec::privacy::iban_valid("GB82WEST12345698765432");  // true
/// ```
[[nodiscard]] constexpr bool iban_valid(std::string_view iban) noexcept {
  if (iban.size() < 5 || iban_length(iban.substr(0, 2)) != iban.size()) return false;
  if (!detail::is_digit(iban[2]) || !detail::is_digit(iban[3])) return false;
  unsigned rem = 0;
  for (std::size_t k = 0; k < iban.size(); ++k) {
    const char c = iban[(k + 4) % iban.size()];
    if (detail::is_digit(c))
      rem = (rem * 10 + static_cast<unsigned>(c - '0')) % 97;
    else if (detail::is_upper(c))
      rem = (rem * 100 + static_cast<unsigned>(c - 'A' + 10)) % 97;
    else
      return false;
  }
  return rem == 1;
}

/// Whether nine digits form an assignable US Social Security number: area not 000, 666 or
/// 900-999, group not 00, serial not 0000, not one digit repeated, and not one of the
/// numbers published as examples (078-05-1120, 219-09-9999, 123-45-6789).
///
/// ```cpp
/// bool ok = specdec::privacy::us_ssn_valid("536221492");   // true
/// bool bad = specdec::privacy::us_ssn_valid("666221492");  // false: area 666
/// ```
[[nodiscard]] constexpr bool us_ssn_valid(std::string_view d) noexcept {
  if (d.size() != 9) return false;
  for (char c : d)
    if (!detail::is_digit(c)) return false;
  const std::string_view area = d.substr(0, 3), group = d.substr(3, 2), serial = d.substr(5, 4);
  if (area == "000" || area == "666" || area[0] == '9' || group == "00" || serial == "0000") return false;
  if (d.find_first_not_of(d[0]) == std::string_view::npos) return false;
  return d != "078051120" && d != "219099999" && d != "123456789";
}

/// Whether `s` is exactly a dotted-quad IPv4 address (four decimal octets <= 255 without
/// leading zeros).
///
/// ```cpp
/// bool ok = specdec::privacy::ipv4_valid("192.168.1.20");  // true
/// bool bad = specdec::privacy::ipv4_valid("1.2.3.256");    // false
/// ```
[[nodiscard]] constexpr bool ipv4_valid(std::string_view s) noexcept {
  std::size_t p = 0;
  for (int octet = 0; octet < 4; ++octet) {
    if (octet > 0) {
      if (p >= s.size() || s[p] != '.') return false;
      ++p;
    }
    const std::size_t len = detail::run_length(s, p, detail::is_digit);
    if (len == 0 || len > 3 || (len > 1 && s[p] == '0')) return false;
    int v = 0;
    for (std::size_t i = 0; i < len; ++i) v = v * 10 + (s[p + i] - '0');
    if (v > 255) return false;
    p += len;
  }
  return p == s.size();
}

/// Counts the explicit 16-bit groups of an RFC 4291 IPv6 text form (an embedded IPv4 tail
/// counts as two), or -1 if `s` is not one. `compressed` tells whether it uses "::".
///
/// ```cpp
/// bool compressed = false;
/// int groups = specdec::privacy::ipv6_groups("2001:db8::ff00:42:8329", compressed);  // 5, true
/// ```
[[nodiscard]] constexpr int ipv6_groups(std::string_view s, bool& compressed) noexcept {
  compressed = false;
  if (s.size() < 2) return -1;
  int groups = 0;
  std::size_t p = 0;
  if (s.starts_with("::")) {
    compressed = true;
    p = 2;
    if (p == s.size()) return 0;
  } else if (s[0] == ':') {
    return -1;
  }
  for (;;) {
    const std::size_t hex = detail::run_length(s, p, detail::is_hex);
    if (p + hex < s.size() && s[p + hex] == '.') {  // the IPv4 tail
      if (!ipv4_valid(s.substr(p))) return -1;
      groups += 2;
      break;
    }
    if (hex == 0 || hex > 4) return -1;
    ++groups;
    p += hex;
    if (p == s.size()) break;
    if (s[p] != ':') return -1;
    ++p;
    if (p < s.size() && s[p] == ':') {
      if (compressed) return -1;  // "::" at most once
      compressed = true;
      ++p;
      if (p == s.size()) break;
    } else if (p == s.size()) {
      return -1;  // a trailing single ':'
    }
  }
  if (compressed ? groups > 7 : groups != 8) return -1;
  return groups;
}

// ---------------------------------------------------------------------------------------
// Recognizers: each appends candidates with base scores; context is the detector's job.

/// E-mail addresses: a local part of [A-Za-z0-9._%+-] (at most 64 bytes, no leading or
/// trailing dot), '@', two or more domain labels of [A-Za-z0-9-] (no leading or trailing
/// hyphen) and an alphabetic top-level domain of 2-24 letters. Score 0.9.
///
/// ```cpp
/// std::vector<specdec::privacy::pii_span> out;
/// specdec::privacy::find_emails("mail jane.doe@example.org.", out);  // [5, 25)
/// ```
inline void find_emails(std::string_view t, std::vector<pii_span>& out) {
  using namespace detail;
  auto local = [](char c) { return is_alnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-'; };
  std::size_t from = 0;
  for (std::size_t at = t.find('@'); at != std::string_view::npos; at = t.find('@', from)) {
    from = at + 1;
    std::size_t l = at;
    while (l > 0 && local(t[l - 1]) && at - l < 64) --l;
    if (l > 0 && local(t[l - 1])) continue;  // local part longer than 64 bytes
    while (l < at && (t[l] == '.' || t[l] == '-' || t[l] == '+')) ++l;
    if (l == at || t[at - 1] == '.') continue;
    std::size_t r = at + 1, labels = 0, tld = r;
    bool bad = false;
    for (;;) {
      const std::size_t len = run_length(t, r, [](char c) { return is_alnum(c) || c == '-'; });
      if (len == 0 || len > 63 || t[r] == '-' || t[r + len - 1] == '-') {
        bad = true;
        break;
      }
      tld = r;
      r += len;
      ++labels;
      if (r + 1 < t.size() && t[r] == '.' && is_alnum(t[r + 1])) {
        ++r;
        continue;
      }
      break;
    }
    if (bad || labels < 2 || r - (at + 1) > 253) continue;
    const std::size_t tld_len = r - tld;
    if (tld_len < 2 || tld_len > 24 || run_length(t, tld, is_alpha) != tld_len) continue;
    if (r < t.size() && (t[r] == '_' || t[r] == '@')) continue;
    out.push_back({l, r, pii_kind::email, 0.9f, "email"});
    from = r;
  }
}

/// Phone numbers. International: '+' (or "00") and a country code, then 8-15 digits in all,
/// in groups of 1-8 separated by spaces, hyphens or dots (score 0.75; "+1" numbers must be
/// valid NANP numbers, 0.8). North American: (NXX) NXX-XXXX, NXX-NXX-XXXX, NXX.NXX.XXXX,
/// 1-NXX-NXX-XXXX (0.7), NXX NXX XXXX (0.5). National trunk-prefixed forms with a leading 0
/// and 10-12 digits in 2+ groups, as in Europe and Asia ("020 7946 0958", "01 23 45 67 89";
/// 0.6). Bare digit strings that could be a number (10-digit NANP, 0-prefixed 10-12
/// digits) score 0.3 and need a context word.
///
/// ```cpp
/// std::vector<specdec::privacy::pii_span> out;
/// specdec::privacy::find_phones("call +44 20 7946 0958 or (415) 555-2671", out);  // two spans
/// ```
inline void find_phones(std::string_view t, std::vector<pii_span>& out) {
  using namespace detail;
  auto push = [&](const digit_run& r, std::size_t last, float score) {
    out.push_back({r.begin, r.end_of(last), pii_kind::phone, score, "phone"});
  };
  auto nanp_groups = [&](const digit_run& r, std::size_t a) {  // groups a, a+1, a+2 as 3-3-4
    return r.g[a].size() == 3 && r.g[a + 1].size() == 3 && r.g[a + 2].size() == 4 &&
           nanp_valid(t.substr(r.g[a].begin, 3), t.substr(r.g[a + 1].begin, 3));
  };
  auto nanp_compact = [&](std::size_t at) {  // ten digits at `at`
    return nanp_valid(t.substr(at, 3), t.substr(at + 3, 3));
  };
  for_each_digit_run(t, [&](const digit_run& r) {
    const auto& g = r.g;
    const bool intl00 = !r.plus && g[0].size() >= 3 && t[g[0].begin] == '0' && t[g[0].begin + 1] == '0' &&
                        g[0].size() <= 5 && !g[0].paren;
    if (r.plus || intl00) {
      const std::size_t skip = intl00 ? 2 : 0;  // the "00" international prefix
      if (t[g[0].begin + skip] == '0' || g[0].paren) return;
      // "+1": North American numbering, 1 + NXX NXX XXXX.
      if (t[g[0].begin + skip] == '1') {
        const std::size_t cc = g[0].size() - skip;
        if (cc == 1 && r.count >= 4 && nanp_groups(r, 1) && r.ends_cleanly_after(t, 3)) return push(r, 3, 0.8f);
        if (cc == 1 && r.count >= 2 && g[1].size() == 10 && nanp_compact(g[1].begin) && r.ends_cleanly_after(t, 1))
          return push(r, 1, 0.8f);
        if (cc == 11 && nanp_compact(g[0].begin + skip + 1) && r.ends_cleanly_after(t, 0)) return push(r, 0, 0.8f);
        return;  // country code 1 is North America's alone
      }
      for (std::size_t last = r.count; last-- > 0;) {
        const std::size_t d = r.digits(last) - skip;
        if (d < 8 || d > 15 || !r.ends_cleanly_after(t, last)) continue;
        if (last > 0 && g[0].size() - skip > 3) continue;  // a country code has 1-3 digits
        bool ok = true;
        for (std::size_t k = 1; k <= last && ok; ++k) {
          ok = g[k].size() <= 8 && (g[k].size() >= 2 || k == 1) && g[k].sep != '/' && (!g[k].paren || k == 1);
        }
        if (ok) return push(r, last, 0.75f);
      }
      return;
    }
    if (t[g[0].begin] == '0') {  // national, trunk prefix 0
      if (t[g[0].begin + std::min<std::size_t>(1, g[0].size() - 1)] == '0') return;
      // The whole run, never a prefix: a national number is not followed by more digit groups
      // (which would make "0370 4004 4053" inside an account number a phone number).
      const std::size_t last = r.count - 1, d = r.digits(last);
      if (d < 10 || d > 12 || !r.ends_cleanly_after(t, last)) return;
      if (last == 0) return push(r, 0, 0.3f);
      bool ok = g[0].size() >= 2 && g[0].size() <= 5;
      for (std::size_t k = 1; k <= last && ok; ++k) ok = g[k].size() >= 2 && !g[k].paren;
      if (ok && (g[0].paren ? (last == 1 || uniform_separator(r, last, " -") || g[1].sep == 0)
                            : uniform_separator(r, last, " -/.")))
        push(r, last, 0.6f);
      return;
    }
    // North American numbering without the '+'.
    if (r.count >= 4 && g[0].size() == 1 && t[g[0].begin] == '1' && !g[0].paren && nanp_groups(r, 1) &&
        r.ends_cleanly_after(t, 3) && (g[1].paren || uniform_separator(r, 3, "-. "))) {
      return push(r, 3, g[1].sep == ' ' && !g[1].paren ? 0.5f : 0.7f);
    }
    if (r.count >= 3 && nanp_groups(r, 0) && r.ends_cleanly_after(t, 2) && !g[1].paren && !g[2].paren) {
      if (g[0].paren && (g[2].sep == '-' || g[2].sep == '.' || g[2].sep == ' ') && g[1].sep != '/' && g[1].sep != '.')
        return push(r, 2, 0.7f);
      if (!g[0].paren && uniform_separator(r, 2, "-. ")) return push(r, 2, g[1].sep == ' ' ? 0.5f : 0.7f);
    }
    if (!g[0].paren && r.ends_cleanly_after(t, 0)) {
      if (g[0].size() == 10 && nanp_compact(g[0].begin)) return push(r, 0, 0.3f);
      if (g[0].size() == 11 && t[g[0].begin] == '1' && nanp_compact(g[0].begin + 1)) return push(r, 0, 0.3f);
    }
  });
}

/// Payment card numbers: 13-19 digits, compact or in groups of four (the last group
/// shorter: 4-4-4-1 to 4-4-4-4-3) or the 4-6-5 / 4-6-4 groups of American Express and
/// Diners Club, separated uniformly by spaces or hyphens, passing the Luhn check. The
/// longest card-shaped prefix of a run of digit groups is the candidate: if it fails Luhn
/// nothing shorter is tried, so a card directly followed by a group of one to three digits
/// ("4111 1111 1111 1111 123") is read as one 19-digit number and not found. Score 0.9 for
/// a known issuer prefix and length (`known_card_issuer`), 0.3 otherwise (a context word
/// such as "card" lifts it).
///
/// ```cpp
/// std::vector<specdec::privacy::pii_span> out;
/// specdec::privacy::find_payment_cards("amex 3782-822463-10005", out);  // [5, 22)
/// ```
inline void find_payment_cards(std::string_view t, std::vector<pii_span>& out) {
  using namespace detail;
  for_each_digit_run(t, [&](const digit_run& r) {
    if (r.plus) return;
    for (std::size_t last = r.count; last-- > 0;) {
      const std::size_t d = r.digits(last);
      if (d < 13 || d > 19 || any_paren(r, last) || !uniform_separator(r, last, " -") || !r.ends_cleanly_after(t, last))
        continue;
      // Printed shapes: compact, fours with a shorter last group (4-4-4-1 for 13 digits up to
      // 4-4-4-4-3 for 19), 4-6-5 (American Express), 4-6-4 (Diners Club). A number whose
      // groups of four go on is longer than any card.
      if (last + 1 < r.count && r.g[last + 1].size() == 4) return;
      bool shape = last == 0;
      if (last == 3 || last == 4) {
        shape = last == 3 ? r.g[3].size() <= 4 : r.g[4].size() <= 3;
        for (std::size_t k = 0; k < last; ++k) shape = shape && r.g[k].size() == 4;
      } else if (last == 2) {
        shape = r.g[0].size() == 4 && r.g[1].size() == 6 && (r.g[2].size() == 5 || r.g[2].size() == 4);
      }
      if (!shape) continue;
      std::array<char, 19> buf{};
      const std::string_view digits(buf.data(), r.copy_digits(t, last, buf));
      // A card-shaped number failing Luhn is no card; its prefixes are not tried (a 19-digit
      // number is not a 16-digit card followed by three digits).
      if (!luhn_valid(digits)) return;
      out.push_back({r.g[0].begin, r.end_of(last), pii_kind::payment_card, known_card_issuer(digits) ? 0.9f : 0.3f,
                     "payment_card"});
      return;
    }
  });
}

/// US Social Security numbers passing `us_ssn_valid`: AAA-GG-SSSS (score 0.6), with spaces
/// (0.5) or dots (0.4), or nine bare digits (0.2: only with a context word such as "ssn").
///
/// ```cpp
/// std::vector<specdec::privacy::pii_span> out;
/// specdec::privacy::find_us_ssns("SSN: 536-22-1492", out);  // [5, 16)
/// ```
inline void find_us_ssns(std::string_view t, std::vector<pii_span>& out) {
  using namespace detail;
  for_each_digit_run(t, [&](const digit_run& r) {
    if (r.plus || any_paren(r, std::min<std::size_t>(r.count, 3) - 1)) return;
    std::array<char, 9> buf{};
    if (r.count >= 3 && r.g[0].size() == 3 && r.g[1].size() == 2 && r.g[2].size() == 4 &&
        uniform_separator(r, 2, "- .") && r.ends_cleanly_after(t, 2)) {
      r.copy_digits(t, 2, buf);
      if (!us_ssn_valid({buf.data(), 9})) return;
      const char s = r.g[1].sep;
      out.push_back({r.g[0].begin, r.end_of(2), pii_kind::us_ssn, s == '-' ? 0.6f : s == ' ' ? 0.5f : 0.4f, "us_ssn"});
    } else if (r.g[0].size() == 9 && r.ends_cleanly_after(t, 0) && us_ssn_valid(t.substr(r.g[0].begin, 9))) {
      out.push_back({r.g[0].begin, r.g[0].end, pii_kind::us_ssn, 0.2f, "us_ssn"});
    }
  });
}

/// IBANs: a country code with an IBAN, two check digits and the national part, compact or
/// in groups of four separated by single spaces, in either case, of the country's exact length
/// (`iban_length`) and passing the mod-97 check (`iban_valid`). Score 0.95.
///
/// ```cpp
/// std::vector<specdec::privacy::pii_span> out;
/// specdec::privacy::find_ibans("IBAN DE89 3704 0044 0532 0130 00.", out);  // [5, 32)
/// ```
inline void find_ibans(std::string_view t, std::vector<pii_span>& out) {
  using namespace detail;
  auto part = [](char c) { return is_alnum(c); };
  for (std::size_t i = 0; i + 4 < t.size(); ++i) {
    if (!is_alpha(t[i]) || !is_alpha(t[i + 1]) || !is_digit(t[i + 2]) || !is_digit(t[i + 3])) continue;
    if (i > 0 && is_word(t[i - 1])) continue;
    const char country[2] = {to_upper(t[i]), to_upper(t[i + 1])};
    const std::size_t len = iban_length({country, 2});
    if (len == 0) continue;
    std::array<char, 34> buf{};
    std::size_t n = 0, p = i;
    while (n < len && p < t.size()) {
      if (part(t[p])) {
        buf[n++] = to_upper(t[p++]);
      } else if (t[p] == ' ' && n % 4 == 0 && n > 0 && p + 1 < t.size() && part(t[p + 1]) &&
                 (n == 4 || t[p - 5] == ' ')) {  // grouped by four, consistently from the start
        ++p;
      } else {
        break;
      }
    }
    if (n != len || (p < t.size() && is_word(t[p]))) continue;
    if (!iban_valid({buf.data(), n})) continue;
    out.push_back({i, p, pii_kind::iban, 0.95f, "iban"});
    i = p - 1;
  }
}

/// IPv4 addresses (`ipv4_valid`), with an optional CIDR suffix "/0".."/32" in the span,
/// except 0.0.0.0/8, loopback 127.0.0.0/8 and 255.x (netmasks, broadcast), which identify
/// no one, and the IPv4 tail of an IPv6 address. Score 0.6; version-number context
/// ("version 1.2.3.4") lowers it below the threshold.
///
/// ```cpp
/// std::vector<specdec::privacy::pii_span> out;
/// specdec::privacy::find_ipv4("ssh to 10.20.30.40 now", out);  // [7, 18)
/// ```
inline void find_ipv4(std::string_view t, std::vector<pii_span>& out) {
  using namespace detail;
  auto dotted = [](char c) { return is_digit(c) || c == '.'; };
  std::size_t i = 0;
  while (i < t.size()) {
    // Starts after a non-word byte; "-" only inside a range of addresses ("10.0.0.1-10.0.0.9").
    const bool starts =
        is_digit(t[i]) &&
        (i == 0 || !(is_word(t[i - 1]) || t[i - 1] == '.' || (t[i - 1] == '-' && i >= 2 && !is_digit(t[i - 2]))));
    if (!starts) {
      ++i;
      continue;
    }
    const std::size_t run_end = i + run_length(t, i, dotted);
    std::size_t e = run_end;
    while (e > i && t[e - 1] == '.') --e;  // a sentence's full stop
    const bool clean_end =
        e == t.size() || !(is_word(t[e]) || (t[e] == '-' && e + 1 < t.size() && !is_digit(t[e + 1])));
    // The tail of an IPv6 address ("::ffff:192.0.2.1") belongs to the IPv6 recognizer.
    std::size_t colons = 0;
    for (std::size_t p = i; p > 0 && (is_hex(t[p - 1]) || t[p - 1] == ':') && colons < 2; --p)
      colons += t[p - 1] == ':';
    // 0/8 ("this network", 0.0.0.0), 127/8 (loopback) and 255.x (netmasks, broadcast) are no
    // one's address.
    const bool personal =
        !(t[i] == '0' || (e - i > 4 && t.substr(i, 4) == "127.") || (e - i > 4 && t.substr(i, 4) == "255."));
    if (clean_end && colons < 2 && personal && ipv4_valid(t.substr(i, e - i))) {
      std::size_t end = e;
      if (end + 1 < t.size() && t[end] == '/' && is_digit(t[end + 1])) {
        const std::size_t bits = run_length(t, end + 1, is_digit);
        const bool word_after = end + 1 + bits < t.size() && is_word(t[end + 1 + bits]);
        const int value = bits == 1 ? t[end + 1] - '0' : (t[end + 1] - '0') * 10 + (t[end + 2] - '0');
        if (bits <= 2 && !word_after && value <= 32) end += 1 + bits;
      }
      out.push_back({i, end, pii_kind::ipv4, 0.6f, "ipv4"});
    }
    i = run_end;
  }
}

/// IPv6 addresses in RFC 4291 text form: eight groups, or "::" with at least three explicit
/// groups (so "::1", "fe80::1" and C++'s "a::b" are not flagged), an embedded IPv4 tail
/// allowed. Score 0.7 (full form) or 0.6 (compressed).
///
/// ```cpp
/// std::vector<specdec::privacy::pii_span> out;
/// specdec::privacy::find_ipv6("from [2001:db8:85a3::8a2e:370:7334]:443", out);  // [6, 35)
/// ```
inline void find_ipv6(std::string_view t, std::vector<pii_span>& out) {
  using namespace detail;
  auto addr = [](char c) { return is_hex(c) || c == ':' || c == '.'; };
  std::size_t i = 0;
  while (i < t.size()) {
    const char c = t[i];
    if (!(is_hex(c) || c == ':') || (i > 0 && (is_word(t[i - 1]) || t[i - 1] == ':' || t[i - 1] == '.'))) {
      ++i;
      continue;
    }
    const std::size_t b = i, run = run_length(t, b, addr);
    std::size_t e = b + run;
    i = e;
    if (run > 45 || (e < t.size() && is_word(t[e]))) continue;
    while (e > b && t[e - 1] == '.') --e;
    if (e - b >= 2 && t[e - 1] == ':' && t[e - 2] != ':') --e;  // "at 2001:db8::1:"
    bool compressed = false;
    const int groups = ipv6_groups(t.substr(b, e - b), compressed);
    if (groups < 0 || (compressed && groups < 3)) continue;
    out.push_back({b, e, pii_kind::ipv6, compressed ? 0.6f : 0.7f, "ipv6"});
  }
}

namespace detail {

/// A token format recognised by its published prefix: the body after the prefix is a run of
/// `body` bytes of `min_len`..`max_len` bytes (a longer run is a different thing).
struct prefixed_token {
  std::string_view prefix;
  bool (*body)(char) noexcept;
  std::size_t min_len, max_len;
  float score;
  std::string_view name;
  bool needs_digit = false;  ///< the body contains a digit (random tokens do; words do not)
};

constexpr bool upper_or_digit(char c) noexcept { return is_upper(c) || is_digit(c); }
constexpr bool alnum_or_dash(char c) noexcept { return is_alnum(c) || c == '-'; }
constexpr bool is_b64std(char c) noexcept { return is_alnum(c) || c == '+' || c == '/'; }

inline constexpr prefixed_token prefixed_tokens[] = {
    {"AKIA", upper_or_digit, 16, 16, 0.9f, "aws_access_key_id"},
    {"ASIA", upper_or_digit, 16, 16, 0.9f, "aws_access_key_id"},
    {"AGPA", upper_or_digit, 16, 16, 0.9f, "aws_access_key_id"},
    {"AIDA", upper_or_digit, 16, 16, 0.9f, "aws_access_key_id"},
    {"AROA", upper_or_digit, 16, 16, 0.9f, "aws_access_key_id"},
    {"AIPA", upper_or_digit, 16, 16, 0.9f, "aws_access_key_id"},
    {"ANPA", upper_or_digit, 16, 16, 0.9f, "aws_access_key_id"},
    {"ANVA", upper_or_digit, 16, 16, 0.9f, "aws_access_key_id"},
    {"AIza", is_b64url, 35, 35, 0.9f, "google_api_key"},
    {"ghp_", is_alnum, 36, 251, 0.95f, "github_token"},
    {"gho_", is_alnum, 36, 251, 0.95f, "github_token"},
    {"ghu_", is_alnum, 36, 251, 0.95f, "github_token"},
    {"ghs_", is_alnum, 36, 251, 0.95f, "github_token"},
    {"ghr_", is_alnum, 36, 251, 0.95f, "github_token"},
    {"github_pat_", is_word, 22, 255, 0.95f, "github_token"},
    {"glpat-", is_b64url, 20, 64, 0.9f, "gitlab_token"},
    {"npm_", is_alnum, 36, 36, 0.9f, "npm_token"},
    {"hf_", is_alnum, 30, 64, 0.85f, "huggingface_token", true},
    {"xoxb-", alnum_or_dash, 10, 255, 0.9f, "slack_token", true},
    {"xoxp-", alnum_or_dash, 10, 255, 0.9f, "slack_token", true},
    {"xoxa-", alnum_or_dash, 10, 255, 0.9f, "slack_token", true},
    {"xoxo-", alnum_or_dash, 10, 255, 0.9f, "slack_token", true},
    {"xoxr-", alnum_or_dash, 10, 255, 0.9f, "slack_token", true},
    {"xoxs-", alnum_or_dash, 10, 255, 0.9f, "slack_token", true},
    {"xapp-", alnum_or_dash, 10, 255, 0.9f, "slack_token", true},
    {"sk_live_", is_alnum, 16, 255, 0.9f, "stripe_key"},
    {"sk_test_", is_alnum, 16, 255, 0.9f, "stripe_key"},
    {"rk_live_", is_alnum, 16, 255, 0.9f, "stripe_key"},
    {"rk_test_", is_alnum, 16, 255, 0.9f, "stripe_key"},
    {"sk-", is_b64url, 20, 255, 0.85f, "api_key_sk", true},
};

/// The PEM private-key block starting at `i` ("-----BEGIN ... PRIVATE KEY-----" through its
/// END line, or to the end of a cut text), or 0.
inline std::size_t pem_private_key_end(std::string_view t, std::size_t i) {
  const std::size_t label = i + 11;
  const std::size_t close = t.find("-----", label);
  if (close == std::string_view::npos || close - label > 64) return 0;
  const std::string_view name = t.substr(label, close - label);
  if (!(name.ends_with("PRIVATE KEY") || name.ends_with("PRIVATE KEY BLOCK")) ||
      name.find('\n') != std::string_view::npos)
    return 0;
  std::string end_line = "-----END ";
  end_line.append(name).append("-----");
  const std::size_t end_at = t.find(end_line, close + 5);
  return end_at == std::string_view::npos ? t.size() : end_at + end_line.size();
}

/// The JSON Web Token starting at `i` (three base64url parts, the header decoding to a JSON
/// object with "alg", or both header and payload starting "eyJ"): its end and score, or 0.
inline std::pair<std::size_t, float> jwt_at(std::string_view t, std::size_t i) {
  const std::size_t h = run_length(t, i, is_b64url);
  if (h < 10 || i + h >= t.size() || t[i + h] != '.') return {0, 0.0f};
  const std::size_t p = run_length(t, i + h + 1, is_b64url);
  if (p < 4 || i + h + 1 + p >= t.size() || t[i + h + 1 + p] != '.') return {0, 0.0f};
  const std::size_t e = i + h + 2 + p + run_length(t, i + h + 2 + p, is_b64url);
  std::string header;
  const bool json = base64url_decode(t.substr(i, h), header, 256) && header.starts_with('{') &&
                    header.find("\"alg\"") != std::string::npos;
  if (json) return {e, 0.95f};
  if (starts_with_at(t, i + h + 1, "eyJ")) return {e, 0.6f};
  return {0, 0.0f};
}

}  // namespace detail

/// Secrets by their published formats: AWS access key ids (AKIA/ASIA/... + 16), Google API
/// keys (AIza + 35), GitHub tokens (ghp_/gho_/ghu_/ghs_/ghr_ + 36+, github_pat_), GitLab
/// (glpat-), npm (npm_ + 36) and Hugging Face (hf_) tokens, Slack tokens (xoxb-/xoxp-/...,
/// xapp-), Stripe keys (sk_live_/sk_test_/rk_live_/rk_test_), OpenAI-style keys (sk- + 20+
/// with a digit and 8+ letters), JSON Web Tokens (three base64url parts whose header decodes
/// to a JSON object with "alg") and PEM private-key blocks (BEGIN ... PRIVATE KEY through
/// the matching END line, or to the end of the text if it is cut): scores 0.85-1.0. A
/// 40-byte base64 word with upper- and lower-case letters and digits, the shape of an AWS
/// secret access key, scores 0.3 and needs a context word ("secret", "key", ...).
///
/// ```cpp
/// std::vector<specdec::privacy::pii_span> out;
/// specdec::privacy::find_secrets("export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE", out);  // [25, 45)
/// ```
inline void find_secrets(std::string_view t, std::vector<pii_span>& out) {
  using namespace detail;
  std::size_t i = 0;
  while (i < t.size()) {
    const char c = t[i];
    std::size_t next = i + 1;
    if (c == '-') {
      if (starts_with_at(t, i, "-----BEGIN ") && (i == 0 || t[i - 1] != '-'))
        if (const std::size_t e = pem_private_key_end(t, i); e != 0) {
          out.push_back({i, e, pii_kind::secret, 1.0f, "pem_private_key"});
          next = e;
        }
      i = next;
      continue;
    }
    if (i > 0 && (is_word(t[i - 1]) || t[i - 1] == '-')) {
      ++i;
      continue;
    }
    for (const auto& f : prefixed_tokens) {
      if (f.prefix[0] != c || !starts_with_at(t, i, f.prefix)) continue;
      const std::size_t b = i + f.prefix.size(), n = run_length(t, b, f.body);
      if (n < f.min_len || n > f.max_len || (b + n < t.size() && is_alnum(t[b + n]))) continue;
      const std::string_view body = t.substr(b, n);
      if (f.needs_digit && body.find_first_of("0123456789") == std::string_view::npos) continue;
      if (f.name == "api_key_sk" && std::count_if(body.begin(), body.end(), [](char x) { return is_alpha(x); }) < 8)
        continue;
      out.push_back({i, b + n, pii_kind::secret, f.score, f.name});
      next = b + n;
      break;
    }
    if (next == i + 1 && c == 'e' && starts_with_at(t, i, "eyJ")) {
      if (const auto [e, score] = jwt_at(t, i); e != 0) {
        out.push_back({i, e, pii_kind::secret, score, "jwt"});
        next = e;
      }
    }
    if (next == i + 1 && is_b64std(c) && (i == 0 || !is_b64std(t[i - 1]))) {
      const std::size_t n = run_length(t, i, is_b64std);
      const std::string_view w = t.substr(i, n);
      if (n == 40 && (i + n == t.size() || t[i + n] != '=') && std::any_of(w.begin(), w.end(), is_upper) &&
          std::any_of(w.begin(), w.end(), is_lower) && std::any_of(w.begin(), w.end(), is_digit))
        out.push_back({i, i + n, pii_kind::secret, 0.3f, "aws_secret_access_key"});
      // (no skip: a token may start inside a base64 run, after a '/' or '+')
    }
    i = next;
  }
}

/// The built-in recognizers with their context words, one per kind.
///
/// ```cpp
/// auto rs = specdec::privacy::builtin_recognizers();  // email, phone, card, iban, ssn, ipv4, ipv6, secrets
/// ```
[[nodiscard]] inline std::vector<recognizer> builtin_recognizers() {
  return {
      {"email", pii_kind::email, find_emails, {"email", "mail", "contact", "address", "write"}, {}},
      {"phone",
       pii_kind::phone,
       find_phones,
       {"phone", "telephone", "tel", "mobile", "cell", "call", "fax", "contact", "whatsapp", "sms", "landline", "reach",
        "text", "ring", "dial"},
       {"isbn", "order", "invoice", "ref", "reference", "tracking", "serial", "account", "id", "total"}},
      {"payment_card",
       pii_kind::payment_card,
       find_payment_cards,
       {"card", "credit", "debit", "visa", "mastercard", "amex", "discover", "cc", "payment", "pan", "jcb"},
       {"isbn", "order", "invoice", "tracking", "serial"}},
      {"iban", pii_kind::iban, find_ibans, {"iban", "bank", "account", "transfer", "sepa", "wire", "pay"}, {}},
      {"us_ssn",
       pii_kind::us_ssn,
       find_us_ssns,
       {"ssn", "ssns", "social", "security", "taxpayer", "tin", "itin"},
       {"order", "invoice", "isbn", "tracking", "ref", "zip", "account", "phone", "id"}},
      {"ipv4",
       pii_kind::ipv4,
       find_ipv4,
       {"ip", "ipv4", "address", "host", "server", "addr", "gateway", "subnet", "dns", "ping", "connect", "router",
        "proxy", "client"},
       {"version", "ver", "release", "build", "firmware", "v", "rev", "revision", "chapter", "section", "figure",
        "table", "oid", "snmp"}},
      {"ipv6", pii_kind::ipv6, find_ipv6, {"ip", "ipv6", "address", "host", "server", "addr"}, {}},
      {"secrets",
       pii_kind::secret,
       find_secrets,
       {"key", "token", "secret", "api", "password", "bearer", "authorization", "credentials"},
       {}},
  };
}

}  // namespace specdec::privacy
