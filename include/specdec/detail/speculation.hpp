#pragma once
/// \file detail/speculation.hpp
/// The one implementation of a speculative step's per-sequence logic, shared by
/// `speculative_decoder` (decoder.hpp) and `batched_speculative_decoder`
/// (batch_decoder.hpp): planning the draft limit, handling one draft row, the lossy
/// unverified shortcut, and verifying + committing a block. The decoders keep only what
/// differs between them: how the model forwards are issued (one model call vs one
/// `forward_batch` for many sequences) and how a cache is truncated.
///
/// Also `sample_token`: "processed distribution, then argmax (greedy) or a draw with the
/// caller's random source", shared by both autoregressive decoders and the k = 0 verify.
#include <algorithm>
#include <cstddef>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/fallback.hpp"
#include "specdec/rollback.hpp"
#include "specdec/sampling.hpp"
#include "specdec/telemetry.hpp"
#include "specdec/token.hpp"

namespace specdec::detail {

/// Grows `buf` to hold at least `rows` rows of `vocab` floats (doubling, so that it stops
/// reallocating after warm-up).
inline void ensure_rows(std::vector<float>& buf, std::size_t rows, std::size_t vocab) {
  if (buf.size() < rows * vocab) buf.resize(std::max(rows * vocab, 2 * buf.size()));
}

/// Throws `error` unless the logits `l` that `what` returned (e.g. "speculative_decoder:
/// the target's forward") have `vocab` columns and exactly `rows` rows, or with
/// `rows == 0`, at least one row: the decoders' one check of a model's answer.
inline void check_logits_shape(const logits_block& l, std::size_t rows, std::size_t vocab, const char* what) {
  if (l.vocab == vocab && (rows == 0 ? l.rows > 0 : l.rows == rows)) return;
  throw error(std::string(what) + " returned " + std::to_string(l.rows) + " rows of " + std::to_string(l.vocab) +
              " logits; expected " + (rows == 0 ? std::string("at least one row") : std::to_string(rows) + " rows") +
              " of " + std::to_string(vocab));
}

/// Fills `probs` with the processed distribution of `logits`, then picks the token: the
/// first maximal logit when greedy (no randomness consumed), else one draw from `probs`
/// with `rng.uniform()`.
inline token_id sample_token(std::span<const float> logits, const sampling_params& params,
                             std::span<float> probs, random_source& rng) {
  make_distribution(logits, params, probs);
  return params.greedy() ? argmax(logits) : sample_from(probs, rng.uniform());
}

/// One sequence's speculative state: its policies, how much of the committed sequence S
/// each model has cached, the current step's draft block, and the reused buffers. The
/// caller owns S, the random source, the statistics and the committer (`out`: anything
/// with `bool emit(token_id)` and `stop(const char*)`), and passes them in.
template <class Fallback, class Rollback>
struct speculation_state {
  /// Why this step's drafting ended.
  enum class ended { none, fallback, budget, eos, context };

  Fallback fallback;
  Rollback rollback;
  std::size_t draft_fed = 0;   ///< tokens of S (then drafts) in the draft's cache
  std::size_t target_fed = 0;  ///< tokens of S in the target's cache
  // This step's draft block.
  std::size_t s_old = 0, k = 0, k_max = 0, budget_cap = 0;
  bool drafting = false;  ///< true while the draft should propose another token
  ended why = ended::none;
  double step_draft_seconds = 0.0;
  std::size_t step_draft_forwards = 0;
  double step_first_draft_seconds = 0.0;  ///< of step_draft_seconds, the first forward's
  // Reused buffers: no allocation growth after warm-up.
  std::vector<token_id> drafted, block;
  std::vector<float> q, p, conf;

  speculation_state(Fallback f, Rollback r) : fallback(std::move(f)), rollback(std::move(r)) {}

