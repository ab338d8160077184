#pragma once
/// \file rollback.hpp
/// Rollback policies: which drafted tokens survive the target's verification and which
/// token replaces the first rejected one (or is added as a bonus when all survive).
///
/// | policy                  | exact | knobs (defaults)                                  |
/// |-------------------------|-------|---------------------------------------------------|
/// | `rejection_sampling`    | yes   | none (Leviathan et al. / Chen et al.)             |
/// | `greedy_match`          | yes   | none (argmax agreement)                           |
/// | `distance_rollback<D>`  | no    | alpha_rb = 5, metric D = drafted_cross_entropy    |
/// |                         |       | (BiLD)                                            |
/// | `typical_acceptance`    | no    | epsilon = 0.09, delta = 0.3 (Medusa)              |
///
/// Randomness: every random draw is `in.rng->uniform()`, taken in a fixed order (position
/// by position, then the replacement/bonus draw), and a draw is taken only when its
/// outcome is actually random (an acceptance probability strictly between 0 and 1, a
/// distribution with more than one non-zero entry). So the same seed gives the same
/// tokens, and greedy (one-hot) inputs consume no randomness, as with `sampler`.
#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "specdec/distance.hpp"
#include "specdec/error.hpp"
#include "specdec/sampling.hpp"
#include "specdec/token.hpp"
#include "specdec/validation.hpp"

namespace specdec {

/// Everything a rollback policy may read about one verified block of k drafted tokens.
/// Row i of `q` is the distribution drafted token i was drawn from; row i of `p` is the
/// target's distribution for the same position after the same temperature/top-k/top-p,
/// and row k of `p` (one more row) is the target's distribution after the whole block.
/// `target_logits` are the raw target logits, k+1 rows.
///
/// ```cpp
/// specdec::verify_input in{drafted, q, p, logits, vocab, &params, &rng};
/// specdec::verify_result r = specdec::rejection_sampling{}.verify(in);
/// ```
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
///
/// ```cpp
/// out.insert(out.end(), drafted.begin(), drafted.begin() + r.accepted);
/// out.push_back(r.next);
/// ```
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

namespace detail::rollback_impl {

/// Throws `invalid_argument` (naming `who`) unless the spans of `in` have the shapes the
/// struct documents, every drafted id is in range, and the pointers the policy needs are set.
inline void check_input(const verify_input& in, const char* who, bool needs_logits, bool needs_rng,
                        bool needs_params) {
  const auto bad = [&](const std::string& what) {
    throw invalid_argument(std::string(who) + ": " + what);
  };
  const std::size_t k = in.k();
  const std::size_t v = in.vocab;
  if (v == 0) bad("verify_input.vocab is 0; expected the vocabulary size (>= 1)");
  if (in.q.size() < k * v)
    bad("verify_input.q has " + std::to_string(in.q.size()) + " entries; expected k * vocab = " +
        std::to_string(k * v));
  if (in.p.size() < (k + 1) * v)
    bad("verify_input.p has " + std::to_string(in.p.size()) + " entries; expected (k + 1) * vocab = " +
        std::to_string((k + 1) * v));
  if (needs_logits && in.target_logits.size() < (k + 1) * v)
    bad("verify_input.target_logits has " + std::to_string(in.target_logits.size()) +
        " entries; expected (k + 1) * vocab = " + std::to_string((k + 1) * v));
  if (needs_rng && in.rng == nullptr) bad("verify_input.rng is null; expected a random source");
  if (needs_params && in.params == nullptr) bad("verify_input.params is null; expected the sampling params");
  check_token_ids(in.drafted, v, who);
}

/// A draw from the (unnormalised, non-negative) distribution `probs`: the only non-zero
/// entry without consuming randomness if there is exactly one, else `sample_from` with
/// one `rng.uniform()`.
inline token_id draw(std::span<const float> probs, random_source& rng) {
  const auto positive = [](float x) { return x > 0.0f; };
  const auto first = std::ranges::find_if(probs, positive);
  if (first == probs.end()) throw invalid_argument("rollback: distribution has no positive mass");
  if (std::find_if(first + 1, probs.end(), positive) == probs.end())
    return static_cast<token_id>(first - probs.begin());
  return sample_from(probs, rng.uniform());
}

/// The target's own token for row i: the argmax of its logits when greedy, else a draw
/// from its processed distribution p_i.
inline token_id target_token(const verify_input& in, std::size_t i) {
  if (in.params->greedy()) return argmax(in.logits_row(i));
  return draw(in.p_row(i), *in.rng);
}

}  // namespace detail::rollback_impl

/// Speculative sampling (Leviathan et al. 2023, Alg. 1; Chen et al. 2023): accept drafted
/// token x_i with probability min(1, p_i(x) / q_i(x)); on the first rejection replace it
/// by a draw from the normalised residual max(0, p_i - q_i) (from p_i itself if rounding
/// left the residual without mass); if all k survive, add a bonus draw from p_k. The
/// emitted tokens are distributed exactly as the target's. At temperature 0 (one-hot p
/// and q) it is exactly `greedy_match` and consumes no randomness.
///
/// Needs `in.rng` (only consumed when an outcome is random); ignores `in.params`.
///
/// ```cpp
/// specdec::rejection_sampling policy{};
/// specdec::verify_result r = policy.verify(in);  // in.drafted[0..r.accepted), then r.next
/// ```
struct rejection_sampling {
  static constexpr bool exact = true;

