#pragma once
/// \file decoder.hpp
/// The decoders: `speculative_decoder` (a draft proposes, a target verifies; Leviathan et
/// al. 2023, Chen et al. 2023, and Big Little Decoder, Kim et al. 2023) and
/// `autoregressive_decoder` (one model, one token per forward: the baseline).
///
/// ```cpp
/// specdec::cpu::transformer little("models/kjv-little.bin"), big("models/kjv-big.bin");
/// specdec::speculative_decoder dec(little, big, specdec::fixed_gamma{4},
///                                  specdec::rejection_sampling{},
///                                  {.temperature = 1.0f}, /*seed=*/42);
/// std::vector<specdec::token_id> prompt{1, 450, 200};
/// auto r = dec.generate(prompt, {.max_new_tokens = 64},
///                       [](specdec::token_id t) { std::cout << t << ' '; });
/// std::cout << r.stats << '\n';  // acceptance rate, calls, time split
/// ```
///
/// Semantics shared by both decoders:
/// - `generate` resets the models' caches (`truncate(0)`) and reseeds the random source
///   from the decoder's seed, so the same decoder, seed and prompt give the same tokens
///   on every call.
/// - The committed sequence S = prompt + generated tokens never exceeds the context
///   length C (the smaller one of the two models for the speculative decoder). A prompt
///   that leaves no room for a generated token (`prompt.size() >= C`) throws
///   `context_overflow`; a generation that reaches C tokens stops with
///   `stop_reason == "context"`.
/// - Greedy (`temperature == 0`) picks the first maximal logit; otherwise a token is drawn
///   with `sample_from(make_distribution(logits), rng.uniform())`.
/// - When `generate` returns (with `generation_options::sync_caches`, the default), each
///   model's cache holds exactly S minus its last token, as if a fresh model had been fed
///   those tokens: forwarding the last token continues the sequence. These catch-up
///   forwards are housekeeping and are not counted in the statistics.
#include <algorithm>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "specdec/detail/speculation.hpp"
#include "specdec/error.hpp"
#include "specdec/fallback.hpp"
#include "specdec/model.hpp"
#include "specdec/rollback.hpp"
#include "specdec/sampling.hpp"
#include "specdec/telemetry.hpp"
#include "specdec/token.hpp"

namespace specdec {

/// When and how a generation stops.
struct generation_options {
  std::size_t max_new_tokens = 128;  ///< never emit more than this many tokens
  bool stop_at_eos = true;           ///< stop after emitting `eos_token` (it is kept in the output)
  /// Generation stops right after the generated tokens end with one of these sequences
  /// (matched against generated tokens only, never the prompt); the sequence is kept in
  /// the output. Each sequence must be non-empty.
  std::vector<std::vector<token_id>> stop_sequences{};
  /// Bring both caches to "S minus its last token" before returning (see the file comment).
  bool sync_caches = true;
};

/// What `generate` returns.
struct generation_result {
  std::vector<token_id> tokens;  ///< generated tokens only, not the prompt
  generation_stats stats;
  /// Why generation stopped: "eos", "max_tokens", "stop_sequence", "context" (the
  /// sequence filled the context), or "callback" (the token callback returned false).
  std::string stop_reason;
};

/// The default token callback: does nothing.
struct no_callback {
  constexpr void operator()(token_id) const noexcept {}
};

namespace detail {

/// Calls `f(t)`; returns false only if `f` returns something that converts to false.
template <class F>
bool invoke_on_token(F& f, token_id t) {
  static_assert(std::is_invocable_v<F&, token_id>,
                "specdec: the on_token callback must be callable as f(specdec::token_id) and "
                "return void or bool (false = stop now)");
  using R = std::invoke_result_t<F&, token_id>;
  if constexpr (std::is_void_v<R>) {
    std::invoke(f, t);
    return true;
  } else {
    static_assert(std::is_convertible_v<R, bool>,
                  "specdec: the on_token callback must return void or something convertible to bool");
    return static_cast<bool>(std::invoke(f, t));
  }
}

inline void validate_request(std::span<const token_id> prompt, const generation_options& opts,
                             std::size_t vocab, std::size_t context, const char* who) {
  if (prompt.empty())
    throw invalid_argument(std::string(who) +
                           ": the prompt is empty; expected at least one token (e.g. BOS = 1)");
  check_token_ids(prompt, vocab, who);
  if (prompt.size() >= context)
    throw context_overflow(std::string(who) + ": the prompt has " + std::to_string(prompt.size()) +
                           " tokens but the context length is " + std::to_string(context) +
                           "; expected at most " + std::to_string(context - 1) +
                           " prompt tokens so that at least one token can be generated");
  for (std::size_t i = 0; i < opts.stop_sequences.size(); ++i) {
    if (opts.stop_sequences[i].empty())
      throw invalid_argument(std::string(who) + ": generation_options.stop_sequences[" +
                             std::to_string(i) + "] is empty; expected at least one token");
    check_token_ids(opts.stop_sequences[i], vocab, who);
  }
}

/// Commits tokens one at a time: appends to S and the result, calls the callback, and
/// decides whether generation stops.
template <class OnToken>
class committer {
 public:
  committer(std::vector<token_id>& seq, generation_result& result, const generation_options& opts,
            OnToken& on_token)
      : seq_(seq), result_(result), opts_(opts), on_token_(on_token) {}

