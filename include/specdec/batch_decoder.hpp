#pragma once
/// \file batch_decoder.hpp
/// Batched decoding over a `batched_model` (specdec/batch.hpp) with continuous batching:
/// requests are submitted at any time, join the batch at the start of the next `step()`,
/// and leave it as soon as they finish; every step advances all active sequences by one
/// round with ONE batched forward per model call.
///
/// - `batched_autoregressive_decoder<BM>`: one token per sequence per step.
/// - `batched_speculative_decoder<DraftBM, TargetBM, Fallback, Rollback>`: each sequence
///   drafts with the little model (the draft forwards of all sequences still drafting are
///   batched together: one `forward_batch` per draft position), then ALL sequences' blocks
///   are verified in ONE target `forward_batch`; acceptance, rollback (per-sequence
///   `truncate`) and the bonus token are per sequence.
///
/// ```cpp
/// auto little = specdec::independent_batch<specdec::cpu::transformer>([&] { return std::make_unique<specdec::cpu::transformer>(lck); });
/// auto big = specdec::independent_batch<specdec::cpu::transformer>([&] { return std::make_unique<specdec::cpu::transformer>(bck); });
/// specdec::batched_speculative_decoder dec(little, big, specdec::fixed_gamma{4},
///                                          specdec::rejection_sampling{}, {.temperature = 1.0f}, 42);
/// dec.submit({.prompt = {1, 450, 200}, .options = {.max_new_tokens = 32}, .id = 7});
/// dec.submit({.prompt = {1}, .options = {.max_new_tokens = 8}, .id = 8});
/// for (const specdec::batch_result& r : dec.run()) std::cout << r.id << ": " << r.result.stats << '\n';
/// ```
///
/// Per-sequence semantics (both decoders): a request with id `i` is decoded exactly as the
/// single-sequence decoder of decoder.hpp with seed `seed + i` decodes it (same sampling
/// rules, options, stop reasons, policies; see decoder.hpp): its random source is its own,
/// seeded with `seed + i`, and its fallback and rollback policies are copies of the
/// decoder's prototypes, `reset()` when it joins, so adaptive policies learn per sequence.
/// With a batched model honouring the batched contract bit for bit (independent_batch,
/// the CPU backend), a sequence's tokens therefore do not depend on what else is in the
/// batch, and equal `speculative_decoder(..., seed + i).generate(prompt, options)`'s (the
/// tests check both). Two exceptions: a policy that reads wall-clock times
/// (`expected_speedup_gamma` with `cost_ratio == 0`) sees each batched forward's full wall
/// time, which depends on the batch; and `batched_speculative_options::max_draft_per_step`
/// caps the drafts per step (the single decoder has no such cap) so that the KV growth of
/// a step is bounded for the scheduler.
///
/// Statistics per request (`generation_stats`): `draft_calls` / `target_calls` count the
/// batched forwards the sequence took part in; `draft_seconds` / `target_seconds` charge
/// it the full wall time of those forwards (what it waited); `total_seconds` runs from
/// joining to finishing; `policy_seconds` is the rest (which includes the other
/// sequences' sampling and policy work in the same steps). `batch_timing` adds the step
/// counts and wall times of the request's life in the server.
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "specdec/batch.hpp"
#include "specdec/decoder.hpp"
#include "specdec/draft.hpp"
#include "specdec/generation.hpp"
#include "specdec/verifier.hpp"
#include "specdec/error.hpp"
#include "specdec/fallback.hpp"
#include "specdec/rollback.hpp"
#include "specdec/sampling.hpp"
#include "specdec/telemetry.hpp"
#include "specdec/token.hpp"

