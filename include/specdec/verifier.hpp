#pragma once
/// \file verifier.hpp
/// The verify side of one speculative step, as values: a verifier takes the committed
/// sequence S and a `draft_block` and returns a `verdict` (how many drafts survive, which
/// token follows, what the target's pass cost). `local_verifier` is a target model plus a
/// rollback policy, computed in this process; a remote verifier (a server over the
/// network) is a further model of the same `verifier` concept; token trees have their own
/// verifier, `tree_verifier` (tree_verifier.hpp).
///
/// `judge` is the one place where target rows become a verdict; `local_verifier`, the
/// batched speculative decoder (one target forward for many sequences) and a serving
/// process all call it.
///
/// ```cpp
/// specdec::local_verifier v(big, specdec::rejection_sampling{});
/// specdec::verdict r = v.verify(seq, drafter.block(), params, rng);
/// // S grows by drafts [0, r.accepted) and then r.next
/// ```
#include <algorithm>
#include <concepts>
#include <cstddef>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "specdec/draft.hpp"
#include "specdec/error.hpp"
#include "specdec/fallback.hpp"
#include "specdec/model.hpp"
#include "specdec/rollback.hpp"
#include "specdec/sampling.hpp"
#include "specdec/telemetry.hpp"
#include "specdec/token.hpp"

