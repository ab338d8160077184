#pragma once
/// \file draft.hpp
/// The draft side of one speculative step, as values: a `draft_block` (what was proposed,
/// from which distributions, at which position), the `token_drafter` concept for drafters
/// that propose ids without a distribution (prompt lookup, n-gram, suffix index), and
/// `model_drafter`, the lifecycle of a drafting *model* under a fallback policy:
///
///     begin_step(S, budget)  ->  [feed pending tokens, on_row(logits)]*  ->  block()
///       ->  (verifier)  ->  finish_step(verdict)  ->  rewind(|S| - 1)
///
/// The decoder owns the model calls and the truncations; the drafter only says what to
/// feed and what was proposed. One step's state lives in the drafter between
/// `begin_step` and `finish_step`; nothing of it is public.
///
/// ```cpp
/// specdec::draft_block d = drafter.block(seq.size());
/// specdec::verdict v = verifier.verify(seq, d, params, rng);
/// ```
#include <algorithm>
#include <concepts>
#include <cstddef>
#include <limits>
#include <span>
#include <utility>
#include <vector>

#include "specdec/fallback.hpp"
#include "specdec/sampling.hpp"
#include "specdec/telemetry.hpp"
#include "specdec/token.hpp"

namespace specdec {

/// One step's drafted tokens. `tokens[i]` is proposed for position `position + i` of the
/// committed sequence S (so `position == |S|` when the block is verified). `q` holds, row
/// by row (`size() x vocab`), the exact distribution each token was drawn from, or is
/// empty for drafters that emit ids only: a verifier then treats each row as one-hot at
/// the token (greedy verification never reads q).
///
/// ```cpp
/// std::vector<specdec::token_id> ids{17, 4};
/// specdec::draft_block d{.tokens = ids, .position = 12};
/// assert(d.size() == 2 && !d.has_distributions());
/// ```
struct draft_block {
  std::span<const token_id> tokens{};
  std::span<const float> q{};  ///< size() x vocab, row-major; empty = ids only
  std::size_t position = 0;

  [[nodiscard]] std::size_t size() const noexcept { return tokens.size(); }
  [[nodiscard]] bool empty() const noexcept { return tokens.empty(); }
  [[nodiscard]] bool has_distributions() const noexcept { return !q.empty(); }
};

/// A drafter that proposes token ids only: `d.propose(S, max)` returns up to `max` ids
/// continuing the committed sequence S (fewer, or none, when it has no guess). It reads S
/// afresh on every call, so it needs no cache bookkeeping; `reset()`, when present, is
/// called at the start of every generation.
///
/// ```cpp
/// struct repeat_last {
///   std::vector<specdec::token_id> out;
///   std::span<const specdec::token_id> propose(std::span<const specdec::token_id> s, std::size_t max) {
///     out.assign(std::min<std::size_t>(max, 2), s.back());
///     return out;
///   }
///   std::size_t vocab_size() const { return 32; }
/// };
/// static_assert(specdec::token_drafter<repeat_last>);
/// ```
template <class D>
concept token_drafter = requires(D& d, std::span<const token_id> committed, std::size_t max) {
  { d.propose(committed, max) } -> std::convertible_to<std::span<const token_id>>;
};

/// Why a step's drafting ended.
enum class draft_end {
  none,      ///< drafting has not ended (or nothing was planned)
  fallback,  ///< the fallback policy stopped it
  budget,    ///< the token budget allows no more drafts
  eos,       ///< the draft proposed EOS
  context,   ///< the context (or the step's cap) allows no more drafts
  proposal,  ///< an id-only drafter proposed no more
};

/// The drafting lifecycle of a draft *model* under fallback policy `Fallback`, for one
/// sequence: which tokens the model must be fed, the token drawn from each row it
/// returns, the fallback policy's verdict on it, and the resulting `draft_block`. The
/// caller issues the forwards (one model, or one `forward_batch` for many drafters) and
/// the truncations; see the file comment for the order of calls.
///
/// ```cpp
/// specdec::model_drafter<specdec::fixed_gamma> d(specdec::fixed_gamma{.gamma = 4});
/// if (d.begin_step(seq.size(), budget, ctx, /*exact=*/true)) {
///   auto l = draft.forward(d.pending(seq));
///   d.fed_pending();
///   while (d.on_row(l.row(l.rows - 1), vocab, params, rng, true, stats)) l = draft.forward(d.last_drafted());
/// }
/// ```
template <class Fallback>
class model_drafter {
 public:
  explicit model_drafter(Fallback f) : fallback_(std::move(f)) {}

