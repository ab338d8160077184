#pragma once
/// \file examples/prompt_lookup_model.hpp
/// A model specdec has never seen, adapted to `specdec::language_model`: a prompt-lookup
/// (n-gram) drafter. It has no weights; it predicts that the text repeats itself. After
/// each token it looks for the most recent earlier occurrence of the last n tokens of
/// its own history (the prompt plus everything generated so far), trying n = `max_ngram`
/// down to `min_ngram`, and proposes the token that followed that occurrence with
/// probability `confidence` (the rest spread evenly). Without a match its logits are
/// uniform, so a confidence-based fallback policy hands over to the target at once.
///
/// Cheap (no matrix products) and, on repetitive text, a useful drafter in its own right
/// (Saxena 2023, "prompt lookup decoding"). Shared by examples/custom_model.cpp and
/// tests/test_contracts_examples.cpp.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <specdec/error.hpp>
#include <specdec/model.hpp>
#include <specdec/token.hpp>

namespace example {

/// Knobs of a `prompt_lookup_model`.
struct prompt_lookup_options {
  std::size_t vocab = 32000;    ///< must equal the target's vocabulary
  std::size_t context = 4096;   ///< most tokens the history may hold
  std::size_t max_ngram = 3;    ///< longest suffix matched first
  std::size_t min_ngram = 1;    ///< shortest suffix tried; >= 1
  float confidence = 0.9f;      ///< probability of the looked-up token; in (1/vocab, 1)
};

/// ```cpp
/// example::prompt_lookup_model draft({.vocab = target.vocab_size()});
/// specdec::speculative_decoder dec(draft, target, specdec::max_prob_fallback{.alpha_fb = 0.5f},
///                                  specdec::greedy_match{});
/// ```
class prompt_lookup_model {
 public:
  explicit prompt_lookup_model(prompt_lookup_options o = {}) : opt_(o) {
    if (o.vocab < 2) throw specdec::invalid_argument("prompt_lookup_options.vocab must be >= 2");
    if (o.min_ngram == 0 || o.max_ngram < o.min_ngram)
      throw specdec::invalid_argument("prompt_lookup_options: expected 1 <= min_ngram <= max_ngram");
    if (!(o.confidence * static_cast<float>(o.vocab) > 1.0f && o.confidence < 1.0f))
      throw specdec::invalid_argument("prompt_lookup_options.confidence must be in (1/vocab, 1)");
    hit_logit_ = std::log(o.confidence);
    miss_logit_ = std::log((1.0f - o.confidence) / static_cast<float>(o.vocab - 1));
  }

  // ---- specdec::language_model ----
  [[nodiscard]] std::size_t vocab_size() const { return opt_.vocab; }
  [[nodiscard]] std::size_t context_length() const { return opt_.context; }
  [[nodiscard]] std::size_t cache_length() const { return history_.size(); }

  specdec::logits_block forward(std::span<const specdec::token_id> tokens) {
    specdec::check_token_ids(tokens, opt_.vocab, "prompt_lookup_model::forward");
    specdec::check_context(history_.size(), tokens.size(), opt_.context, "prompt_lookup_model::forward");
    out_.resize(tokens.size() * opt_.vocab);
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      history_.push_back(tokens[i]);
      const auto row = std::span(out_).subspan(i * opt_.vocab, opt_.vocab);
      if (const auto next = lookup()) {
        std::ranges::fill(row, miss_logit_);
        row[static_cast<std::size_t>(*next)] = hit_logit_;
      } else {
        std::ranges::fill(row, 0.0f);  // uniform: no idea
      }
    }
    return {out_.data(), tokens.size(), opt_.vocab};
  }

  void truncate(std::size_t n) {
    if (n < history_.size()) history_.resize(n);
  }

  /// The token that followed the most recent earlier occurrence of the history's longest
  /// matching suffix (n from max_ngram down to min_ngram), if any.
  [[nodiscard]] std::optional<specdec::token_id> lookup() const {
    const std::size_t len = history_.size();
    for (std::size_t n = std::min(opt_.max_ngram, len); n >= opt_.min_ngram && n > 0; --n) {
      const auto suffix = std::span(history_).last(n);
      // Earlier occurrences end before the last token; the most recent one wins.
      for (std::size_t end = len - 1; end >= n; --end) {
        if (std::ranges::equal(std::span(history_).subspan(end - n, n), suffix)) return history_[end];
      }
    }
    return std::nullopt;
  }

 private:
  prompt_lookup_options opt_;
  std::vector<specdec::token_id> history_;
  std::vector<float> out_;
  float hit_logit_ = 0.0f;
  float miss_logit_ = 0.0f;
};

static_assert(specdec::language_model<prompt_lookup_model>);

}  // namespace example
