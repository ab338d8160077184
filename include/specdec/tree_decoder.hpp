#pragma once
/// \file tree_decoder.hpp
/// `tree_decoder`: speculative decoding with token trees. Each step a sizing policy
/// (tree_policy.hpp) plans the tree's shape, a `tree_drafter` (tree_drafter.hpp) drafts
/// it, a `tree_verifier` (tree_verifier.hpp) verifies it in ONE target `forward_tree` and
/// keeps the accepted path in the target's cache, the drafter keeps it in its own, and
/// the accepted tokens plus the next token are committed through the one committer of
/// generation.hpp (EOS, stop sequences, budget, callback).
///
/// ```cpp
/// specdec::cpu::transformer little("models/kjv-little.bin"), big("models/kjv-big.bin");
/// specdec::model_tree_drafter drafter(little);
/// specdec::tree_decoder dec(drafter, big, specdec::fixed_tree{.nodes = 12, .depth = 6, .branching = 3});
/// auto r = dec.generate(prompt, {.max_new_tokens = 64});
/// std::cout << r.stats.mean_accepted_per_target_call() << " tokens per target call\n";
/// ```
///
/// Semantics are `speculative_decoder`'s (decoder.hpp): `generate` resets the caches and
/// reseeds; S never exceeds the context (the smaller of target and drafter), and a tree
/// never asks for more cache positions than the context has left; greedy output equals
/// the target's own greedy output token for token, sampled output has exactly the
/// target's law (the sibling rule's invariant); with `sync_caches` each model ends
/// holding S minus its last token. Statistics: `target_calls` counts verifications (one
/// forward each), `draft_calls` the draft forwards; `record_verification(height, a)`
/// counts, per step with a non-empty tree, the tree's height as the positions proposed
/// and the accepted path's length as those accepted (so `position_acceptance_rate(d)` is
/// the rate at which depth d was reached among steps whose tree had that depth). A policy
/// with `observe_cost` (`cost_observing_policy`) is told each step's cost in the calling
/// thread's CPU time (wall time where that clock cannot be read): a shared machine that
/// takes the core away mid-forward makes no size of forward look dear; `draft_seconds`
/// is planning and drafting, `target_seconds` verifying, `other_seconds` committing. A
/// `context_sizing_policy` over a `context_drafter` plans each step by the drafter's
/// `context(S)`.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "specdec/decoder.hpp"
#include "specdec/error.hpp"
#include "specdec/generation.hpp"
#include "specdec/model.hpp"
#include "specdec/sampling.hpp"
#include "specdec/telemetry.hpp"
#include "specdec/token.hpp"
#include "specdec/tree.hpp"
#include "specdec/tree_drafter.hpp"
#include "specdec/tree_policy.hpp"
#include "specdec/tree_verifier.hpp"

namespace specdec {

/// Tree speculative decoding over a tree drafter and a `tree_model` target (see the file
/// comment). Holds references to the drafter and the target (they must outlive it).
/// Throws `vocabulary_mismatch` when drafter and target disagree on the vocabulary,
/// `invalid_argument` for bad sampling params or policy knobs (`validate()` is called
/// when the policy has one).
template <tree_drafter Drafter, tree_model Target, tree_sizing_policy Policy = fixed_tree,
          sibling_rule Rule = recursive_rejection_sampling>
class tree_decoder : public detail::seeded_sampling {
 public:
  static constexpr bool exact = static_cast<bool>(Rule::exact);

  tree_decoder(Drafter& drafter, Target& target, Policy policy = {}, sampling_params params = {},
               std::uint64_t seed = 0, Rule rule = {})
      : seeded_sampling(params, seed), drafter_(drafter), verifier_(target, std::move(rule)), policy_(std::move(policy)) {
    check_same_vocabulary(drafter_, verifier_);
    validate_policy(policy_);
  }

  [[nodiscard]] Drafter& drafter() noexcept { return drafter_; }
  [[nodiscard]] tree_verifier<Target, Rule>& verifier() noexcept { return verifier_; }
  [[nodiscard]] Policy& policy() noexcept { return policy_; }
  [[nodiscard]] const Policy& policy() const noexcept { return policy_; }
  /// The most tokens S may hold: the target's context, and the drafter's if smaller.
  [[nodiscard]] std::size_t context_length() const {
    const std::size_t t = verifier_.context_length();
    if constexpr (requires { drafter_.context_length(); })
      return std::min<std::size_t>(static_cast<std::size_t>(drafter_.context_length()), t);
    else return t;
  }