  [[nodiscard]] Fallback& fallback() noexcept { return fallback_; }
  [[nodiscard]] const Fallback& fallback() const noexcept { return fallback_; }

  /// A new generation: the model's cache is empty, the policy reset.
  void reset() {
    fed_ = 0;
    reset_policy(fallback_);
  }

  /// Plans a step for S of `seq_size` tokens (< ctx) with `remaining` tokens of budget.
  /// Exact verification always adds a bonus/replacement token, so it may draft at most
  /// `remaining - 1`; lossy verification may draft the whole budget. Returns whether the
  /// model drafts at all this step.
  bool begin_step(std::size_t seq_size, std::size_t remaining, std::size_t ctx, bool exact,
                  std::size_t max_draft = std::numeric_limits<std::size_t>::max()) {
    position_ = seq_size;
    budget_cap_ = exact ? remaining - 1 : remaining;
    k_max_ = std::min({budget_cap_, ctx - seq_size - 1, max_draft});  // |S| + k + 1 <= ctx
    k_ = 0;
    why_ = draft_end::none;
    drafting_ = k_max_ > 0;
    timing_ = {};
    return drafting_;
  }

  [[nodiscard]] bool drafting() const noexcept { return drafting_; }
  /// The committed tokens of `seq` the model has not been fed (the step's first forward).
  [[nodiscard]] std::span<const token_id> pending(std::span<const token_id> seq) const {
    return seq.subspan(fed_, position_ - fed_);
  }
  /// The step's first forward fed `pending`: the model now holds S.
  void fed_pending() noexcept { fed_ = position_; }
  /// The last drafted token, which the next forward feeds (fed_ counts it then).
  [[nodiscard]] std::span<const token_id> last_drafted() noexcept {
    ++fed_;
    return std::span<const token_id>(drafted_.data() + k_ - 1, 1);
  }
  /// The most tokens this step may still draft (the cap `begin_step` computed).
  [[nodiscard]] std::size_t capacity() const noexcept { return k_max_; }
  /// Tokens of S (then drafts) in the model's cache.
  [[nodiscard]] std::size_t fed() const noexcept { return fed_; }

  /// Counts one draft forward of this step that took `seconds`.
  void record_forward(double seconds) noexcept {
    if (timing_.forwards == 0) timing_.first = seconds;
    ++timing_.forwards;
    timing_.seconds += seconds;
  }

  /// One draft position from the model's last row of logits: draw the token from q (the
  /// processed distribution; argmax when greedy), ask the fallback policy, record the
  /// token and decide whether drafting goes on. Returns whether it does.
  bool on_row(std::span<const float> logits, std::size_t vocab, const sampling_params& params, random_source& rng,
              bool stop_at_eos, generation_stats& st) {
    if (q_.size() < (k_ + 1) * vocab) q_.resize(std::max((k_ + 1) * vocab, 2 * q_.size()));
    vocab_ = vocab;
    std::span<float> q_row(q_.data() + k_ * vocab, vocab);
    make_distribution(logits, params, q_row);
    token_id x;
    std::span<const float> confidence = q_row;
    if (params.greedy()) {
      x = argmax(logits);
      // The one-hot q carries no confidence: let the policy see the plain softmax, unless
      // it declared that it never looks (see reads_confidence_v).
      if constexpr (reads_confidence_v<Fallback>) {
        conf_.resize(vocab);
        softmax(logits, conf_);
        confidence = conf_;
      }
    } else {
      x = sample_from(q_row, rng.uniform());
    }
    return decide(x, confidence, stop_at_eos, st);
  }