  void validate() const noexcept {}
  void reset() noexcept {}

  [[nodiscard]] verify_result verify(const verify_input& in) const {
    detail::rollback_impl::check_input(in, "rejection_sampling::verify", false, true, false);
    const std::size_t k = in.k();
    for (std::size_t i = 0; i < k; ++i) {
      const auto x = static_cast<std::size_t>(in.drafted[i]);
      const auto p = in.p_row(i);
      const auto q = in.q_row(i);
      const float px = p[x];
      const float qx = q[x];
      if (!(qx > 0.0f))
        throw invalid_argument("rejection_sampling::verify: drafted token " + std::to_string(x) +
                               " at position " + std::to_string(i) + " has draft probability " +
                               detail::format_value(qx) +
                               "; expected > 0 (it must have been drawn from q)");
      // Accept with probability min(1, px / qx): certain when px >= qx, impossible when
      // px == 0; otherwise u * qx < px (no division).
      if (px >= qx) continue;
      if (px > 0.0f && in.rng->uniform() * static_cast<double>(qx) < static_cast<double>(px)) continue;
      thread_local std::vector<float> residual;
      residual.resize(in.vocab);
      std::ranges::transform(p, q, residual.begin(), [](float a, float b) { return std::max(0.0f, a - b); });
      const bool has_mass = std::ranges::any_of(residual, [](float r) { return r > 0.0f; });
      const token_id next = has_mass ? detail::rollback_impl::draw(residual, *in.rng)
                                     : detail::rollback_impl::draw(p, *in.rng);
      return {i, next};
    }
    return {k, detail::rollback_impl::draw(in.p_row(k), *in.rng)};
  }
};

/// Greedy verification: drafted token i survives while it equals the first argmax of the
/// target's logits row i; `next` is the argmax of the first mismatching row, or of row k
/// (the bonus) when all match. Exact for greedy decoding; reads only `target_logits`.
///
/// ```cpp
/// specdec::greedy_match policy{};
/// specdec::verify_result r = policy.verify(in);
/// ```
struct greedy_match {
  static constexpr bool exact = true;

  void validate() const noexcept {}
  void reset() noexcept {}

