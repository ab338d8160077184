#pragma once
/// \file redaction.hpp
/// Opt-in redaction for the cloud-only route: detected spans are replaced by placeholders
/// such as `<EMAIL_1>` before the prompt leaves the device, and the placeholders are put
/// back into the text the cloud returns. The mapping never leaves the device.
///
/// Numbering is per kind and per distinct value: the same address twice becomes the same
/// placeholder, so the cloud model sees that they are equal. Numbers that already appear
/// in the prompt as placeholder-like text are skipped, so a user's literal "<EMAIL_1>" is
/// never confused with a redacted value.
///
/// Models repeat, drop and mangle placeholders. `restore` replaces every occurrence, reports
/// the placeholders the output never mentions (`missing`) and those it invented
/// (`unknown`, left as written), and accepts common manglings: any letter case, `[...]`,
/// `{...}` or `(...)` instead of angle brackets, HTML-escaped `&lt;...&gt;`, a space or
/// hyphen for the underscore or none at all, spaces inside the brackets, a lost closing
/// bracket. Without brackets only the exact `EMAIL_1` form counts, so ordinary words
/// ("email 1") are never replaced.
///
/// Split routes (speculative, cloud_prefix) must see the same context on both sides, so
/// they never redact; `may_leave_device` (policy.hpp) allows a redacted payload only on the
/// cloud route.
///
/// ```cpp
/// specdec::privacy::pii_detector detector;
/// std::string prompt = "Reply to jane@example.org about invoice 7.";
/// auto red = specdec::privacy::redact(prompt, detector.find(prompt));
/// // red.text == "Reply to <EMAIL_1> about invoice 7."
/// auto back = specdec::privacy::restore("Sure, I will write to <email_1>.", red);
/// // back.text == "Sure, I will write to jane@example.org."
/// ```
#include <algorithm>
#include <array>
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/privacy/recognizers.hpp"

namespace specdec::privacy {

/// One placeholder and the value it stands for.
///
/// ```cpp
/// specdec::privacy::redaction_entry e{"<EMAIL_1>", "jane@example.org", specdec::privacy::pii_kind::email, 1};
/// ```
struct redaction_entry {
  std::string placeholder;  ///< as written into the redacted text, e.g. "<EMAIL_1>"
  std::string original;     ///< the value it replaced
  pii_kind kind = pii_kind::email;
  unsigned number = 0;  ///< the 1-based number within its kind
};

/// A redacted text and its mapping (device-side only).
///
/// ```cpp
/// std::vector<specdec::privacy::pii_span> spans{{.begin = 3, .end = 11, .kind = specdec::privacy::pii_kind::ipv4}};
/// auto red = specdec::privacy::redact("ip 10.1.2.3", spans);
/// // red.text == "ip <IPV4_1>", red.entries[0].original == "10.1.2.3"
/// ```
struct redaction {
  std::string text;
  std::vector<redaction_entry> entries;

