#pragma once
/// \file detector.hpp
/// The on-device PII detector: runs a set of recognizers (recognizers.hpp) over a prompt,
/// adjusts each candidate's score by the context words before it, keeps the candidates at
/// or above a threshold, resolves overlaps, and turns the result into a privacy decision.
///
/// Scores follow Presidio's convention: a recognizer's base score says how specific its
/// pattern and validation are (a Luhn-valid card with a known issuer 0.9, a bare nine-digit
/// string that passes the SSN rules 0.15); a context word of the recognizer ("ssn",
/// "phone", "iban", ...) among the `context_bytes` bytes before the span adds
/// `context_boost`, a negative context word ("version" before an IPv4-shaped string,
/// "order" before a digit string) among the `negative_context_words` words right before it,
/// in the same sentence, subtracts `negative_context_penalty` (a negative word qualifies
/// the number right after it, not a later sentence's). Spans scoring at
/// least `threshold` are reported; where spans overlap, the higher score (then the longer
/// span) wins.
///
/// A request's decision is the most restrictive of the class its caller declared and, if
/// any span was found, `on_detection` (`local_only` by default; `redactable` is the opt-in
/// that lets the cloud-only route send the prompt with placeholders, redaction.hpp).
///
/// ```cpp
/// specdec::privacy::pii_detector detector;  // every built-in recognizer
/// auto d = detector.analyze("My SSN is 536-22-1492, call me at (415) 555-2671.");
/// // d.spans: US_SSN [10, 21), PHONE [34, 48); d.decision == privacy_class::local_only
/// ```
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/privacy/policy.hpp"
#include "specdec/privacy/recognizers.hpp"

namespace specdec::privacy {

/// Knobs of a `pii_detector`.
///
/// ```cpp
/// specdec::privacy::detector_options o{.threshold = 0.6f,
///                                      .on_detection = specdec::privacy::privacy_class::redactable};
/// o.validate();
/// ```
struct detector_options {
  float threshold = 0.5f;                                  ///< in [0, 1]: report spans scoring at least this
  std::size_t context_bytes = 64;                          ///< how far before a span context words count
  std::size_t negative_context_words = 2;                  ///< how many words before a span negative words count
  float context_boost = 0.35f;                             ///< >= 0, added for a context word
  float negative_context_penalty = 0.4f;                   ///< >= 0, subtracted for a negative context word
  privacy_class on_detection = privacy_class::local_only;  ///< the class a detected span imposes

  void validate() const {
    if (!(threshold >= 0.0f && threshold <= 1.0f))
      throw invalid_argument("detector_options.threshold must be in [0, 1], got " + std::to_string(threshold));
    if (!(context_boost >= 0.0f) || !std::isfinite(context_boost))
      throw invalid_argument("detector_options.context_boost must be finite and >= 0, got " +
                             std::to_string(context_boost));
    if (!(negative_context_penalty >= 0.0f) || !std::isfinite(negative_context_penalty))
      throw invalid_argument("detector_options.negative_context_penalty must be finite and >= 0, got " +
                             std::to_string(negative_context_penalty));
    if (context_bytes > 4096)
      throw invalid_argument("detector_options.context_bytes must be <= 4096, got " + std::to_string(context_bytes));
    if (negative_context_words > 64)
      throw invalid_argument("detector_options.negative_context_words must be <= 64, got " +
                             std::to_string(negative_context_words));
  }
};

/// What the detector found in a text and what it means for the request.
///
/// ```cpp
/// specdec::privacy::detection d = specdec::privacy::pii_detector{}.analyze("nothing personal here");
/// bool local = d.decision == specdec::privacy::privacy_class::local_only;  // false
/// ```
struct detection {
  std::vector<pii_span> spans;                            ///< sorted by `begin`, disjoint
  privacy_class declared = privacy_class::cloud_allowed;  ///< what the caller said
  privacy_class decision = privacy_class::cloud_allowed;  ///< what the request may do

