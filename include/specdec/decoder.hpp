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
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "specdec/draft.hpp"
#include "specdec/error.hpp"
#include "specdec/fallback.hpp"
#include "specdec/generation.hpp"
#include "specdec/model.hpp"
#include "specdec/rollback.hpp"
#include "specdec/sampling.hpp"
#include "specdec/telemetry.hpp"
#include "specdec/token.hpp"
#include "specdec/verifier.hpp"

namespace specdec {

namespace detail {

/// Feeds `seq[fed, upto)` to `m` as one block (nothing if empty); returns the logits.
template <language_model M>
logits_block feed_block(M& m, const std::vector<token_id>& seq, std::size_t& fed, std::size_t upto) {
  std::span<const token_id> block(seq.data() + fed, upto - fed);
  logits_block out = m.forward(block);
  fed = upto;
  return out;
}

/// What every single-sequence decoder holds to sample: validated params, the seed the
/// next `generate` starts from, and the random source it reseeds.
class seeded_sampling {
 public:
  seeded_sampling(sampling_params params, std::uint64_t seed) : params_(params), seed_(seed), rng_(seed) {
    params_.validate();
  }
  [[nodiscard]] const sampling_params& params() const noexcept { return params_; }
  /// Replaces the sampling params (validated).
  void set_params(const sampling_params& p) {
    p.validate();
    params_ = p;
  }
  [[nodiscard]] std::uint64_t seed() const noexcept { return seed_; }
  /// The seed the next `generate` starts from.
  void set_seed(std::uint64_t seed) noexcept { seed_ = seed; }

 protected:
  void restart_rng() { rng_.reseed(seed_); }
  sampling_params params_;
  std::uint64_t seed_;
  random_source rng_;
};

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
/// 3. Commit: accepted drafts, the next token and the verdict's `following` tokens (a remote
///    verifier's run-ahead) are emitted in order (callback, EOS,
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
/// Something that drafts: a `language_model` (a draft model, drafting from its rows) or
/// a `token_drafter` (ids only, e.g. prompt lookup).
///
/// ```cpp
/// static_assert(specdec::drafter<specdec::testing::markov_model>);
/// ```
template <class D>
concept drafter = language_model<D> || token_drafter<D>;

/// The speculative decoding loop over any `verifier`: a drafter proposes a `draft_block`
/// under a fallback policy, the verifier returns a `verdict`, and the decoder commits it
/// (emits the tokens, cuts the draft model's cache back itself). `speculative_decoder`
/// is this loop with a `local_verifier` (a target model and a rollback policy in this
/// process); a verifier on a server (hybrid/) plugs in the same way.
///
/// ```cpp
/// specdec::local_verifier v(big, specdec::greedy_match{});
/// specdec::basic_speculative_decoder dec(little, specdec::fixed_gamma{.gamma = 4}, std::move(v));
/// auto r = dec.generate(prompt, {.max_new_tokens = 64});
/// ```
///
/// With a `token_drafter` the fallback policy sees each proposed id with no distribution
/// (`draft_step::q` empty), so it must declare `reads_confidence = false`; verification
/// treats the proposal as one-hot (greedy and rejection sampling stay exact).
template <drafter Draft, fallback_policy Fallback, verifier Verifier>
class basic_speculative_decoder : public detail::seeded_sampling {
 public:
  static constexpr bool exact = static_cast<bool>(Verifier::exact);
  static constexpr bool drafts_ids_only = !language_model<Draft>;

  /// Holds a reference to `draft` (it must outlive the decoder) and owns the verifier.
  /// Throws `vocabulary_mismatch` if draft and verifier disagree on the vocabulary,
  /// `invalid_argument` for bad sampling params or fallback knobs.
  basic_speculative_decoder(Draft& draft, Fallback fallback, Verifier verifier, sampling_params params = {},
                            std::uint64_t seed = 0)
      : seeded_sampling(params, seed), draft_(draft), drafter_(std::move(fallback)), verifier_(std::move(verifier)) {
    if constexpr (has_vocabulary<Draft>) check_same_vocabulary(draft_, verifier_);
    validate_policy(drafter_.fallback());
  }