  [[nodiscard]] verify_result verify(const verify_input& in) const {
    detail::rollback_impl::check_input(in, "greedy_match::verify", true, false, false);
    const std::size_t k = in.k();
    std::size_t i = 0;
    token_id target = argmax(in.logits_row(0));
    while (i < k && in.drafted[i] == target) {
      ++i;
      target = argmax(in.logits_row(i));
    }
    return {i, target};
  }
};

/// BiLD's rollback (arXiv 2302.07863, Sec. 3.3): the big model rolls back to the first
/// drafted position m where metric(q_m, p_m, x_m) > alpha_rb and writes its own token
/// there (argmax of its logits when greedy, else a draw from p_m). If no position is over
/// the threshold every drafted token is kept and the target adds its token from row k.
/// Lossy: the output is not distributed as the target's.
///
/// With the default `drafted_cross_entropy` (-log p_L(x)), alpha_rb = 0 rolls back at the
/// first position where the target is not certain of the drafted token, and +inf never
/// rolls back.
///
/// ```cpp
/// specdec::distance_rollback<> bild{.alpha_rb = 2.0f};                  // -log p_L(x) > 2
/// specdec::distance_rollback<specdec::total_variation> tv{.alpha_rb = 0.3f};
/// bild.validate();
/// ```
template <distance_metric D = drafted_cross_entropy>
struct distance_rollback {
  static constexpr bool exact = false;
  using metric_type = D;

  float alpha_rb = 5.0f;  ///< roll back where the distance exceeds this; >= 0 (+inf = never)
  D metric{};             ///< the distance, called as metric(q_i, p_i, drafted_i)

  void validate() const {
    if (!(alpha_rb >= 0.0f))
      detail::fail_knob("distance_rollback.alpha_rb", detail::format_value(alpha_rb), ">= 0 (+inf allowed)");
  }
  void reset() noexcept {}

  [[nodiscard]] verify_result verify(const verify_input& in) const {
    validate();
    detail::rollback_impl::check_input(in, "distance_rollback::verify", true, true, true);
    const std::size_t k = in.k();
    std::size_t m = 0;
    while (m < k && !(static_cast<float>(metric(in.q_row(m), in.p_row(m), in.drafted[m])) > alpha_rb)) ++m;
    return {m, detail::rollback_impl::target_token(in, m)};
  }
};

/// Medusa's typical acceptance (Cai et al. 2024, Sec. 2.3.1): drafted token x_i survives
/// while p_i(x) > min(epsilon, delta * exp(-H(p_i))), H in nats: a hard threshold
/// epsilon, relaxed for high-entropy target distributions. The first rejected position
/// gets the target's token (argmax of its logits when greedy, else a draw from p_i); if
/// all survive the target adds its token from row k. Lossy. Defaults are Medusa's
/// (posterior_threshold = 0.09, posterior_alpha = 0.3 = sqrt(0.09)). At temperature 0 it
/// accepts exactly the tokens `greedy_match` accepts (p one-hot, threshold < 1).
///
/// ```cpp
/// specdec::typical_acceptance typical{.epsilon = 0.09f, .delta = 0.3f};
/// typical.validate();
/// ```
struct typical_acceptance {
  static constexpr bool exact = false;

  float epsilon = 0.09f;  ///< hard probability threshold; in [0, 1)
  float delta = 0.3f;     ///< scale of the entropy-dependent threshold exp(-H); finite, >= 0

  void validate() const {
    if (!(epsilon >= 0.0f && epsilon < 1.0f))
      detail::fail_knob("typical_acceptance.epsilon", detail::format_value(epsilon), "in [0, 1)");
    if (!(delta >= 0.0f && delta <= std::numeric_limits<float>::max()))
      detail::fail_knob("typical_acceptance.delta", detail::format_value(delta), "finite and >= 0");
  }
  void reset() noexcept {}

  /// The acceptance threshold min(epsilon, delta * exp(-H(p))) for a target distribution p.
  [[nodiscard]] float threshold(std::span<const float> p) const {
    return std::min(epsilon, delta * std::exp(-entropy(p)));
  }

  [[nodiscard]] verify_result verify(const verify_input& in) const {
    validate();
    detail::rollback_impl::check_input(in, "typical_acceptance::verify", true, true, true);
    const std::size_t k = in.k();
    std::size_t i = 0;
    while (i < k) {
      const auto p = in.p_row(i);
      if (!(p[static_cast<std::size_t>(in.drafted[i])] > threshold(p))) break;
      ++i;
    }
    return {i, detail::rollback_impl::target_token(in, i)};
  }
};

static_assert(rollback_policy<rejection_sampling>);
static_assert(rollback_policy<greedy_match>);
static_assert(rollback_policy<distance_rollback<>>);
static_assert(rollback_policy<typical_acceptance>);

}  // namespace specdec