  /// Emits `t`; returns false when generation must stop (and sets the stop reason).
  bool emit(token_id t) {
    seq_.push_back(t);
    result_.tokens.push_back(t);
    ++result_.stats.tokens_emitted;
    const bool keep_going = invoke_on_token(on_token_, t);
    if (opts_.stop_at_eos && t == eos_token) return stop("eos");
    if (ends_with_stop_sequence()) return stop("stop_sequence");
    if (result_.tokens.size() >= opts_.max_new_tokens) return stop("max_tokens");
    if (!keep_going) return stop("callback");
    return true;
  }

  [[nodiscard]] bool stopped() const noexcept { return stopped_; }
  bool stop(const char* reason) {
    stopped_ = true;
    result_.stop_reason = reason;
    return false;
  }
  [[nodiscard]] std::size_t remaining() const noexcept {
    return opts_.max_new_tokens - result_.tokens.size();
  }

 private:
  [[nodiscard]] bool ends_with_stop_sequence() const {
    const auto& out = result_.tokens;
    for (const auto& s : opts_.stop_sequences) {
      if (s.size() <= out.size() && std::equal(s.begin(), s.end(), out.end() - static_cast<std::ptrdiff_t>(s.size())))
        return true;
    }
    return false;
  }

  std::vector<token_id>& seq_;
  generation_result& result_;
  const generation_options& opts_;
  OnToken& on_token_;
  bool stopped_ = false;
};

/// Feeds `seq[fed, upto)` to `m` as one block (nothing if empty); returns the logits.
template <language_model M>
logits_block feed_block(M& m, const std::vector<token_id>& seq, std::size_t& fed, std::size_t upto) {
  std::span<const token_id> block(seq.data() + fed, upto - fed);
  logits_block out = m.forward(block);
  fed = upto;
  return out;
}

using decoder_clock = std::chrono::steady_clock;
inline double decoder_seconds_since(decoder_clock::time_point t0) {
  return std::chrono::duration<double>(decoder_clock::now() - t0).count();
}

}  // namespace detail

/// Draft-then-verify decoding with a pluggable fallback policy (when the draft hands over
/// to the target) and rollback policy (which drafted tokens survive verification).
///
/// One step, with S the committed sequence (prompt + emitted tokens):
/// 1. Draft: the committed tokens the draft has not seen go in as one block; then the
///    draft proposes tokens one at a time, asking `fallback.decide` after each. Drafting
///    also ends at EOS (with `stop_at_eos`), at the token budget and at the context edge.
/// 2. Verify: ONE target forward of the committed tokens the target has not seen (at
///    least the last token of S) plus the k drafted tokens; `rollback.verify` gets the
///    k+1 target rows and decides how many drafts survive and which token follows.
///    With k = 0 the target simply samples the next token.
///    For a lossy rollback policy (`Rollback::exact == false`, e.g. BiLD's
///    `distance_rollback`) a block that ended at the token budget or at EOS without the
///    fallback policy asking for the target is emitted unverified: the big model runs
///    only on fallback. Exact policies always verify, so their output has exactly the
///    target's distribution (and, greedy, exactly the target's greedy tokens).
/// 3. Commit: accepted drafts and the next token are emitted in order (callback, EOS,
///    stop sequences, budget); each cache is cut back to the part that agrees with S.
///
/// Policies: `validate()` is called (when present) by the constructor and `reset()` (when
/// present) at the start of every `generate`. `fallback.decide` sees, as `draft_step::q`,
/// the distribution the token was drawn from when sampling; when greedy, that would be
/// one-hot and say nothing about the draft's confidence, so the policy sees the draft's
/// plain softmax (temperature 1) instead (BiLD's `max_prob_fallback` needs it), unless the
/// policy declares `reads_confidence = false` (then the one-hot q; see
/// `reads_confidence_v`). Rollback
/// policies always get the one-hot q/p rows of greedy decoding in `verify_input`.
///
/// Statistics: `draft_calls`/`target_calls` count forwards, `record_verification(k, a)`
/// is called for each target verification with k >= 1, `fallbacks` counts the drafted
/// tokens the fallback policy discarded (`discard_and_stop`: the draft judged itself unfit
/// and the target writes that position; a planned `keep_and_stop`, as fixed_gamma's at
/// gamma, is not a fallback), `draft_seconds` and
/// `target_seconds` time the forwards and `policy_seconds` is everything else of
/// `total_seconds`. Tokens emitted unverified (lossy policies) count in `tokens_emitted`
/// but not in the verification counters. `fallback.observe` is told the outcome of every
/// verification with k >= 1.
template <language_model Draft, language_model Target, fallback_policy Fallback,
          rollback_policy Rollback>
class speculative_decoder {
 public:
  /// Holds references to `draft` and `target` (they must outlive the decoder and be two
  /// distinct objects). Throws `vocabulary_mismatch` if they disagree on the vocabulary,
  /// `invalid_argument` for bad sampling params or policy parameters (policies with a
  /// `validate()` member are validated).
  speculative_decoder(Draft& draft, Target& target, Fallback fallback, Rollback rollback,
                      sampling_params params = {}, std::uint64_t seed = 0)
      : draft_(draft),
        target_(target),
        spec_(std::move(fallback), std::move(rollback)),
        params_(params),
        seed_(seed),
        rng_(seed) {
    if (static_cast<const void*>(&draft) == static_cast<const void*>(&target))
      throw invalid_argument(
          "speculative_decoder: draft and target are the same object; expected two distinct "
          "model instances (each keeps its own cache; two instances may share weights)");
    check_same_vocabulary(draft_, target_);
    params_.validate();
    validate_policy(spec_.fallback);
    validate_policy(spec_.rollback);
  }