  /// The entry of placeholder `kind`/`number`, or null.
  [[nodiscard]] const redaction_entry* lookup(pii_kind kind, unsigned number) const noexcept {
    for (const auto& e : entries)
      if (e.kind == kind && e.number == number) return &e;
    return nullptr;
  }
};

/// What `restore` produced and what it noticed.
///
/// ```cpp
/// specdec::privacy::restoration r = specdec::privacy::restore("no placeholders", {});
/// // r.text == "no placeholders", r.restored == 0
/// ```
struct restoration {
  std::string text;
  std::size_t restored = 0;          ///< placeholders replaced (repeats counted)
  std::vector<std::string> missing;  ///< placeholders of the mapping the output never mentions
  std::vector<std::string> unknown;  ///< placeholder-like text that is not in the mapping, left as is
};

namespace detail {

struct placeholder_match {
  pii_kind kind = pii_kind::email;
  unsigned number = 0;
  std::size_t end = 0;  ///< one past the match
};

/// A placeholder (in any accepted mangling, see the file comment) starting at `at`.
inline std::optional<placeholder_match> match_placeholder(std::string_view t, std::size_t at) {
  static constexpr std::array<std::pair<std::string_view, std::string_view>, 6> brackets{
      {{"<", ">"}, {"[", "]"}, {"{", "}"}, {"(", ")"}, {"&lt;", "&gt;"}, {"\\<", "\\>"}}};
  std::size_t p = at;
  std::string_view close{};
  for (const auto& [o, c] : brackets)
    if (t.substr(p).starts_with(o)) {
      close = c;
      p += o.size();
      break;
    }
  const bool bracketed = !close.empty();
  if (!bracketed && at > 0 && is_word(t[at - 1])) return std::nullopt;
  if (bracketed)
    for (int k = 0; k < 2 && p < t.size() && t[p] == ' '; ++k) ++p;
  for (auto kind : all_pii_kinds) {
    const std::string_view name = to_string(kind);
    std::size_t q = p;
    bool ok = true;
    for (std::size_t k = 0; k < name.size() && ok; ++k) {
      if (q >= t.size()) {
        ok = false;
      } else if (name[k] == '_') {  // "US_SSN": '_', ' ', '-' or nothing inside brackets
        if (t[q] == '_')
          ++q;
        else if (bracketed && (t[q] == ' ' || t[q] == '-'))
          ++q;
        else if (!bracketed)
          ok = false;
      } else {
        ok = bracketed ? to_lower(t[q]) == to_lower(name[k]) : t[q] == name[k];
        ++q;
      }
    }
    if (!ok) continue;
    if (q < t.size() && t[q] == '_')
      ++q;
    else if (bracketed && q < t.size() && (t[q] == ' ' || t[q] == '-'))
      ++q;
    else if (!bracketed)
      continue;
    const std::size_t digits = run_length(t, q, is_digit);
    if (digits == 0 || digits > 6 || t[q] == '0') continue;
    unsigned number = 0;
    for (std::size_t k = 0; k < digits; ++k) number = number * 10 + static_cast<unsigned>(t[q + k] - '0');
    q += digits;
    if (bracketed) {
      std::size_t r = q;
      for (int k = 0; k < 2 && r < t.size() && t[r] == ' '; ++k) ++r;
      if (t.substr(r).starts_with(close))
        q = r + close.size();
      else if (close.size() > 1)
        return std::nullopt;  // "\<EMAIL_1>" is a backslash and a placeholder, not an unclosed "\<"
    } else if (q < t.size() && is_word(t[q])) {
      continue;
    }
    return placeholder_match{kind, number, q};
  }
  return std::nullopt;
}

/// Whether byte `c` can start a placeholder.
constexpr bool may_start_placeholder(char c) noexcept {
  switch (c) {
    case '<':
    case '[':
    case '{':
    case '(':
    case '&':
    case '\\':
    case 'E':
    case 'P':
    case 'C':
    case 'I':
    case 'U':
    case 'S': return true;
    default: return false;
  }
}

}  // namespace detail

/// Replaces each span of `text` by its placeholder. `spans` must be sorted by `begin`,
/// disjoint and inside the text (as `pii_detector::find` returns them); otherwise throws
/// `invalid_argument` naming the offending span.
///
/// ```cpp
/// std::string s = "a@b.org or a@b.org";
/// auto red = specdec::privacy::redact(s, specdec::privacy::pii_detector{}.find(s));
/// // red.text == "<EMAIL_1> or <EMAIL_1>", one entry
/// ```
[[nodiscard]] inline redaction redact(std::string_view text, std::span<const pii_span> spans) {
  std::array<unsigned, pii_kind_count> next{};  // last number used per kind
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (!detail::may_start_placeholder(text[i])) continue;
    if (auto m = detail::match_placeholder(text, i)) {
      auto& n = next[static_cast<std::size_t>(m->kind)];
      n = std::max(n, m->number);
    }
  }
  redaction out;
  out.text.reserve(text.size());
  std::size_t copied = 0;
  for (std::size_t i = 0; i < spans.size(); ++i) {
    const auto& s = spans[i];
    if (s.begin >= s.end || s.end > text.size() || s.begin < copied)
      throw invalid_argument("redact: span " + std::to_string(i) + " [" + std::to_string(s.begin) + ", " +
                             std::to_string(s.end) + ") must be non-empty, inside the text (" +
                             std::to_string(text.size()) + " bytes) and after the previous span (ending at " +
                             std::to_string(copied) + ")");
    const std::string_view value = text.substr(s.begin, s.size());
    const redaction_entry* entry = nullptr;
    for (const auto& e : out.entries)
      if (e.kind == s.kind && e.original == value) entry = &e;
    if (entry == nullptr) {
      const unsigned number = ++next[static_cast<std::size_t>(s.kind)];
      std::string placeholder(1, '<');
      placeholder.append(to_string(s.kind)).append("_").append(std::to_string(number)).push_back('>');
      out.entries.push_back({std::move(placeholder), std::string(value), s.kind, number});
      entry = &out.entries.back();
    }
    out.text.append(text.substr(copied, s.begin - copied));
    out.text.append(entry->placeholder);
    copied = s.end;
  }
  out.text.append(text.substr(copied));
  return out;
}

/// Puts the original values back into a text the cloud returned for `r.text`.
///
/// ```cpp
/// specdec::privacy::redaction red{"call <PHONE_1>", {{"<PHONE_1>", "+1 415 555 2671",
///                                                     specdec::privacy::pii_kind::phone, 1}}};
/// auto back = specdec::privacy::restore("Calling [phone 1] now; PHONE_1 again", red);
/// // back.text == "Calling +1 415 555 2671 now; +1 415 555 2671 again", back.restored == 2
/// ```
[[nodiscard]] inline restoration restore(std::string_view output, const redaction& r) {
  restoration out;
  out.text.reserve(output.size());
  std::vector<bool> seen(r.entries.size(), false);
  std::size_t i = 0;
  while (i < output.size()) {
    if (detail::may_start_placeholder(output[i])) {
      if (auto m = detail::match_placeholder(output, i)) {
        if (const auto* e = r.lookup(m->kind, m->number)) {
          out.text.append(e->original);
          ++out.restored;
          seen[static_cast<std::size_t>(e - r.entries.data())] = true;
        } else {
          out.text.append(output.substr(i, m->end - i));
          out.unknown.emplace_back(output.substr(i, m->end - i));
        }
        i = m->end;
        continue;
      }
    }
    out.text.push_back(output[i++]);
  }
  for (std::size_t k = 0; k < r.entries.size(); ++k)
    if (!seen[k]) out.missing.push_back(r.entries[k].placeholder);
  return out;
}

}  // namespace specdec::privacy