namespace specdec {

/// Identifies a request; also offsets its random seed (`seed + id`).
using request_id = std::uint64_t;

/// One generation request for a batched decoder.
///
/// ```cpp
/// specdec::batch_request r{.prompt = {1, 450}, .options = {.max_new_tokens = 16}, .id = 3};
/// r.on_token = [](specdec::token_id t) { std::cout << t << ' '; return true; };  // optional
/// ```
struct batch_request {
  std::vector<token_id> prompt;
  generation_options options{};
  request_id id = 0;
  /// Called with each token as it is committed; returning false stops this request after
  /// that token. Empty = no callback.
  std::function<bool(token_id)> on_token{};
};

/// A request's life in the batched decoder, in steps (the decoder's `steps()` counter) and
/// wall seconds.
struct batch_timing {
  std::size_t submitted_step = 0;  ///< steps completed when it was submitted
  std::size_t admitted_step = 0;   ///< index of the first step it took part in
  std::size_t finished_step = 0;   ///< steps completed when it finished
  std::size_t steps_in_batch = 0;  ///< steps it took part in
  std::size_t max_batch_size = 0;  ///< most sequences in a step it took part in
  double queued_seconds = 0.0;     ///< submit -> joining the batch
  double wall_seconds = 0.0;       ///< submit -> finished
};

/// What a batched decoder returns per request. `result.stop_reason` is one of the
/// single-sequence decoder's, or "preempted" for a request taken out by `preempt`.
///
/// ```cpp
/// for (const specdec::batch_result& r : dec.take_results())
///   std::printf("%llu: %zu tokens in %zu steps\n", (unsigned long long)r.id, r.result.tokens.size(),
///               r.timing.steps_in_batch);
/// ```
struct batch_result {
  request_id id = 0;
  generation_result result;
  batch_timing timing;
};

/// Knobs of `batched_speculative_decoder`.
///
/// ```cpp
/// specdec::batched_speculative_options o{.max_draft_per_step = 8};
/// o.validate();
/// ```
struct batched_speculative_options {
  /// At most this many drafted tokens per sequence per step (bounds a step's KV growth to
  /// max_draft_per_step + 1 tokens per sequence).
  std::size_t max_draft_per_step = 32;

  void validate() const {
    if (max_draft_per_step == 0)
      throw invalid_argument("batched_speculative_options.max_draft_per_step must be >= 1, got 0");
  }
};

namespace detail {

/// Adapts a request's optional std::function callback to the committer.
struct request_callback {
  const std::function<bool(token_id)>* f = nullptr;
  bool operator()(token_id t) const { return !*f || (*f)(t); }
};

/// What every batched decoder keeps per sequence.
struct batch_sequence {
  batch_request req;
  std::vector<token_id> seq;  ///< S = prompt + generated
  generation_result result;
  batch_timing timing;
  random_source rng;
  decoder_clock::time_point submitted_at{};
  decoder_clock::time_point admitted_at{};
  bool finished = false;

  [[nodiscard]] bool stopped() const noexcept { return result.stop_reason != stop_reason::none; }
  /// Emits `t` through the single-sequence committer; false once the request must stop.
  bool emit(token_id t) {
    request_callback cb{&req.on_token};
    committer<request_callback> out(seq, result, req.options, cb);
    return out.emit(t);
  }
  void stop(stop_reason why) { result.stop_reason = why; }
  [[nodiscard]] std::size_t remaining() const noexcept {
    return req.options.max_new_tokens - result.tokens.size();
  }
};

/// The continuous-batching front end shared by the batched decoders: the queue of
/// submitted requests, the active sequences, finished results, the step counter.
template <class Seq>
class batch_frontend {
 public:
  /// Requests waiting to join (they join at the start of the next step).
  [[nodiscard]] std::size_t pending_count() const noexcept { return pending_.size(); }
  /// Sequences in the batch.
  [[nodiscard]] std::size_t active_count() const noexcept { return active_.size(); }
  /// True when nothing is pending or active.
  [[nodiscard]] bool idle() const noexcept { return pending_.empty() && active_.empty(); }
  /// Steps completed so far.
  [[nodiscard]] std::size_t steps() const noexcept { return steps_; }
  /// Moves out the results of the requests finished so far (in finishing order).
  std::vector<batch_result> take_results() { return std::exchange(results_, {}); }
  /// Tokens generated so far by a pending or active request (throws for unknown ids).
  [[nodiscard]] std::size_t generated(request_id id) const {
    for (const auto& s : active_)
      if (s->req.id == id) return s->result.tokens.size();
    for (const auto& s : pending_)
      if (s->req.id == id) return 0;
    throw invalid_argument("batched decoder: no pending or active request has id " + std::to_string(id));
  }
  /// Ids of the active sequences, in batch order.
  [[nodiscard]] std::vector<request_id> active_ids() const {
    std::vector<request_id> v;
    for (const auto& s : active_) v.push_back(s->req.id);
    return v;
  }