  [[nodiscard]] Draft& draft() noexcept { return draft_; }
  [[nodiscard]] Target& target() noexcept { return target_; }
  [[nodiscard]] Fallback& fallback() noexcept { return spec_.fallback; }
  [[nodiscard]] const Fallback& fallback() const noexcept { return spec_.fallback; }
  [[nodiscard]] Rollback& rollback() noexcept { return spec_.rollback; }
  [[nodiscard]] const Rollback& rollback() const noexcept { return spec_.rollback; }
  [[nodiscard]] const sampling_params& params() const noexcept { return params_; }
  /// Replaces the sampling params (validated).
  void set_params(const sampling_params& p) {
    p.validate();
    params_ = p;
  }
  [[nodiscard]] std::uint64_t seed() const noexcept { return seed_; }
  /// The seed the next `generate` starts from.
  void set_seed(std::uint64_t seed) noexcept { seed_ = seed; }
  /// The smaller context length of the two models: the most tokens S may hold.
  [[nodiscard]] std::size_t context_length() const {
    return std::min<std::size_t>(draft_.context_length(), target_.context_length());
  }

  /// Generates up to `opts.max_new_tokens` tokens after `prompt`; see the class comment.
  /// `on_token(t)` is called for each token as soon as it is committed; if it returns
  /// `false`, generation stops after that token.
  template <class OnToken = no_callback>
  generation_result generate(std::span<const token_id> prompt, const generation_options& opts = {},
                             OnToken&& on_token = {}) {
    const auto t_start = detail::decoder_clock::now();
    const std::size_t vocab = static_cast<std::size_t>(target_.vocab_size());
    const std::size_t ctx = context_length();
    detail::validate_request(prompt, opts, vocab, ctx, "speculative_decoder::generate");

    draft_.truncate(0);
    target_.truncate(0);
    rng_.reseed(seed_);
    spec_.restart();

    generation_result result;
    result.stats.method = "speculative";
    result.stats.prompt_tokens = prompt.size();
    seq_.assign(prompt.begin(), prompt.end());
    seq_.reserve(prompt.size() + std::min(opts.max_new_tokens, ctx));
    result.tokens.reserve(std::min(opts.max_new_tokens, ctx));
    detail::committer<std::remove_reference_t<OnToken>> out(seq_, result, opts, on_token);
    generation_stats& st = result.stats;

    if (opts.max_new_tokens == 0) out.stop("max_tokens");

    while (!out.stopped()) {
      if (seq_.size() >= ctx) {
        out.stop("context");
        break;
      }
      // ---- plan, then 1. draft ----
      spec_.plan(seq_.size(), out.remaining(), ctx);
      if (spec_.drafting) {
        logits_block dl;
        double seconds = 0.0;
        {
          scoped_timer t(seconds);
          dl = detail::feed_block(draft_, seq_, spec_.draft_fed, spec_.s_old);
        }
        spec_.record_draft_forward(seconds);
        detail::check_logits_shape(dl, 0, vocab, "speculative_decoder: the draft's forward");
        while (spec_.on_draft_row(dl.row(dl.rows - 1), vocab, params_, rng_, opts.stop_at_eos, st)) {
          seconds = 0.0;
          {
            scoped_timer t(seconds);
            dl = forward_one(draft_, spec_.drafted[spec_.k - 1]);
          }
          ++spec_.draft_fed;
          spec_.record_draft_forward(seconds);
        }
      }
      spec_.record_drafting(st);

      // ---- lossy shortcut: emit unverified drafts ----
      if (spec_.emit_unverified(seq_, out, [&](std::size_t keep) { draft_.truncate(keep); })) break;

      // ---- 2. verify ----
      const std::vector<token_id>& block = spec_.verify_block(seq_);
      double step_target_seconds = 0.0;
      logits_block tl;
      {
        scoped_timer t(step_target_seconds);
        tl = target_.forward(block);
      }
      spec_.record_verify_forward(st, step_target_seconds);
      detail::check_logits_shape(tl, block.size(), vocab, "speculative_decoder: the target's forward");

      // ---- 3. commit ----
      spec_.verify_and_commit(
          tl, vocab, params_, rng_, st, step_target_seconds, "speculative_decoder", seq_, out,
          [&](std::size_t keep) { target_.truncate(keep); }, [&](std::size_t keep) { draft_.truncate(keep); });
      if (st.awaiting_first_step()) st.record_step_end(detail::decoder_seconds_since(t_start));
    }

    st.total_seconds = detail::decoder_seconds_since(t_start);
    st.record_step_end(st.total_seconds);  // a lossy shortcut's last block ends the loop early
    st.policy_seconds = std::max(0.0, st.total_seconds - st.draft_seconds - st.target_seconds);

    if (opts.sync_caches) {
      const std::size_t keep = seq_.size() - 1;
      sync(draft_, spec_.draft_fed, keep);
      sync(target_, spec_.target_fed, keep);
    }
    return result;
  }