  /// Drafts from an id-only drafter's proposal instead of model rows: each id is shown to
  /// the fallback policy (with no distribution, so the policy must not read confidence)
  /// until it stops, the proposal ends or the step's cap is reached.
  void take_proposal(std::span<const token_id> ids, bool stop_at_eos, generation_stats& st) {
    static_assert(!reads_confidence_v<Fallback>,
                  "specdec: an id-only drafter proposes no distribution; use a fallback policy that "
                  "declares `reads_confidence = false` (fixed_gamma, adaptive_gamma, expected_speedup)");
    vocab_ = 0;
    for (const token_id x : ids.first(std::min(ids.size(), k_max_)))
      if (!decide(x, {}, stop_at_eos, st)) return;
    if (drafting_) {
      drafting_ = false;
      why_ = draft_end::proposal;
    }
  }

  /// This step's draft block (q empty after `take_proposal`).
  [[nodiscard]] draft_block block() const noexcept {
    return draft_block{std::span<const token_id>(drafted_.data(), k_), std::span<const float>(q_.data(), k_ * vocab_),
                       position_};
  }
  /// Why drafting ended this step.
  [[nodiscard]] draft_end why() const noexcept { return why_; }

  /// For lossy verification: a block that ended at the budget or at EOS without the
  /// fallback policy asking for the target is emitted unverified.
  [[nodiscard]] bool ends_unverified(bool exact) const noexcept {
    return !exact && k_ > 0 && (why_ == draft_end::budget || why_ == draft_end::eos);
  }

  /// Adds this step's draft forwards and their time to the statistics.
  void record_drafting(generation_stats& st) const noexcept {
    st.draft_calls += timing_.forwards;
    st.draft_seconds += timing_.seconds;
  }

  /// Tells the fallback policy how verification of this step's block went.
  void finish_step(std::size_t accepted, double target_seconds, std::size_t target_rows) {
    fallback_.observe(step_outcome{k_, accepted, timing_.seconds, timing_.forwards, target_seconds, target_rows,
                                   timing_.first});
  }

  /// The model's cache must hold at most `keep` tokens (S minus its last token): returns
  /// true when the caller must `truncate(keep)` the model (it held drafts beyond it).
  [[nodiscard]] bool rewind(std::size_t keep) noexcept {
    if (fed_ <= keep) return false;
    fed_ = keep;
    return true;
  }
  /// The caller fed S[fed(), upto) to the model outside a step (cache sync).
  void fed_up_to(std::size_t upto) noexcept { fed_ = upto; }

 private:
  bool decide(token_id x, std::span<const float> confidence, bool stop_at_eos, generation_stats& st) {
    const draft_action act = fallback_.decide(draft_step{k_, confidence, x});
    drafting_ = false;
    if (act == draft_action::discard_and_stop) {
      why_ = draft_end::fallback;
      ++st.fallbacks;
      return false;
    }
    if (drafted_.size() < k_ + 1) drafted_.resize(k_ + 1);
    drafted_[k_++] = x;
    if (act == draft_action::keep_and_stop) {
      why_ = draft_end::fallback;
      return false;
    }
    if (k_ >= k_max_) {
      why_ = (k_ >= budget_cap_) ? draft_end::budget : draft_end::context;
      return false;
    }
    if (stop_at_eos && x == eos_token) {
      why_ = draft_end::eos;
      return false;
    }
    drafting_ = true;
    return true;
  }

  struct step_timing {
    double seconds = 0.0;
    std::size_t forwards = 0;
    double first = 0.0;  ///< the step's first forward (colder caches after a target pass)
  };

  Fallback fallback_;
  std::size_t fed_ = 0;  ///< tokens of S (then drafts) in the model's cache
  std::size_t position_ = 0, k_ = 0, k_max_ = 0, budget_cap_ = 0;
  std::size_t vocab_ = 0;  ///< columns of q_'s rows; 0 = ids only (no q)
  bool drafting_ = false;
  draft_end why_ = draft_end::none;
  step_timing timing_;
  std::vector<token_id> drafted_;
  std::vector<float> q_, conf_;
};

}  // namespace specdec