 protected:
  void enqueue(std::unique_ptr<Seq> s, batch_request r, std::size_t vocab, std::size_t ctx, std::uint64_t seed,
               const char* who) {
    validate_request(r.prompt, r.options, vocab, ctx, who);
    for (const auto& s : active_)
      if (s->req.id == r.id) duplicate(r.id, who);
    for (const auto& s : pending_)
      if (s->req.id == r.id) duplicate(r.id, who);
    s->req = std::move(r);
    s->rng.reseed(seed + s->req.id);
    s->submitted_at = decoder_clock::now();
    s->timing.submitted_step = steps_;
    pending_.push_back(std::move(s));
  }
  [[noreturn]] static void duplicate(request_id id, const char* who) {
    throw invalid_argument(std::string(who) + ": request id " + std::to_string(id) +
                           " is already pending or active; expected distinct ids (the id seeds the request)");
  }
  /// Moves pending requests into the batch, calling `join(seq)` on each.
  template <class Join>
  void admit(Join join) {
    while (!pending_.empty()) {
      auto s = std::move(pending_.front());
      pending_.pop_front();
      s->admitted_at = decoder_clock::now();
      s->timing.admitted_step = steps_;
      s->timing.queued_seconds = std::chrono::duration<double>(s->admitted_at - s->submitted_at).count();
      s->seq.assign(s->req.prompt.begin(), s->req.prompt.end());
      s->result.stats.prompt_tokens = s->req.prompt.size();
      join(*s);
      if (s->req.options.max_new_tokens == 0) s->stop(stop_reason::max_tokens);
      active_.push_back(std::move(s));
    }
  }
  /// Starts a step: counts the batch size into every active sequence.
  void begin_step() {
    for (auto& s : active_) {
      ++s->timing.steps_in_batch;
      s->timing.max_batch_size = std::max(s->timing.max_batch_size, active_.size());
    }
  }
  /// Ends a step: finished sequences leave (`leave(seq)` frees their caches).
  template <class Leave>
  std::size_t retire(Leave leave) {
    ++steps_;
    const auto now = decoder_clock::now();
    for (auto& s : active_) s->result.stats.record_step_end(std::chrono::duration<double>(now - s->admitted_at).count());
    std::size_t n = 0;
    for (std::size_t i = 0; i < active_.size();) {
      if (active_[i]->stopped()) {
        leave(*active_[i]);
        results_.push_back(finish(*active_[i]));
        active_.erase(active_.begin() + static_cast<std::ptrdiff_t>(i));
        ++n;
      } else {
        ++i;
      }
    }
    return n;
  }
  batch_result finish(Seq& s) {
    const auto now = decoder_clock::now();
    s.timing.finished_step = steps_;
    s.timing.wall_seconds = std::chrono::duration<double>(now - s.submitted_at).count();
    generation_stats& st = s.result.stats;
    st.total_seconds = std::chrono::duration<double>(now - s.admitted_at).count();
    if (s.timing.steps_in_batch == 0) st.total_seconds = 0.0;
    st.policy_seconds = std::max(0.0, st.total_seconds - st.draft_seconds - st.target_seconds);
    return {s.req.id, std::move(s.result), s.timing};
  }
  /// Takes request `id` out now (pending or active) and returns its partial result.
  template <class Leave>
  batch_result take_out(request_id id, Leave leave, const char* who) {
    for (std::size_t i = 0; i < pending_.size(); ++i) {
      if (pending_[i]->req.id == id) {
        auto s = std::move(pending_[i]);
        pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(i));
        s->stop(stop_reason::preempted);
        return finish(*s);
      }
    }
    for (std::size_t i = 0; i < active_.size(); ++i) {
      if (active_[i]->req.id == id) {
        auto s = std::move(active_[i]);
        active_.erase(active_.begin() + static_cast<std::ptrdiff_t>(i));
        leave(*s);
        if (!s->stopped()) s->stop(stop_reason::preempted);
        return finish(*s);
      }
    }
    throw invalid_argument(std::string(who) + ": no pending or active request has id " + std::to_string(id));
  }