namespace specdec {

/// The outcome of verifying one `draft_block`: drafts `[0, accepted)` survive and `next`
/// follows them (the replacement for the first rejected draft, or the bonus token when
/// all survived; for an empty block simply the target's next token). `following` are
/// more target tokens after `next`, drawn by the same rule: a verifier that decoded ahead
/// while it waited (`hybrid::remote_verifier` on a server running a session ahead at zero
/// drafts) returns them, a local verifier never does. The cost fields are for telemetry
/// and adaptive policies.
///
/// ```cpp
/// seq.insert(seq.end(), d.tokens.begin(), d.tokens.begin() + v.accepted);
/// seq.push_back(v.next);
/// seq.insert(seq.end(), v.following.begin(), v.following.end());
/// ```
struct verdict {
  std::size_t accepted = 0;
  token_id next = 0;
  std::size_t target_rows = 0;  ///< rows of the target pass that produced it (0 = not reported)
  double target_seconds = 0.0;  ///< wall time of that pass (for a remote verifier: the round trip)
  std::vector<token_id> following{};  ///< target tokens after `next` (empty unless decoded ahead)
};

/// A verifier: `v.verify(S, d, params, rng)` verifies draft block `d` (`d.position ==
/// S.size()`) after the committed sequence S and returns a `verdict` with `accepted <=
/// d.size()` and `0 <= next < vocab_size()`. Between two calls S grows only by a prefix of
/// the previous verdict's tokens (drafts, next, then following); `reset()` starts a new generation
/// (any S may follow), and `sync(S)` brings whatever state the verifier keeps to "S minus
/// its last token" when a generation ends. `V::exact` says whether the emitted tokens
/// follow the target's distribution exactly.
///
/// ```cpp
/// template <specdec::verifier V>
/// std::size_t one_step(V& v, std::vector<specdec::token_id>& seq, const specdec::draft_block& d,
///                      const specdec::sampling_params& params, specdec::random_source& rng) {
///   const specdec::verdict r = v.verify(seq, d, params, rng);
///   seq.insert(seq.end(), d.tokens.begin(), d.tokens.begin() + static_cast<std::ptrdiff_t>(r.accepted));
///   seq.push_back(r.next);
///   seq.insert(seq.end(), r.following.begin(), r.following.end());
///   return r.accepted + 1 + r.following.size();
/// }
/// ```
template <class V>
concept verifier = has_vocabulary<V> && has_context<V> &&
                   requires(V& v, const V& cv, std::span<const token_id> s, const draft_block& d,
                            const sampling_params& params, random_source& rng) {
                     { v.verify(s, d, params, rng) } -> std::same_as<verdict>;
                     v.reset();
                     v.sync(s);
                     { V::exact } -> std::convertible_to<bool>;
                   };

/// A verifier that is told where a generation ends: after `reset()`, the decoder calls
/// `v.expect_length(n)` with the committed length at which it will stop at the latest (the
/// prompt plus the token budget, within the context). A hint for planning, never a
/// promise: S may end earlier (EOS, a stop) and the verifier must stay correct if it
/// grows further. `hybrid::remote_verifier` passes it to the server, which then computes
/// nothing for a round that cannot come.
///
/// ```cpp
/// template <specdec::verifier V>
/// void start(V& v, std::size_t prompt, std::size_t budget) {
///   v.reset();
///   if constexpr (specdec::length_aware_verifier<V>) v.expect_length(prompt + budget);
/// }
/// ```
template <class V>
concept length_aware_verifier = verifier<V> && requires(V& v, std::size_t n) { v.expect_length(n); };

namespace detail {

/// Throws `error` unless the logits `l` that `what` returned (e.g. "speculative_decoder:
/// the target's forward") have `vocab` columns and exactly `rows` rows, or with
/// `rows == 0`, at least one row: the decoders' one check of a model's answer.
inline void check_logits_shape(const logits_block& l, std::size_t rows, std::size_t vocab, const char* what) {
  if (l.vocab == vocab && (rows == 0 ? l.rows > 0 : l.rows == rows)) return;
  throw error(std::string(what) + " returned " + std::to_string(l.rows) + " rows of " + std::to_string(l.vocab) +
              " logits; expected " + (rows == 0 ? std::string("at least one row") : std::to_string(rows) + " rows") +
              " of " + std::to_string(vocab));
}

/// Grows `buf` to hold at least `n` floats (doubling, so it stops reallocating after warm-up).
inline std::span<float> at_least(std::vector<float>& buf, std::size_t n) {
  if (buf.size() < n) buf.resize(std::max(n, 2 * buf.size()));
  return std::span<float>(buf.data(), n);
}

/// Reused buffers of `judge`: no allocation growth after warm-up.
struct judge_buffers {
  std::vector<float> p, q;
};

}  // namespace detail

/// The target's verdict on draft block `d` from `rows`: the target's logits for the last
/// committed token and each draft, `d.size() + 1` rows of `vocab`. Each row becomes p with
/// `params`; an empty block is a plain draw from the one row (no policy call); otherwise
/// the rollback policy judges, with q = `d.q`, or one-hot rows at the drafted ids when the
/// drafter emitted ids only (exact for rejection sampling: q is the law the ids were
/// proposed from, a point mass). The policy's answer is checked against its contract.
/// `who` prefixes error messages.
///
/// ```cpp
/// specdec::detail::judge_buffers buf;
/// specdec::verdict v = specdec::judge(policy, logits, d, params, rng, buf, "my_server");
/// ```
template <rollback_policy Rollback>
verdict judge(Rollback& rollback, const logits_block& rows, const draft_block& d, const sampling_params& params,
              random_source& rng, detail::judge_buffers& buf, const char* who) {
  const std::size_t k = d.size(), vocab = rows.vocab;
  detail::check_logits_shape(rows, k + 1, vocab, who);
  verdict v;
  v.target_rows = rows.rows;
  if (k == 0) {
    const std::span<float> p = detail::at_least(buf.p, vocab);
    v.next = sample_token(rows.row(0), params, p, rng);
    return v;
  }
  const std::span<float> p = detail::at_least(buf.p, (k + 1) * vocab);
  for (std::size_t i = 0; i <= k; ++i) make_distribution(rows.row(i), params, p.subspan(i * vocab, vocab));
  std::span<const float> q = d.q;
  if (!d.has_distributions()) {
    const std::span<float> one_hot = detail::at_least(buf.q, k * vocab);
    std::ranges::fill(one_hot, 0.0f);
    check_token_ids(d.tokens, vocab, who);
    for (std::size_t i = 0; i < k; ++i) one_hot[i * vocab + static_cast<std::size_t>(d.tokens[i])] = 1.0f;
    q = one_hot;
  } else if (q.size() != k * vocab) {
    throw invalid_argument(std::string(who) + ": the draft block has " + std::to_string(q.size()) +
                           " q values; expected " + std::to_string(k) + " rows of " + std::to_string(vocab));
  }
  const verify_input in{d.tokens, q, p, std::span<const float>(rows.data, (k + 1) * vocab), vocab, &params, &rng};
  const verify_result r = rollback.verify(in);
  if (r.accepted > k || r.next < 0 || static_cast<std::size_t>(r.next) >= vocab)
    throw error(std::string(who) + ": the rollback policy returned accepted = " + std::to_string(r.accepted) +
                ", next = " + std::to_string(r.next) + "; expected accepted <= " + std::to_string(k) +
                " and 0 <= next < " + std::to_string(vocab));
  v.accepted = r.accepted;
  v.next = r.next;
  return v;
}

/// A target model and a rollback policy, in this process: feeds the committed tokens the
/// target has not seen plus the drafts as ONE block, judges the rows (`judge`), and cuts
/// the target's cache back to S plus the accepted drafts (the next token is fed at the
/// start of the next call). The verifier holds a reference to the model, which must
/// outlive it.
///
/// ```cpp
/// specdec::cpu::transformer big("models/kjv-big.bin");
/// specdec::local_verifier v(big, specdec::greedy_match{});
/// static_assert(specdec::verifier<decltype(v)>);
/// ```
template <language_model Target, rollback_policy Rollback>
class local_verifier {
 public:
  static constexpr bool exact = static_cast<bool>(Rollback::exact);