  template <class OnToken = no_callback>
  generation_result generate(std::span<const token_id> prompt, const generation_options& opts = {},
                             OnToken&& on_token = {}) {
    const auto t_start = detail::decoder_clock::now();
    const std::size_t vocab = verifier_.vocab_size();
    const std::size_t ctx = context_length();
    detail::validate_request(prompt, opts, vocab, ctx, "tree_decoder::generate");
    drafter_.reset();
    verifier_.reset();
    restart_rng();
    if constexpr (resettable<Policy>) policy_.reset();

    generation_result result;
    result.stats.method = "tree";
    result.stats.prompt_tokens = prompt.size();
    seq_.assign(prompt.begin(), prompt.end());
    detail::committer<std::remove_reference_t<OnToken>> out(seq_, result, opts, on_token);
    generation_stats& st = result.stats;
    if (opts.max_new_tokens == 0) out.stop(stop_reason::max_tokens);

    while (out.room_left(ctx)) {
      const auto t_step = detail::decoder_clock::now();
      [[maybe_unused]] double cpu[3] = {};  // thread CPU seconds at the step's start, after drafting, after verifying
      if constexpr (cost_observing_policy<Policy>) cpu[0] = thread_cpu_seconds();
      // ---- 1. plan and draft -> tree_draft ----
      const tree_plan plan = [&] {
        if constexpr (context_drafter<Drafter> && context_sizing_policy<Policy>)
          return policy_.plan(static_cast<std::size_t>(drafter_.context(seq_)));
        else return policy_.plan();
      }();
      const tree_request req = request(plan, out.remaining(), ctx, opts.stop_at_eos);
      const tree_draft& d = drafter_.draft(seq_, req, params_, rng_);
      st.draft_calls += d.forwards;
      st.draft_seconds += d.seconds;
      if (d.size() > req.max_nodes || d.tree.height() > req.max_depth)
        throw error("tree_decoder: the drafter returned a tree of " + std::to_string(d.size()) + " nodes and height " +
                    std::to_string(d.tree.height()) + "; expected at most " + std::to_string(req.max_nodes) +
                    " nodes and height " + std::to_string(req.max_depth));

      // ---- 2. verify -> tree_verdict ----
      if constexpr (cost_observing_policy<Policy>) cpu[1] = thread_cpu_seconds();
      const tree_verdict v = verifier_.verify(seq_, d, params_, rng_);
      if constexpr (cost_observing_policy<Policy>) cpu[2] = thread_cpu_seconds();
      drafter_.accept(v.path);
      ++st.target_calls;
      st.target_seconds += v.target_seconds;
      if (!d.empty()) {
        st.record_verification(d.tree.height(), v.path.size());
        policy_.observe(d.tree, v.path);
      }

      // ---- 3. commit ----
      bool going = true;
      for (std::size_t n : v.path)
        if (!(going = out.emit(d.tree.token(n)))) break;
      if (going) out.emit(v.next);
      if (st.awaiting_first_step()) st.record_step_end(detail::decoder_seconds_since(t_start));
      if constexpr (cost_observing_policy<Policy>) {
        tree_step_cost c{.nodes = d.size(),
                         .target_rows = v.target_rows,
                         .draft_forwards = d.forwards,
                         .draft_context_rows = d.context_rows};
        if (const double end = thread_cpu_seconds(); cpu[0] > 0.0) {
          c.draft_seconds = cpu[1] - cpu[0];
          c.target_seconds = cpu[2] - cpu[1];
          c.other_seconds = end - cpu[2];
        } else {
          const double step = detail::decoder_seconds_since(t_step);
          c.draft_seconds = d.seconds;
          c.target_seconds = v.target_seconds;
          c.other_seconds = std::max(0.0, step - d.seconds - v.target_seconds);
        }
        // The first forward's share of the drafting time, as the drafter's own wall-time
        // split gives it (the CPU clock times the whole phase, not each forward).
        if (d.seconds > 0.0) c.first_draft_seconds = c.draft_seconds * std::min(1.0, d.first_seconds / d.seconds);
        policy_.observe_cost(c);
      }
    }
    st.total_seconds = detail::decoder_seconds_since(t_start);
    st.policy_seconds = std::max(0.0, st.total_seconds - st.draft_seconds - st.target_seconds);
    if (opts.sync_caches) {
      drafter_.sync(seq_);
      verifier_.sync(seq_);
    }
    return result;
  }

 private:
  /// The plan, cut to the step's limits: an exact step emits the path plus one token, so
  /// the path is at most `remaining - 1` long and at most `ctx - |S| - 1`; every node
  /// takes a cache position, so at most `ctx - |S|` nodes.
  [[nodiscard]] tree_request request(const tree_plan& p, std::size_t remaining, std::size_t ctx,
                                     bool stop_at_eos) const {
    tree_request r{p.nodes, p.depth, p.branching, stop_at_eos};
    const std::size_t room = ctx - seq_.size();
    r.max_depth = std::min({r.max_depth, remaining - 1, room - 1});
    r.max_nodes = std::min(r.max_nodes, room);
    if (r.max_depth == 0) r.max_nodes = 0;
    return r;
  }

  Drafter& drafter_;
  tree_verifier<Target, Rule> verifier_;
  Policy policy_;
  std::vector<token_id> seq_;
};

template <class Drafter, class Target>
tree_decoder(Drafter&, Target&) -> tree_decoder<Drafter, Target>;
template <class Drafter, class Target, class Policy>
tree_decoder(Drafter&, Target&, Policy, sampling_params = {}, std::uint64_t = 0) -> tree_decoder<Drafter, Target, Policy>;
template <class Drafter, class Target, class Policy, class Rule>
tree_decoder(Drafter&, Target&, Policy, sampling_params, std::uint64_t, Rule)
    -> tree_decoder<Drafter, Target, Policy, Rule>;

}  // namespace specdec