  /// A new generation: empty caches, policies reset.
  void restart() {
    draft_fed = 0;
    target_fed = 0;
    reset_policy(fallback);
    reset_policy(rollback);
  }

  /// Plans a step for S of `seq_size` tokens (< ctx) with `remaining` tokens of budget:
  /// the most tokens that may be drafted. Exact policies always get a bonus/replacement
  /// token from the target, so k drafts yield up to k + 1 tokens; lossy ones may emit k
  /// drafts unverified. `drafting` says whether the draft runs at all.
  void plan(std::size_t seq_size, std::size_t remaining, std::size_t ctx,
            std::size_t max_draft = std::numeric_limits<std::size_t>::max()) {
    s_old = seq_size;
    budget_cap = static_cast<bool>(Rollback::exact) ? remaining - 1 : remaining;
    const std::size_t context_cap = ctx - s_old - 1;  // S_new = s_old + k + 1 <= ctx
    k_max = std::min({budget_cap, context_cap, max_draft});
    k = 0;
    why = ended::none;
    drafting = k_max > 0;
    step_draft_seconds = 0.0;
    step_draft_forwards = 0;
    step_first_draft_seconds = 0.0;
  }

  /// Counts one draft forward of this step that took `seconds` (the step's first one also
  /// as `step_first_draft_seconds`).
  void record_draft_forward(double seconds) noexcept {
    if (step_draft_forwards == 0) step_first_draft_seconds = seconds;
    ++step_draft_forwards;
    step_draft_seconds += seconds;
  }

  /// One draft position from the draft's last row of logits: draw the token, ask the
  /// fallback policy, record the drafted token and decide whether drafting goes on.
  /// Returns (and sets) `drafting`.
  bool on_draft_row(std::span<const float> logits, std::size_t vocab, const sampling_params& params,
                    random_source& rng, bool stop_at_eos, generation_stats& st) {
    ensure_rows(q, k + 1, vocab);
    std::span<float> q_row(q.data() + k * vocab, vocab);
    make_distribution(logits, params, q_row);
    token_id x;
    std::span<const float> confidence = q_row;
    if (params.greedy()) {
      x = argmax(logits);
      // The one-hot q carries no confidence: let the policy see the plain softmax, unless
      // it declared that it never looks (see reads_confidence_v).
      if constexpr (reads_confidence_v<Fallback>) {
        conf.resize(vocab);
        softmax(logits, conf);
        confidence = conf;
      }
    } else {
      x = sample_from(q_row, rng.uniform());
    }
    const draft_action act = fallback.decide(draft_step{k, confidence, x});
    drafting = false;
    if (act == draft_action::discard_and_stop) {
      why = ended::fallback;
      ++st.fallbacks;
      return false;
    }
    if (drafted.size() < k + 1) drafted.resize(k + 1);
    drafted[k++] = x;
    if (act == draft_action::keep_and_stop) {
      why = ended::fallback;
      return false;
    }
    if (k >= k_max) {
      why = (k >= budget_cap) ? ended::budget : ended::context;
      return false;
    }
    if (stop_at_eos && x == eos_token) {
      why = ended::eos;
      return false;
    }
    drafting = true;
    return true;
  }

  /// Adds this step's draft forwards and their time to the statistics.
  void record_drafting(generation_stats& st) const {
    st.draft_calls += step_draft_forwards;
    st.draft_seconds += step_draft_seconds;
  }

  /// Lossy policies: a block that ended at the budget or at EOS without the fallback
  /// policy asking for the target is emitted unverified (the big model runs only on
  /// fallback). Returns false (doing nothing) unless that applies; else emits the block,
  /// cuts the draft cache back with `truncate_draft(keep)` and stops the generation.
  template <class Out, class TruncateDraft>
  bool emit_unverified(const std::vector<token_id>& seq, Out& out, TruncateDraft&& truncate_draft) {
    if (static_cast<bool>(Rollback::exact) || k == 0 || (why != ended::budget && why != ended::eos))
      return false;
    bool go = true;
    for (std::size_t i = 0; i < k && go; ++i) go = out.emit(drafted[i]);
    const std::size_t keep = std::min(draft_fed, seq.size() - 1);
    truncate_draft(keep);
    draft_fed = keep;
    if (go) out.stop("max_tokens");  // unreachable in practice: budget was exhausted
    return true;
  }