  [[nodiscard]] Draft& draft() noexcept { return draft_; }
  [[nodiscard]] Verifier& verifier() noexcept { return verifier_; }
  [[nodiscard]] const Verifier& verifier() const noexcept { return verifier_; }
  [[nodiscard]] Fallback& fallback() noexcept { return drafter_.fallback(); }
  [[nodiscard]] const Fallback& fallback() const noexcept { return drafter_.fallback(); }
  /// The most tokens S may hold: the verifier's context, and the draft model's if smaller.
  [[nodiscard]] std::size_t context_length() const {
    const std::size_t v = static_cast<std::size_t>(verifier_.context_length());
    if constexpr (has_context<Draft>) return std::min<std::size_t>(draft_.context_length(), v);
    else return v;
  }

  /// Generates up to `opts.max_new_tokens` tokens after `prompt`; see speculative_decoder.
  /// `on_token(t)` is called for each token as soon as it is committed; if it returns
  /// `false`, generation stops after that token.
  template <class OnToken = no_callback>
  generation_result generate(std::span<const token_id> prompt, const generation_options& opts = {},
                             OnToken&& on_token = {}) {
    const auto t_start = detail::decoder_clock::now();
    const std::size_t vocab = static_cast<std::size_t>(verifier_.vocab_size());
    const std::size_t ctx = context_length();
    detail::validate_request(prompt, opts, vocab, ctx, "speculative_decoder::generate");

    if constexpr (language_model<Draft>) draft_.truncate(0);
    else if constexpr (resettable<Draft>) draft_.reset();
    verifier_.reset();
    if constexpr (length_aware_verifier<Verifier>)
      verifier_.expect_length(detail::final_length(prompt, opts, ctx));
    restart_rng();
    drafter_.reset();

    generation_result result;
    result.stats.method = "speculative";
    result.stats.prompt_tokens = prompt.size();
    seq_.assign(prompt.begin(), prompt.end());
    seq_.reserve(prompt.size() + std::min(opts.max_new_tokens, ctx));
    result.tokens.reserve(std::min(opts.max_new_tokens, ctx));
    detail::committer<std::remove_reference_t<OnToken>> out(seq_, result, opts, on_token);
    generation_stats& st = result.stats;

    if (opts.max_new_tokens == 0) out.stop(stop_reason::max_tokens);

    while (!out.stopped()) {
      if (seq_.size() >= ctx) {
        out.stop(stop_reason::context);
        break;
      }
      // ---- 1. draft -> draft_block ----
      if (drafter_.begin_step(seq_.size(), out.remaining(), ctx, exact, verifier_draft_cap()))
        draft_step(vocab, opts.stop_at_eos, st);
      drafter_.record_drafting(st);
      const draft_block d = drafter_.block();

      // Lossy verification: a block that ended at the budget or EOS is emitted unverified.
      if (drafter_.ends_unverified(exact)) {
        if (out.emit_all(d.tokens)) out.stop(stop_reason::max_tokens);  // budget exhausted
        rewind_draft(seq_.size() - 1);
        break;
      }

      // ---- 2. verify -> verdict ----
      const verdict v = verifier_.verify(seq_, d, params_, rng_);
      ++st.target_calls;
      st.target_seconds += v.target_seconds;
      if (!d.empty()) {
        st.record_verification(d.size(), v.accepted);
        drafter_.finish_step(v.accepted, v.target_seconds, v.target_rows);
      }

      // ---- 3. commit ----
      if (out.emit_all(d.tokens.first(v.accepted)) && out.emit(v.next)) out.emit_all(v.following);
      rewind_draft(seq_.size() - 1);
      if (st.awaiting_first_step()) st.record_step_end(detail::decoder_seconds_since(t_start));
    }

    st.total_seconds = detail::decoder_seconds_since(t_start);
    st.record_step_end(st.total_seconds);  // a lossy shortcut's last block ends the loop early
    st.policy_seconds = std::max(0.0, st.total_seconds - st.draft_seconds - st.target_seconds);

    if (opts.sync_caches) {
      const std::size_t keep = seq_.size() - 1;
      if constexpr (language_model<Draft>) {
        if (drafter_.rewind(keep)) draft_.truncate(keep);
        if (drafter_.fed() < keep) {
          draft_.forward(std::span<const token_id>(seq_).subspan(drafter_.fed(), keep - drafter_.fed()));
          drafter_.fed_up_to(keep);
        }
      }
      verifier_.sync(seq_);
    }
    return result;
  }