  local_verifier(Target& target, Rollback rollback) : target_(target), rollback_(std::move(rollback)) {}

  [[nodiscard]] std::size_t vocab_size() const { return static_cast<std::size_t>(target_.vocab_size()); }
  [[nodiscard]] std::size_t context_length() const { return static_cast<std::size_t>(target_.context_length()); }
  [[nodiscard]] std::size_t cache_length() const { return static_cast<std::size_t>(target_.cache_length()); }
  [[nodiscard]] Target& target() noexcept { return target_; }
  [[nodiscard]] Rollback& rollback() noexcept { return rollback_; }
  [[nodiscard]] const Rollback& rollback() const noexcept { return rollback_; }

  /// A new generation: empty cache, policy reset.
  void reset() {
    target_.truncate(0);
    fed_ = 0;
    reset_policy(rollback_);
  }

  /// The target's block for draft `d` after S: `S[fed, |S|)` then the drafts.
  [[nodiscard]] std::span<const token_id> block(std::span<const token_id> s, const draft_block& d) {
    check_position(s, d);
    block_.assign(s.begin() + static_cast<std::ptrdiff_t>(fed_), s.end());
    block_.insert(block_.end(), d.tokens.begin(), d.tokens.end());
    return block_;
  }

  verdict verify(std::span<const token_id> s, const draft_block& d, const sampling_params& params,
                 random_source& rng) {
    const std::span<const token_id> in = block(s, d);
    double seconds = 0.0;
    logits_block rows;
    {
      scoped_timer t(seconds);
      // A target that can be told which rows are drafts (a remote model pays for their
      // payload) is told; any other gets a plain forward.
      if constexpr (requires { target_.forward_drafts(in, d.size()); })
        rows = target_.forward_drafts(in, d.size());
      else
        rows = target_.forward(in);
    }
    fed_ += in.size();
    detail::check_logits_shape(rows, in.size(), vocab_size(), "speculative_decoder: the target's forward");
    const logits_block last{rows.data + (rows.rows - d.size() - 1) * rows.vocab, d.size() + 1, rows.vocab};
    verdict v = judge(rollback_, last, d, params, rng, buf_, "speculative_decoder");
    v.target_rows = rows.rows;
    v.target_seconds = seconds;
    rewind(s.size() + v.accepted);
    return v;
  }

  /// Brings the target's cache to S minus its last token.
  void sync(std::span<const token_id> s) {
    const std::size_t keep = s.empty() ? 0 : s.size() - 1;
    if (fed_ > keep) {
      rewind(keep);
    } else if (fed_ < keep) {
      target_.forward(s.subspan(fed_, keep - fed_));
      fed_ = keep;
    }
  }

 private:
  void check_position(std::span<const token_id> s, const draft_block& d) const {
    if (d.position != s.size() || s.size() <= fed_ || s.size() - fed_ + d.size() == 0)
      throw invalid_argument("local_verifier: the draft block is at position " + std::to_string(d.position) +
                             " after " + std::to_string(s.size()) + " committed tokens of which the target holds " +
                             std::to_string(fed_) + "; expected position == committed > held");
  }
  void rewind(std::size_t keep) {
    if (fed_ > keep) {
      target_.truncate(keep);
      fed_ = keep;
    }
  }

  Target& target_;
  Rollback rollback_;
  std::size_t fed_ = 0;  ///< tokens of S (then drafts) in the target's cache
  std::vector<token_id> block_;
  detail::judge_buffers buf_;
};

template <class Target, class Rollback>
local_verifier(Target&, Rollback) -> local_verifier<Target, Rollback>;

}  // namespace specdec