 private:
  template <class M>
  void sync(M& m, std::size_t& fed, std::size_t keep) {
    if (fed > keep) {
      m.truncate(keep);
      fed = keep;
    } else if (fed < keep) {
      detail::feed_block(m, seq_, fed, keep);
    }
  }

  Draft& draft_;
  Target& target_;
  detail::speculation_state<Fallback, Rollback> spec_;  ///< policies, cache counters, step buffers
  sampling_params params_;
  std::uint64_t seed_;
  random_source rng_;
  std::vector<token_id> seq_;
};

template <class Draft, class Target, class Fallback, class Rollback>
speculative_decoder(Draft&, Target&, Fallback, Rollback, sampling_params = {}, std::uint64_t = 0)
    -> speculative_decoder<Draft, Target, Fallback, Rollback>;

/// Builds a `speculative_decoder`, with a plain-sentence error when a type does not fit.
template <class Draft, class Target, class Fallback, class Rollback>
auto make_speculative_decoder(Draft& draft, Target& target, Fallback fallback, Rollback rollback,
                              sampling_params params = {}, std::uint64_t seed = 0) {
  static_assert(has_vocabulary<Draft> && has_vocabulary<Target>,
                "specdec: draft and target need `std::size_t vocab_size() const`");
  static_assert(has_context<Draft> && has_context<Target>,
                "specdec: draft and target need `std::size_t context_length() const` and "
                "`std::size_t cache_length() const`");
  static_assert(has_block_forward<Draft> && has_block_forward<Target>,
                "specdec: draft and target need `specdec::logits_block forward(std::span<const "
                "specdec::token_id>)` returning one row of logits per token");
  static_assert(has_truncate<Draft> && has_truncate<Target>,
                "specdec: draft and target need `void truncate(std::size_t n)` that keeps the "
                "first n cached tokens");
  static_assert(has_draft_decision<Fallback>,
                "specdec: a fallback policy needs `specdec::draft_action decide(const "
                "specdec::draft_step&)`");
  static_assert(observes_outcomes<Fallback>,
                "specdec: a fallback policy needs `void observe(const specdec::step_outcome&)` "
                "(it may do nothing)");
  static_assert(has_verify<Rollback>,
                "specdec: a rollback policy needs `specdec::verify_result verify(const "
                "specdec::verify_input&)`");
  static_assert(declares_exactness<Rollback>,
                "specdec: a rollback policy needs `static constexpr bool exact` (true if it "
                "preserves the target's distribution)");
  if constexpr (language_model<Draft> && language_model<Target> && fallback_policy<Fallback> &&
                rollback_policy<Rollback>) {
    return speculative_decoder<Draft, Target, Fallback, Rollback>(draft, target, std::move(fallback),
                                                                  std::move(rollback), params, seed);
  }
}

/// The baseline: one model, one forward per generated token (the prompt goes in as one
/// block), with the same sampling rules, options, callback and statistics as
/// `speculative_decoder` (here `target_calls` counts the model's forwards).
template <language_model Model>
class autoregressive_decoder {
 public:
  explicit autoregressive_decoder(Model& model, sampling_params params = {}, std::uint64_t seed = 0)
      : model_(model), params_(params), seed_(seed), rng_(seed) {
    params_.validate();
  }