  /// The target's block for this step: the committed tokens it has not seen (at least the
  /// last token of S) plus the k drafts.
  const std::vector<token_id>& verify_block(const std::vector<token_id>& seq) {
    block.assign(seq.begin() + static_cast<std::ptrdiff_t>(target_fed), seq.end());
    block.insert(block.end(), drafted.begin(), drafted.begin() + static_cast<std::ptrdiff_t>(k));
    return block;
  }

  /// Counts the target's forward of `verify_block`, which took `seconds`.
  void record_verify_forward(generation_stats& st, double seconds) {
    target_fed += block.size();
    ++st.target_calls;
    st.target_seconds += seconds;
  }

  /// After the target's forward of `verify_block` (`tl`, already checked to hold one row
  /// per block token), taking `target_seconds`: the k + 1 p rows, the next token (a
  /// direct draw for k = 0, else the checked `rollback.verify`, then
  /// `record_verification` and `fallback.observe`), emitting the accepted drafts and the
  /// next token through `out`, and cutting both caches back to S minus its last token
  /// (`truncate_target(keep)`, `truncate_draft(keep)`). `who` prefixes error messages.
  template <class Out, class TruncateTarget, class TruncateDraft>
  void verify_and_commit(const logits_block& tl, std::size_t vocab, const sampling_params& params,
                         random_source& rng, generation_stats& st, double target_seconds, const char* who,
                         const std::vector<token_id>& seq, Out& out, TruncateTarget&& truncate_target,
                         TruncateDraft&& truncate_draft) {
    const std::size_t first = tl.rows - (k + 1);
    ensure_rows(p, k + 1, vocab);
    std::size_t accepted = 0;
    token_id next = 0;
    if (k == 0) {
      next = sample_token(tl.row(first), params, std::span<float>(p.data(), vocab), rng);
    } else {
      for (std::size_t i = 0; i <= k; ++i)
        make_distribution(tl.row(first + i), params, std::span<float>(p.data() + i * vocab, vocab));
      const verify_input in{std::span<const token_id>(drafted.data(), k),
                            std::span<const float>(q.data(), k * vocab),
                            std::span<const float>(p.data(), (k + 1) * vocab),
                            std::span<const float>(tl.data + first * vocab, (k + 1) * vocab),
                            vocab,
                            &params,
                            &rng};
      const verify_result vr = rollback.verify(in);
      if (vr.accepted > k || vr.next < 0 || static_cast<std::size_t>(vr.next) >= vocab)
        throw error(std::string(who) + ": the rollback policy returned accepted = " +
                    std::to_string(vr.accepted) + ", next = " + std::to_string(vr.next) +
                    "; expected accepted <= " + std::to_string(k) + " and 0 <= next < " +
                    std::to_string(vocab));
      accepted = vr.accepted;
      next = vr.next;
      st.record_verification(k, accepted);
      fallback.observe(step_outcome{k, accepted, step_draft_seconds, step_draft_forwards, target_seconds, tl.rows,
                                    step_first_draft_seconds});
    }

    bool go = true;
    for (std::size_t i = 0; i < accepted && go; ++i) go = out.emit(drafted[i]);
    if (go) out.emit(next);
    const std::size_t keep = seq.size() - 1;
    if (target_fed > keep) {
      truncate_target(keep);
      target_fed = keep;
    }
    if (draft_fed > keep) {
      truncate_draft(keep);
      draft_fed = keep;
    }
  }
};

}  // namespace specdec::detail