  std::deque<std::unique_ptr<Seq>> pending_;
  std::vector<std::unique_ptr<Seq>> active_;
  std::vector<batch_result> results_;
  std::size_t steps_ = 0;
};

/// Per-sequence state of the batched autoregressive decoder.
struct ar_sequence : batch_sequence {
  sequence_id sid = 0;
  std::size_t fed = 0;  ///< tokens of `seq` in the model's cache
};

}  // namespace detail

/// Batched autoregressive decoding: each step, ONE `forward_batch` feeds every active
/// sequence the committed tokens it has not seen (its whole prompt when it has just
/// joined, else its last token) and each sequence samples one token. The baseline of the
/// batched speculative decoder; per sequence identical to `autoregressive_decoder` with
/// seed `seed + id` (see the file comment).
///
/// ```cpp
/// specdec::batched_autoregressive_decoder dec(bm, {.temperature = 0.8f}, /*seed=*/1);
/// dec.submit({.prompt = {1, 450}, .options = {.max_new_tokens = 16}, .id = 0});
/// while (!dec.idle()) dec.step();
/// auto results = dec.take_results();
/// ```
template <batched_model BM>
class batched_autoregressive_decoder : public detail::batch_frontend<detail::ar_sequence> {
 public:
  explicit batched_autoregressive_decoder(BM& model, sampling_params params = {}, std::uint64_t seed = 0)
      : model_(model), params_(params), seed_(seed) {
    params_.validate();
  }

  [[nodiscard]] BM& model() noexcept { return model_; }
  [[nodiscard]] const sampling_params& params() const noexcept { return params_; }
  [[nodiscard]] std::uint64_t seed() const noexcept { return seed_; }
  [[nodiscard]] std::size_t context_length() const { return model_.context_length(); }
  /// Most tokens a sequence's cache grows by in one step (after joining).
  [[nodiscard]] static constexpr std::size_t max_step_growth() noexcept { return 1; }

  /// Queues `r` (validated now: throws like `autoregressive_decoder::generate`, or
  /// `invalid_argument` for an id already pending or active); it joins at the next step.
  void submit(batch_request r) {
    enqueue(std::make_unique<seq_state>(), std::move(r), static_cast<std::size_t>(model_.vocab_size()),
            context_length(), seed_,
            "batched_autoregressive_decoder::submit");
  }

  /// Admits the pending requests, then advances every active sequence by one token with
  /// one batched forward. Returns how many requests finished in this step.
  std::size_t step() {
    admit([&](seq_state& s) {
      s.sid = model_.add_sequence();
      s.result.stats.method = "batched_autoregressive";
    });
    const std::size_t vocab = static_cast<std::size_t>(model_.vocab_size());
    const std::size_t ctx = context_length();
    begin_step();
    blocks_.clear();
    stepping_.clear();
    for (auto& s : active_) {
      if (s->stopped()) continue;
      if (s->seq.size() >= ctx) {
        s->stop(stop_reason::context);
        continue;
      }
      blocks_.push_back({s->sid, std::span<const token_id>(s->seq.data() + s->fed, s->seq.size() - s->fed)});
      stepping_.push_back(s.get());
    }
    if (!blocks_.empty()) {
      double seconds = 0.0;
      batch_logits out;
      {
        scoped_timer t(seconds);
        out = model_.forward_batch(blocks_);
      }
      probs_.resize(vocab);
      for (std::size_t i = 0; i < stepping_.size(); ++i) {
        seq_state& s = *stepping_[i];
        const logits_block l = out.block(i);
        detail::check_logits_shape(l, 0, vocab, "batched_autoregressive_decoder: forward_batch, for a block,");
        s.fed = s.seq.size();
        ++s.result.stats.target_calls;
        s.result.stats.target_seconds += seconds;
        s.emit(sample_token(l.row(l.rows - 1), params_, probs_, s.rng));
      }
    }
    return retire([&](seq_state& s) { model_.remove_sequence(s.sid); });
  }