 private:
  /// The drafting part of a step: the draft model's forwards row by row, or one proposal.
  void draft_step(std::size_t vocab, bool stop_at_eos, generation_stats& st) {
    double seconds = 0.0;
    if constexpr (language_model<Draft>) {
      logits_block dl;
      const std::span<const token_id> pending = drafter_.pending(seq_);
      {
        scoped_timer t(seconds);
        dl = draft_.forward(pending);
      }
      drafter_.fed_pending();
      drafter_.record_forward(seconds);
      detail::check_logits_shape(dl, pending.size(), vocab, "speculative_decoder: the draft's forward");
      while (drafter_.on_row(dl.row(dl.rows - 1), vocab, params_, rng_, stop_at_eos, st)) {
        seconds = 0.0;
        {
          scoped_timer t(seconds);
          dl = draft_.forward(drafter_.last_drafted());
        }
        drafter_.record_forward(seconds);
        detail::check_logits_shape(dl, 1, vocab, "speculative_decoder: the draft's forward");
      }
    } else {
      std::span<const token_id> ids;
      {
        scoped_timer t(seconds);
        ids = draft_.propose(seq_, drafter_.capacity());
      }
      drafter_.record_forward(seconds);
      check_token_ids(ids, vocab, "speculative_decoder: the drafter's proposal");
      drafter_.take_proposal(ids, stop_at_eos, st);
    }
  }

  /// A verifier may cap the drafts it takes per round (a server under load announces a
  /// smaller cap, down to none: `max_draft()`); otherwise there is no cap.
  [[nodiscard]] std::size_t verifier_draft_cap() const {
    if constexpr (requires { verifier_.max_draft(); }) return static_cast<std::size_t>(verifier_.max_draft());
    else return std::numeric_limits<std::size_t>::max();
  }

  void rewind_draft(std::size_t keep) {
    if constexpr (language_model<Draft>) {
      if (drafter_.rewind(keep)) draft_.truncate(keep);
    }
  }