  [[nodiscard]] bool found() const noexcept { return !spans.empty(); }
  /// Spans per kind, indexed by `static_cast<std::size_t>(pii_kind)`.
  [[nodiscard]] std::array<std::uint32_t, pii_kind_count> counts() const noexcept {
    std::array<std::uint32_t, pii_kind_count> c{};
    for (const auto& s : spans) ++c[static_cast<std::size_t>(s.kind)];
    return c;
  }
};

namespace detail {

/// Whether one of `words` (lower case) occurs as a whole word in t[from, to) (a word cut
/// by `from` does not count).
inline bool has_context_word(std::string_view t, std::size_t from, std::size_t to,
                             const std::vector<std::string>& words) {
  if (words.empty()) return false;
  std::size_t p = from;
  if (p > 0)
    while (p < to && is_alnum(t[p - 1]) && is_alnum(t[p])) ++p;
  while (p < to) {
    while (p < to && !is_alnum(t[p])) ++p;
    std::size_t q = p;
    while (q < to && is_alnum(t[q])) ++q;
    if (q == to && q < t.size() && is_alnum(t[q])) break;  // cut by the span: not a word of the window
    const std::string_view w = t.substr(p, q - p);
    for (const auto& c : words) {
      if (c.size() != w.size()) continue;
      bool eq = true;
      for (std::size_t k = 0; k < w.size() && eq; ++k) eq = to_lower(w[k]) == c[k];
      if (eq) return true;
    }
    p = q;
  }
  return false;
}

/// Whether one of `words` (lower case) is among the `max_words` words right before `at`,
/// not looking past the end of a sentence (". ", "! ", "? ", ";" or a line break).
inline bool has_preceding_word(std::string_view t, std::size_t at, std::size_t max_words,
                               const std::vector<std::string>& words) {
  if (words.empty()) return false;
  std::size_t p = at;
  for (std::size_t n = 0; n < max_words; ++n) {
    while (p > 0 && !is_alnum(t[p - 1])) {
      const char c = t[p - 1];
      if (c == ';' || c == '\n' || ((c == '.' || c == '!' || c == '?') && p < t.size() && t[p] == ' ')) return false;
      --p;
    }
    const std::size_t q = p;
    while (p > 0 && is_alnum(t[p - 1])) --p;
    if (p == q) return false;
    if (has_context_word(t, p, q, words)) return true;
  }
  return false;
}

}  // namespace detail

/// Runs recognizers over text; see the file comment for scoring and overlaps. `find` and
/// `analyze` are const and keep no state between calls: one detector may serve many threads.
///
/// ```cpp
/// specdec::privacy::pii_detector d({.threshold = 0.5f});
/// for (const auto& s : d.find("write to jane@example.org"))
///   std::cout << to_string(s.kind) << ' ' << s.begin << ' ' << s.end << '\n';  // EMAIL 9 25
/// ```
class pii_detector {
 public:
  /// The built-in recognizers (`builtin_recognizers()`).
  explicit pii_detector(detector_options options = {}) : pii_detector(builtin_recognizers(), options) {}

  /// Any set of recognizers; each needs a `find` function.
  pii_detector(std::vector<recognizer> recognizers, detector_options options)
      : recognizers_(std::move(recognizers)), options_(options) {
    options_.validate();
    for (std::size_t i = 0; i < recognizers_.size(); ++i)
      if (!recognizers_[i].find)
        throw invalid_argument("pii_detector: recognizer " + std::to_string(i) + " ('" +
                               std::string(recognizers_[i].name) + "') has no find function");
  }

  /// Adds a recognizer (e.g. a domain-specific identifier).
  pii_detector& add(recognizer r) {
    if (!r.find)
      throw invalid_argument("pii_detector::add: recognizer '" + std::string(r.name) + "' has no find function");
    recognizers_.push_back(std::move(r));
    return *this;
  }

  /// Spans scoring at least the threshold after context, disjoint, sorted by `begin`.
  [[nodiscard]] std::vector<pii_span> find(std::string_view text) const {
    std::vector<pii_span> kept, candidates;
    for (const auto& r : recognizers_) {
      candidates.clear();
      r.find(text, candidates);
      for (auto s : candidates) {
        if (s.begin >= s.end || s.end > text.size())
          throw invalid_argument("pii_detector: recognizer '" + std::string(r.name) + "' returned span [" +
                                 std::to_string(s.begin) + ", " + std::to_string(s.end) + ") outside a text of " +
                                 std::to_string(text.size()) + " bytes");
        if (s.recognizer.empty()) s.recognizer = r.name;
        const std::size_t from = s.begin > options_.context_bytes ? s.begin - options_.context_bytes : 0;
        if (detail::has_context_word(text, from, s.begin, r.context)) s.score += options_.context_boost;
        if (detail::has_preceding_word(text, s.begin, options_.negative_context_words, r.negative_context))
          s.score -= options_.negative_context_penalty;
        s.score = std::clamp(s.score, 0.0f, 1.0f);
        if (s.score >= options_.threshold) kept.push_back(s);
      }
    }
    // Overlaps: the higher score, then the longer span, then the earlier one wins.
    std::sort(kept.begin(), kept.end(), [](const pii_span& a, const pii_span& b) {
      if (a.score != b.score) return a.score > b.score;
      if (a.size() != b.size()) return a.size() > b.size();
      return a.begin < b.begin;
    });
    std::vector<pii_span> result;
    std::map<std::size_t, std::size_t> taken;  // begin -> end of the kept spans (disjoint)
    for (const auto& s : kept) {
      // Among disjoint spans that begin before s ends, the last one ends last: only it can overlap.
      auto it = taken.lower_bound(s.end);
      if (it != taken.begin() && std::prev(it)->second > s.begin) continue;
      taken.emplace(s.begin, s.end);
      result.push_back(s);
    }
    std::sort(result.begin(), result.end(), [](const pii_span& a, const pii_span& b) { return a.begin < b.begin; });
    return result;
  }

  /// The spans and the request's class: `declared` if nothing was found, otherwise the
  /// more restrictive of `declared` and `options().on_detection`.
  [[nodiscard]] detection analyze(std::string_view text, privacy_class declared = privacy_class::cloud_allowed) const {
    detection d{find(text), declared, declared};
    if (d.found()) d.decision = most_restrictive(declared, options_.on_detection);
    return d;
  }

  [[nodiscard]] const detector_options& options() const noexcept { return options_; }
  [[nodiscard]] std::span<const recognizer> recognizers() const noexcept { return recognizers_; }

 private:
  std::vector<recognizer> recognizers_;
  detector_options options_;
};

}  // namespace specdec::privacy