  /// Steps until nothing is pending or active; returns the results finished meanwhile
  /// (and any not yet taken).
  std::vector<batch_result> run() {
    while (!idle()) step();
    return take_results();
  }

  /// Takes request `id` out of the queue or the batch now and returns its partial result
  /// (`stop_reason == "preempted"` unless it had already stopped). Throws
  /// `invalid_argument` for an unknown id.
  batch_result preempt(request_id id) {
    return take_out(id, [&](seq_state& s) { model_.remove_sequence(s.sid); },
                    "batched_autoregressive_decoder::preempt");
  }

 private:
  using seq_state = detail::ar_sequence;

  BM& model_;
  sampling_params params_;
  std::uint64_t seed_;
  std::vector<sequence_block> blocks_;
  std::vector<seq_state*> stepping_;
  std::vector<float> probs_;
};

namespace detail {

/// Per-sequence state of the batched speculative decoder: the frontend's part plus the
/// speculative state `speculative_decoder` keeps (policies, cache counters, step buffers).
template <class Fallback, class Rollback>
struct spec_sequence : batch_sequence {
  sequence_id draft_sid = 0;
  sequence_id target_sid = 0;
  model_drafter<Fallback> drafter;
  Rollback rollback;
  std::size_t target_fed = 0;       ///< tokens of S in the target's cache
  std::vector<token_id> block;      ///< this step's target block: unseen S, then the drafts
  judge_buffers buf;

  spec_sequence(const Fallback& f, const Rollback& r) : drafter(f), rollback(r) {}
};

}  // namespace detail

