#pragma once
/// \file model.hpp
/// The language-model concept every draft and target satisfies, built from small named
/// concepts so that a failed constraint names the member that is missing.
#include <concepts>
#include <cstddef>
#include <span>
#include <string>
#include <utility>

#include "specdec/error.hpp"
#include "specdec/token.hpp"

namespace specdec {

/// `m.vocab_size()` on a const model gives the number of token ids it scores.
///
/// ```cpp
/// struct my_model { std::size_t vocab_size() const { return 32000; } /* ... */ };
/// static_assert(specdec::has_vocabulary<my_model>);
/// ```
template <class M>
concept has_vocabulary = requires(const M& m) {
  { m.vocab_size() } -> std::convertible_to<std::size_t>;
};

/// `m.context_length()` is the most tokens the model's cache can hold, and
/// `m.cache_length()` how many it holds now.
///
/// ```cpp
/// struct my_model {
///   std::size_t context_length() const { return 2048; }
///   std::size_t cache_length() const { return n_; }
/// };
/// ```
template <class M>
concept has_context = requires(const M& m) {
  { m.context_length() } -> std::convertible_to<std::size_t>;
  { m.cache_length() } -> std::convertible_to<std::size_t>;
};

/// `m.forward(tokens)` appends a block of k tokens to the cache and returns k rows of
/// next-token logits; row i is conditioned on the cache plus tokens[0..i].
///
/// ```cpp
/// std::vector<specdec::token_id> block{17, 42, 7};
/// specdec::logits_block out = model.forward(block);  // out.rows == 3
/// ```
template <class M>
concept has_block_forward = requires(M& m, std::span<const token_id> tokens) {
  { m.forward(tokens) } -> std::same_as<logits_block>;
};

/// `m.truncate(n)` keeps the first n cached tokens and forgets the rest; afterwards the
/// model behaves exactly as a fresh model that was fed those n tokens.
///
/// ```cpp
/// model.truncate(model.cache_length() - 2);  // roll back two rejected tokens
/// ```
template <class M>
concept has_truncate = requires(M& m, std::size_t n) { m.truncate(n); };

/// A causal language model with a rollback-able cache: the one concept both the draft
/// and the target of a speculative decoder satisfy.
///
/// ```cpp
/// template <specdec::language_model M>
/// specdec::token_id greedy_next(M& m, specdec::token_id t) {
///   auto row = m.forward(std::span(&t, 1)).row(0);
///   return static_cast<specdec::token_id>(std::ranges::max_element(row) - row.begin());
/// }
/// ```
template <class M>
concept language_model =
    has_vocabulary<M> && has_context<M> && has_block_forward<M> && has_truncate<M>;

/// Forward a single token; convenience over the block forward.
template <language_model M>
logits_block forward_one(M& m, token_id t) {
  return m.forward(std::span<const token_id>(&t, 1));
}

/// Throws `vocabulary_mismatch` unless draft and target score the same vocabulary.
template <has_vocabulary Draft, has_vocabulary Target>
void check_same_vocabulary(const Draft& draft, const Target& target) {
  const auto dv = static_cast<std::size_t>(draft.vocab_size());
  const auto tv = static_cast<std::size_t>(target.vocab_size());
  if (dv != tv) {
    throw vocabulary_mismatch("draft vocab_size " + std::to_string(dv) +
                              " differs from target vocab_size " + std::to_string(tv) +
                              "; expected both models to share one vocabulary");
  }
}

}  // namespace specdec