  [[nodiscard]] Model& model() noexcept { return model_; }
  [[nodiscard]] const sampling_params& params() const noexcept { return params_; }
  void set_params(const sampling_params& p) {
    p.validate();
    params_ = p;
  }
  [[nodiscard]] std::uint64_t seed() const noexcept { return seed_; }
  void set_seed(std::uint64_t seed) noexcept { seed_ = seed; }
  [[nodiscard]] std::size_t context_length() const { return model_.context_length(); }

  template <class OnToken = no_callback>
  generation_result generate(std::span<const token_id> prompt, const generation_options& opts = {},
                             OnToken&& on_token = {}) {
    const auto t_start = detail::decoder_clock::now();
    const std::size_t vocab = static_cast<std::size_t>(model_.vocab_size());
    const std::size_t ctx = context_length();
    detail::validate_request(prompt, opts, vocab, ctx, "autoregressive_decoder::generate");
    model_.truncate(0);
    rng_.reseed(seed_);
    std::size_t fed = 0;

    generation_result result;
    result.stats.method = "autoregressive";
    result.stats.prompt_tokens = prompt.size();
    seq_.assign(prompt.begin(), prompt.end());
    result.tokens.reserve(std::min(opts.max_new_tokens, ctx));
    detail::committer<std::remove_reference_t<OnToken>> out(seq_, result, opts, on_token);
    generation_stats& st = result.stats;
    if (opts.max_new_tokens == 0) out.stop("max_tokens");
    probs_.resize(vocab);

    while (!out.stopped()) {
      if (seq_.size() >= ctx) {
        out.stop("context");
        break;
      }
      logits_block l;
      {
        scoped_timer t(st.target_seconds);
        l = detail::feed_block(model_, seq_, fed, seq_.size());
      }
      ++st.target_calls;
      out.emit(detail::sample_token(l.row(l.rows - 1), params_, probs_, rng_));
      if (st.awaiting_first_step()) st.record_step_end(detail::decoder_seconds_since(t_start));
    }
    st.total_seconds = detail::decoder_seconds_since(t_start);
    st.policy_seconds = std::max(0.0, st.total_seconds - st.target_seconds);
    if (opts.sync_caches) {
      const std::size_t keep = seq_.size() - 1;
      if (fed > keep) model_.truncate(keep);
      else if (fed < keep) detail::feed_block(model_, seq_, fed, keep);
    }
    return result;
  }

 private:
  Model& model_;
  sampling_params params_;
  std::uint64_t seed_;
  random_source rng_;
  std::vector<token_id> seq_;
  std::vector<float> probs_;
};

}  // namespace specdec