/// Batched speculative decoding with continuous batching. One step, over all active
/// sequences (S_i = sequence i's prompt + emitted tokens):
/// 1. Draft, batched by position: the first draft `forward_batch` feeds each sequence the
///    committed tokens the draft has not seen; each later one feeds the token each
///    still-drafting sequence just drafted. After each, every sequence samples from its
///    row (its own random source) and asks its own fallback policy; drafting ends per
///    sequence exactly as in `speculative_decoder` (fallback, budget, EOS, context, and
///    `max_draft_per_step`).
/// 2. Verify: ONE target `forward_batch` of every sequence's unseen committed tokens plus
///    its k_i drafts (k_i may be 0); each sequence's rollback policy judges its k_i + 1 rows.
/// 3. Commit per sequence: accepted drafts and the next token are emitted; each sequence's
///    draft and target caches are truncated to S_i minus its last token; finished
///    sequences leave both models.
/// Lossy rollback policies (BiLD) emit a block ended by budget or EOS unverified, as the
/// single-sequence decoder does; such a sequence sits out the verify forward.
///
/// ```cpp
/// specdec::batched_speculative_decoder dec(little_batch, big_batch, specdec::fixed_gamma{.gamma = 4},
///                                          specdec::greedy_match{});
/// for (specdec::request_id i = 0; i < 8; ++i) dec.submit({.prompt = prompts[i], .id = i});
/// auto results = dec.run();
/// ```
template <batched_model DraftBM, batched_model TargetBM, fallback_policy Fallback, rollback_policy Rollback>
class batched_speculative_decoder
    : public detail::batch_frontend<detail::spec_sequence<Fallback, Rollback>> {
  using seq_state = detail::spec_sequence<Fallback, Rollback>;
  using base = detail::batch_frontend<seq_state>;

 public:
  static constexpr bool exact = static_cast<bool>(Rollback::exact);

  /// Holds references to both batched models (distinct objects that outlive the
  /// decoder). `fallback` and `rollback` are prototypes copied into every request.
  /// Throws `vocabulary_mismatch`, or `invalid_argument` for bad params, policy knobs or
  /// options.
  batched_speculative_decoder(DraftBM& draft, TargetBM& target, Fallback fallback, Rollback rollback,
                              sampling_params params = {}, std::uint64_t seed = 0,
                              batched_speculative_options options = {})
      : draft_(draft),
        target_(target),
        fallback_(std::move(fallback)),
        rollback_(std::move(rollback)),
        params_(params),
        seed_(seed),
        options_(options) {
    if (static_cast<const void*>(&draft) == static_cast<const void*>(&target))
      throw invalid_argument(
          "batched_speculative_decoder: draft and target are the same object; expected two distinct "
          "batched models");
    check_same_vocabulary(draft_, target_);
    params_.validate();
    options_.validate();
    validate_policy(fallback_);
    validate_policy(rollback_);
  }

  [[nodiscard]] DraftBM& draft() noexcept { return draft_; }
  [[nodiscard]] TargetBM& target() noexcept { return target_; }
  [[nodiscard]] const sampling_params& params() const noexcept { return params_; }
  [[nodiscard]] std::uint64_t seed() const noexcept { return seed_; }
  [[nodiscard]] const batched_speculative_options& options() const noexcept { return options_; }
  /// The smaller context length of the two models.
  [[nodiscard]] std::size_t context_length() const {
    return std::min<std::size_t>(draft_.context_length(), target_.context_length());
  }
  /// Most tokens a sequence's committed length (and its target cache, within the step)
  /// grows by in one step: max_draft_per_step + 1.
  [[nodiscard]] std::size_t max_step_growth() const noexcept { return options_.max_draft_per_step + 1; }

  /// Queues `r` (validated now); it joins at the next step.
  void submit(batch_request r) {
    this->enqueue(std::make_unique<seq_state>(fallback_, rollback_), std::move(r),
                  static_cast<std::size_t>(target_.vocab_size()), context_length(), seed_,
                  "batched_speculative_decoder::submit");
  }

  /// Admits the pending requests, then runs one draft/verify/commit round for every active
  /// sequence (see the class comment). Returns how many requests finished in this step.
  std::size_t step() {
    auto& active = this->active_;
    this->admit([&](seq_state& s) {
      s.draft_sid = draft_.add_sequence();
      s.target_sid = target_.add_sequence();
      s.result.stats.method = "batched_speculative";
      s.drafter.reset();
      s.target_fed = 0;
      reset_policy(s.rollback);
    });
    const std::size_t vocab = static_cast<std::size_t>(target_.vocab_size());
    const std::size_t ctx = context_length();
    this->begin_step();

    // ---- plan each sequence's block ----
    stepping_.clear();
    for (auto& sp : active) {
      seq_state& s = *sp;
      if (s.stopped()) continue;
      if (s.seq.size() >= ctx) {
        s.stop(stop_reason::context);
        continue;
      }
      s.drafter.begin_step(s.seq.size(), s.remaining(), ctx, exact, options_.max_draft_per_step);
      stepping_.push_back(&s);
    }

    // ---- 1. draft, one batched forward per draft position ----
    bool first = true;
    while (true) {
      blocks_.clear();
      drafting_.clear();
      for (seq_state* sp : stepping_) {
        seq_state& s = *sp;
        if (!s.drafter.drafting()) continue;
        blocks_.push_back({s.draft_sid, first ? s.drafter.pending(s.seq) : s.drafter.last_drafted()});
        drafting_.push_back(&s);
      }
      if (blocks_.empty()) break;
      double seconds = 0.0;
      batch_logits out;
      {
        scoped_timer t(seconds);
        out = draft_.forward_batch(blocks_);
      }
      for (std::size_t i = 0; i < drafting_.size(); ++i) {
        seq_state& s = *drafting_[i];
        const logits_block dl = out.block(i);
        detail::check_logits_shape(dl, blocks_[i].tokens.size(), vocab,
                                   "batched_speculative_decoder: the draft's forward_batch, for a block,");
        if (first) s.drafter.fed_pending();
        s.drafter.record_forward(seconds);
        s.drafter.on_row(dl.row(dl.rows - 1), vocab, params_, s.rng, s.req.options.stop_at_eos, s.result.stats);
      }
      first = false;
    }
    for (seq_state* sp : stepping_) {
      seq_state& s = *sp;
      s.drafter.record_drafting(s.result.stats);
      // ---- lossy shortcut: emit unverified drafts ----
      if (s.drafter.ends_unverified(exact)) {
        bool go = true;
        for (const token_id t : s.drafter.block().tokens)
          if (go) go = s.emit(t);
        if (go) s.stop(stop_reason::max_tokens);  // the budget is exhausted
        rewind_draft(s);
      }
    }

    // ---- 2. verify: ONE target forward for all sequences ----
    blocks_.clear();
    verifying_.clear();
    for (seq_state* sp : stepping_) {
      seq_state& s = *sp;
      if (s.stopped()) continue;
      const draft_block d = s.drafter.block();
      s.block.assign(s.seq.begin() + static_cast<std::ptrdiff_t>(s.target_fed), s.seq.end());
      s.block.insert(s.block.end(), d.tokens.begin(), d.tokens.end());
      blocks_.push_back({s.target_sid, s.block});
      verifying_.push_back(&s);
    }
    if (!blocks_.empty()) {
      double seconds = 0.0;
      batch_logits out;
      {
        scoped_timer t(seconds);
        out = target_.forward_batch(blocks_);
      }
      for (std::size_t i = 0; i < verifying_.size(); ++i) {
        seq_state& s = *verifying_[i];
        const logits_block tl = out.block(i);
        generation_stats& st = s.result.stats;
        s.target_fed += s.block.size();
        ++st.target_calls;
        st.target_seconds += seconds;
        detail::check_logits_shape(tl, s.block.size(), vocab,
                                   "batched_speculative_decoder: the target's forward_batch, for a block,");
        // ---- 3. commit ----
        const draft_block d = s.drafter.block();
        const logits_block last{tl.data + (tl.rows - d.size() - 1) * tl.vocab, d.size() + 1, tl.vocab};
        const verdict v = judge(s.rollback, last, d, params_, s.rng, s.buf, "batched_speculative_decoder");
        if (!d.empty()) {
          st.record_verification(d.size(), v.accepted);
          s.drafter.finish_step(v.accepted, seconds, tl.rows);
        }
        bool go = true;
        for (const token_id t : d.tokens.first(v.accepted))
          if (go) go = s.emit(t);
        if (go) s.emit(v.next);
        const std::size_t keep = s.seq.size() - 1;
        if (s.target_fed > keep) {
          target_.truncate(s.target_sid, keep);
          s.target_fed = keep;
        }
        rewind_draft(s);
      }
    }
    return this->retire([&](seq_state& s) { leave(s); });
  }

  /// Steps until nothing is pending or active; returns the results (and any not yet taken).
  std::vector<batch_result> run() {
    while (!this->idle()) step();
    return this->take_results();
  }

  /// Takes request `id` out of the queue or the batch now and returns its partial result.
  batch_result preempt(request_id id) {
    return this->take_out(id, [&](seq_state& s) { leave(s); }, "batched_speculative_decoder::preempt");
  }

 private:
  void rewind_draft(seq_state& s) {
    const std::size_t keep = s.seq.size() - 1;
    if (s.drafter.rewind(keep)) draft_.truncate(s.draft_sid, keep);
  }
  void leave(seq_state& s) {
    draft_.remove_sequence(s.draft_sid);
    target_.remove_sequence(s.target_sid);
  }

  DraftBM& draft_;
  TargetBM& target_;
  Fallback fallback_;
  Rollback rollback_;
  sampling_params params_;
  std::uint64_t seed_;
  batched_speculative_options options_;
  std::vector<sequence_block> blocks_;
  std::vector<seq_state*> stepping_, drafting_, verifying_;
};

template <class DraftBM, class TargetBM, class Fallback, class Rollback>
batched_speculative_decoder(DraftBM&, TargetBM&, Fallback, Rollback, sampling_params = {}, std::uint64_t = 0,
                            batched_speculative_options = {})
    -> batched_speculative_decoder<DraftBM, TargetBM, Fallback, Rollback>;

}  // namespace specdec
