#pragma once
/// \file rollback.hpp
/// Rollback policies: which drafted tokens survive the target's verification and which
/// token replaces the first rejected one (or is added as a bonus when all survive).
#include <concepts>
#include <cstddef>
#include <span>

#include "specdec/sampling.hpp"
#include "specdec/token.hpp"

namespace specdec {

/// Everything a rollback policy may read about one verified block of k drafted tokens.
/// Row i of `q` is the distribution drafted token i was drawn from; row i of `p` is the
/// target's distribution for the same position after the same temperature/top-k/top-p,
/// and row k of `p` (one more row) is the target's distribution after the whole block.
/// `target_logits` are the raw target logits, k+1 rows.
struct verify_input {
  std::span<const token_id> drafted;  ///< k drafted tokens
  std::span<const float> q;           ///< k x vocab, row-major
  std::span<const float> p;           ///< (k+1) x vocab, row-major
  std::span<const float> target_logits;  ///< (k+1) x vocab, row-major
  std::size_t vocab = 0;
  const sampling_params* params = nullptr;  ///< the sampling params both sides used
  random_source* rng = nullptr;             ///< the decoder's seeded random source

  [[nodiscard]] std::size_t k() const noexcept { return drafted.size(); }
  [[nodiscard]] std::span<const float> q_row(std::size_t i) const { return q.subspan(i * vocab, vocab); }
  [[nodiscard]] std::span<const float> p_row(std::size_t i) const { return p.subspan(i * vocab, vocab); }
  [[nodiscard]] std::span<const float> logits_row(std::size_t i) const {
    return target_logits.subspan(i * vocab, vocab);
  }
};

/// The verdict: the first `accepted` drafted tokens survive, then `next` follows (the
/// replacement for the first rejected token, or the bonus token when all survived).
struct verify_result {
  std::size_t accepted = 0;
  token_id next = 0;
};

/// `r.verify(in)` returns a `verify_result` with `accepted <= in.k()`.
///
/// ```cpp
/// struct accept_none {
///   static constexpr bool exact = false;
///   specdec::verify_result verify(const specdec::verify_input& in) {
///     return {0, specdec::argmax(in.p_row(0))};
///   }
/// };
/// ```
template <class R>
concept has_verify = requires(R& r, const verify_input& in) {
  { r.verify(in) } -> std::same_as<verify_result>;
};

/// `R::exact` says whether the policy preserves the target's output distribution; the
/// decoder never emits unverified drafts for exact policies, while lossy ones (BiLD)
/// may end a generation on drafted tokens that no target call has checked.
template <class R>
concept declares_exactness = requires {
  { R::exact } -> std::convertible_to<bool>;
};

/// A rollback policy. See `rejection_sampling`, `greedy_match`, `distance_rollback`
/// (BiLD), `typical_acceptance`.
template <class R>
concept rollback_policy = has_verify<R> && declares_exactness<R>;

}  // namespace specdec
