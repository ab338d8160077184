#pragma once
/// \file examples/prompt_lookup_drafter.hpp
/// A drafter specdec has never seen, written against `specdec::token_drafter`: prompt
/// lookup (n-gram) drafting. It has no weights and no distribution; it predicts that the
/// text repeats itself. It looks for the most recent earlier occurrence of the last n
/// tokens of the committed sequence (the prompt plus everything generated so far), trying
/// n = `max_ngram` down to `min_ngram`, and proposes the tokens that followed it. With no
/// match it proposes nothing, and the target writes the next token alone.
///
/// Since it emits ids only, verification treats its proposals as one-hot: greedy and
/// rejection-sampling output stay exactly the target's (Saxena 2023, "prompt lookup
/// decoding"). Shared by examples/custom_model.cpp and tests/test_contracts_examples.cpp.
#include <algorithm>
#include <cstddef>
#include <span>
#include <vector>

#include <specdec/draft.hpp>
#include <specdec/error.hpp>
#include <specdec/token.hpp>

namespace example {

/// Knobs of a `prompt_lookup_drafter`.
struct prompt_lookup_options {
  std::size_t max_ngram = 3;  ///< longest suffix matched first
  std::size_t min_ngram = 1;  ///< shortest suffix tried; >= 1
};

/// ```cpp
/// example::prompt_lookup_drafter draft;
/// specdec::speculative_decoder dec(draft, target, specdec::fixed_gamma{.gamma = 8}, specdec::greedy_match{});
/// ```
class prompt_lookup_drafter {
 public:
  explicit prompt_lookup_drafter(prompt_lookup_options o = {}) : opt_(o) {
    if (o.min_ngram == 0 || o.max_ngram < o.min_ngram)
      throw specdec::invalid_argument("prompt_lookup_options: expected 1 <= min_ngram <= max_ngram, got min_ngram = " +
                                      std::to_string(o.min_ngram) + ", max_ngram = " + std::to_string(o.max_ngram));
  }

  /// Up to `max` tokens that followed the most recent earlier occurrence of the longest
  /// matching suffix of `seq` (n from max_ngram down to min_ngram); none without a match.
  std::span<const specdec::token_id> propose(std::span<const specdec::token_id> seq, std::size_t max) {
    out_.clear();
    const std::size_t len = seq.size();
    for (std::size_t n = std::min(opt_.max_ngram, len); n >= opt_.min_ngram && n > 0; --n) {
      const auto suffix = seq.last(n);
      // Earlier occurrences end before the last token; the most recent one wins.
      for (std::size_t end = len - 1; end >= n; --end) {
        if (!std::ranges::equal(seq.subspan(end - n, n), suffix)) continue;
        for (std::size_t j = end; j < len && out_.size() < max; ++j) out_.push_back(seq[j]);
        return out_;
      }
    }
    return out_;
  }

 private:
  prompt_lookup_options opt_;
  std::vector<specdec::token_id> out_;
};

static_assert(specdec::token_drafter<prompt_lookup_drafter>);

}  // namespace example