  Draft& draft_;
  model_drafter<Fallback> drafter_;
  Verifier verifier_;
  std::vector<token_id> seq_;
};

template <class Draft, class Fallback, class Verifier>
basic_speculative_decoder(Draft&, Fallback, Verifier, sampling_params = {}, std::uint64_t = 0)
    -> basic_speculative_decoder<Draft, Fallback, Verifier>;

/// Draft-then-verify decoding with a pluggable fallback policy (when the draft hands over
/// to the target) and rollback policy (which drafted tokens survive verification): the
/// `basic_speculative_decoder` loop with a `local_verifier` over `Target`.
///
/// One step, with S the committed sequence (prompt + emitted tokens):
/// 1. Draft: the committed tokens the draft has not seen go in as one block; then the
///    draft proposes tokens one at a time, asking `fallback.decide` after each. Drafting
///    also ends at EOS (with `stop_at_eos`), at the token budget and at the context edge.
///    The result is a `draft_block` value.
/// 2. Verify: ONE target forward of the committed tokens the target has not seen (at
///    least the last token of S) plus the k drafted tokens; `rollback.verify` gets the
///    k+1 target rows and decides how many drafts survive and which token follows: a
///    `verdict` value. With k = 0 the target simply samples the next token.
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
/// `reads_confidence_v`). Rollback policies always get the one-hot q/p rows of greedy
/// decoding in `verify_input`.
///
/// Statistics: `draft_calls`/`target_calls` count forwards, `record_verification(k, a)`
/// is called for each target verification with k >= 1, `fallbacks` counts the drafted
/// tokens the fallback policy discarded (`discard_and_stop`: the draft judged itself unfit
/// and the target writes that position; a planned `keep_and_stop`, as fixed_gamma's at
/// gamma, is not a fallback), `draft_seconds` and `target_seconds` time the forwards and
/// `policy_seconds` is everything else of `total_seconds`. Tokens emitted unverified
/// (lossy policies) count in `tokens_emitted` but not in the verification counters.
/// `fallback.observe` is told the outcome of every verification with k >= 1.
template <drafter Draft, language_model Target, fallback_policy Fallback, rollback_policy Rollback>
class speculative_decoder
    : public basic_speculative_decoder<Draft, Fallback, local_verifier<Target, Rollback>> {
  using base = basic_speculative_decoder<Draft, Fallback, local_verifier<Target, Rollback>>;

 public:
  /// Holds references to `draft` and `target` (they must outlive the decoder and be two
  /// distinct objects). Throws `vocabulary_mismatch` if they disagree on the vocabulary,
  /// `invalid_argument` for bad sampling params or policy parameters (policies with a
  /// `validate()` member are validated).
  speculative_decoder(Draft& draft, Target& target, Fallback fallback, Rollback rollback,
                      sampling_params params = {}, std::uint64_t seed = 0)
      : base(check_distinct(draft, target), std::move(fallback),
             local_verifier<Target, Rollback>(target, validated(std::move(rollback))), params, seed) {}

  [[nodiscard]] Target& target() noexcept { return this->verifier().target(); }
  [[nodiscard]] Rollback& rollback() noexcept { return this->verifier().rollback(); }
  [[nodiscard]] const Rollback& rollback() const noexcept { return this->verifier().rollback(); }

 private:
  static Draft& check_distinct(Draft& draft, const Target& target) {
    if (static_cast<const void*>(&draft) == static_cast<const void*>(&target))
      throw invalid_argument(
          "speculative_decoder: draft and target are the same object; expected two distinct "
          "model instances (each keeps its own cache; two instances may share weights)");
    return draft;
  }
  static Rollback validated(Rollback r) {
    validate_policy(r);
    return r;
  }
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
class autoregressive_decoder : public detail::seeded_sampling {
 public:
  explicit autoregressive_decoder(Model& model, sampling_params params = {}, std::uint64_t seed = 0)
      : seeded_sampling(params, seed), model_(model) {}

  [[nodiscard]] Model& model() noexcept { return model_; }
  [[nodiscard]] std::size_t context_length() const { return model_.context_length(); }

  template <class OnToken = no_callback>
  generation_result generate(std::span<const token_id> prompt, const generation_options& opts = {},
                             OnToken&& on_token = {}) {
    const auto t_start = detail::decoder_clock::now();
    const std::size_t vocab = static_cast<std::size_t>(model_.vocab_size());
    const std::size_t ctx = context_length();
    detail::validate_request(prompt, opts, vocab, ctx, "autoregressive_decoder::generate");
    model_.truncate(0);
    restart_rng();
    std::size_t fed = 0;

    generation_result result;
    result.stats.method = "autoregressive";
    result.stats.prompt_tokens = prompt.size();
    seq_.assign(prompt.begin(), prompt.end());
    result.tokens.reserve(std::min(opts.max_new_tokens, ctx));
    detail::committer<std::remove_reference_t<OnToken>> out(seq_, result, opts, on_token);
    generation_stats& st = result.stats;
    if (opts.max_new_tokens == 0) out.stop(stop_reason::max_tokens);
    probs_.resize(vocab);

    while (!out.stopped()) {
      if (seq_.size() >= ctx) {
        out.stop(stop_reason::context);
        break;
      }
      logits_block l;
      {
        scoped_timer t(st.target_seconds);
        l = detail::feed_block(model_, seq_, fed, seq_.size());
      }
      ++st.target_calls;
      out.emit(sample_token(l.row(l.rows - 1), params_, probs_, rng_));
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
  std::vector<token_id> seq_;
  std::vector<float> probs_;
};

}  // namespace specdec
