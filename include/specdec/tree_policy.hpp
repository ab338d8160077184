#pragma once
/// \file tree_policy.hpp
/// Tree sizing policies: how many nodes, how deep and how bushy the next step's token tree
/// should be (`tree_plan`). `fixed_tree` always asks for the same shape;
/// `hardware_aware_tree` (Sequoia's hardware-aware tree, Chen et al. 2024, arXiv
/// 2402.12374, in spirit) takes the host's verify-cost curve t(n)/t(1) and a draft
/// forward's cost, learns the acceptance of each child rank at each depth online, and
/// picks the shape that maximises expected tokens per unit of time: a chain when a chain
/// wins, no draft at all when even that loses.
///
/// ```cpp
/// specdec::hardware_aware_tree policy = specdec::measure_tree_policy(target, draft);
/// specdec::tree_plan p = policy.plan();   // {nodes, depth, branching}
/// ```
#include <algorithm>
#include <cmath>
#include <concepts>
#include <limits>
#include <cstddef>
#include <utility>
#include <span>
#include <string>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/tree.hpp"
#include "specdec/validation.hpp"

namespace specdec {

/// The shape asked of the next draft: at most `nodes` nodes, paths of at most `depth`
/// tokens, at most `branching` children per node. `nodes == 0`: no drafting (the target
/// writes one token); `branching == 1`: a chain.
///
/// ```cpp
/// specdec::tree_plan chain{.nodes = 4, .depth = 4, .branching = 1};
/// ```
struct tree_plan {
  std::size_t nodes = 0;
  std::size_t depth = 0;
  std::size_t branching = 1;
};

/// `p.plan()` gives the next step's `tree_plan`; `p.observe(tree, path)` is told, after
/// each verification of a non-empty tree, the tree and the accepted path (node indices,
/// root first).
///
/// ```cpp
/// static_assert(specdec::tree_sizing_policy<specdec::fixed_tree>);
/// ```
template <class P>
concept tree_sizing_policy = requires(P& p, const token_tree& t, std::span<const std::size_t> path) {
  { p.plan() } -> std::same_as<tree_plan>;
  p.observe(t, path);
};

/// A sizing policy that also plans by the drafter's context: `p.plan(c)` for a drafter
/// whose `context(S)` is c (`context_drafter`, e.g. a text index's match length);
/// `tree_decoder` calls it instead of `plan()` when both sides have it.
///
/// ```cpp
/// static_assert(specdec::context_sizing_policy<specdec::hardware_aware_tree>);
/// ```
template <class P>
concept context_sizing_policy = tree_sizing_policy<P> && requires(P& p, std::size_t c) {
  { p.plan(c) } -> std::same_as<tree_plan>;
};

/// The same shape every step.
///
/// ```cpp
/// specdec::fixed_tree policy{.nodes = 12, .depth = 5, .branching = 3};
/// policy.validate();
/// ```
struct fixed_tree {
  std::size_t nodes = 8;      ///< node budget; 0 = never draft
  std::size_t depth = 4;      ///< in [1, nodes] when nodes > 0
  std::size_t branching = 2;  ///< >= 1

  void validate() const {
    if (nodes == 0) return;
    if (depth == 0 || depth > nodes)
      detail::fail_knob("fixed_tree.depth", std::to_string(depth), "in [1, nodes = " + std::to_string(nodes) + "]");
    if (branching == 0) detail::fail_knob("fixed_tree.branching", "0", ">= 1 (1 = a chain)");
  }
  [[nodiscard]] tree_plan plan() const noexcept { return {nodes, depth, branching}; }
  void observe(const token_tree&, std::span<const std::size_t>) noexcept {}
  void reset() noexcept {}
};

/// What one tree step cost, as the decoder timed it (`tree_decoder` reports it to a policy
/// with `observe_cost`, in the calling thread's CPU time: see tree_decoder.hpp).
///
/// ```cpp
/// specdec::tree_step_cost c{.nodes = 6, .target_rows = 7, .draft_forwards = 3,
///                           .target_seconds = 9e-4, .draft_seconds = 2e-4, .other_seconds = 3e-5};
/// ```
struct tree_step_cost {
  std::size_t nodes = 0;           ///< nodes of the verified tree (0: no draft)
  /// Rows of the target's forward: nodes + 1 on a plain step, more when it also took
  /// uncached context (the prompt, on a generation's first step).
  std::size_t target_rows = 0;
  std::size_t draft_forwards = 0;  ///< the step's draft forwards
  /// Committed tokens the first draft forward took before the tree
  /// (`tree_draft::context_rows`; 0: not reported).
  std::size_t draft_context_rows = 0;
  double target_seconds = 0.0;     ///< the target's forward
  double draft_seconds = 0.0;      ///< the draft forwards
  double other_seconds = 0.0;      ///< the rest: planning, drafting's and verifying's own work, committing
  /// Of `draft_seconds`, the step's first draft forward (0: not reported; the policy then
  /// prices every draft forward alike).
  double first_draft_seconds = 0.0;
};

/// A sizing policy that also learns from each step's timing: `p.observe_cost(c)` after
/// every step (`tree_decoder` calls it when the policy has it).
///
/// ```cpp
/// static_assert(specdec::cost_observing_policy<specdec::hardware_aware_tree>);
/// ```
template <class P>
concept cost_observing_policy = tree_sizing_policy<P> && requires(P& p, const tree_step_cost& c) { p.observe_cost(c); };

/// Sizes trees to the host (Sequoia's hardware-aware tree, in spirit), choosing each
/// step's shape among all trees, chains and no draft by expected tokens per unit of time.
///
/// Acceptance: a child of rank r (its index among its siblings, the drafter's r-th
/// choice) at depth d is accepted, given that its parent was, with probability a(d, r),
/// a decayed Beta-style mean over the verdicts (`observe`) whose prior is `prior_table`'s
/// entry, else the estimate one level up, else `prior * 0.5^r` at depth 0.
///
/// Shape: for each branching b and depth cap D the tree is grown as the drafter grows it:
/// best-first by the product of a along a node's path, a node's children in rank order;
/// with `level_drafter` (a draft model: `model_tree_drafter`, `combined_tree_drafter`) in
/// rounds of w = ceil(N / D) nodes, a round's nodes taking children only after the draft
/// forward that follows it, so N nodes cost F(N) draft forwards (the first one included);
/// without (`text_index_drafter`) freely best-first, with no draft forward.
///
/// Time, in units of one target token t(1): verify_cost[N] (N nodes plus the committed
/// token) + c_1 + c_d (F(N) - 1) (none when F(N) = 0) + c_o (N + 1), with c_1 the step's
/// first draft forward, c_d each later one and c_o the per-row overhead of the step
/// (planning, drafting's and verifying's own work). The first forward is priced apart
/// because it reads the draft's weights back after the target's forward streamed its own
/// through the caches, and so costs more than a later one where the caches hold neither
/// model whole; one mean cost learnt from short chains would price every longer chain's
/// extra forwards as dear as a first. A step emits A(N) + 1 tokens, A(N) the tree's
/// expected accepted nodes. The plan maximises (A + 1) / time over N = 0..max_nodes (0:
/// no draft), b = 1..max_branching (1: a chain) and D = 1..max_depth; ties go to no draft,
/// then to fewer branches, shallower, fewer nodes.
///
/// Online: `observe` updates a(d, r); `observe_cost` (with `learn_costs` and a measured
/// `target_token_seconds`) re-estimates t(1), c_1, c_d and c_o from the step timings of
/// plain steps (c_1 and c_d only from steps whose first draft forward took at most
/// `max_draft_context_rows` committed tokens; c_1 from `first_draft_seconds`, c_d from
/// the rest of the drafting time; both from the mean forward when a step does not report
/// its first), each step's sample capped at twice the
/// running estimate (a descheduled forward is no cost of the model; c_o at a quarter
/// token per row), the measured values weighing
/// as one step (or one draft forward) that never decays. Observations forget with
/// `decay` per step, so a choice that stopped being observed (no draft: no verdicts, no
/// draft timings) drifts back to the priors and is tried again; after `probe_every`
/// no-draft plans in a row one step drafts anyway, to measure again.
///
/// The curve's shape is learnt too (`learn_curve`): a start-up measurement on a loaded
/// host can make one size look dear and the next one cheap. For each forward size n
/// (rows) the policy keeps r(n) (`verify_ratio`): the decayed mean of the observed
/// x = t_step / t(1), each capped at twice r(n), blended with `verify_cost[n - 1]` as
/// `curve_weight` observations. t(1) is the running one-token time (`token_seconds`,
/// learnt through the start-up curve), so a host that became slower or faster as a
/// whole moves t(1), not the shape; a size forgets only when it is observed again. The
/// search reads r, except that a size observed fewer than `trust_after` times (decayed)
/// costs it no more than its start-up ratio: a size the plan does not use is sampled
/// only by explorations and plan changes, few and often dearer than the same size in a
/// run of steps (docs/performance.md), and a size once sampled dear would otherwise never
/// be planned, and so never measured, again. Every
/// `explore_every`-th drafting plan is instead the best tree of a neighbouring node
/// count (+1, -1, +2, -2, in turn) so that the sizes next to the plan are measured too,
/// as long as such a size is both unmeasured (fewer than `explore_until` forwards of it
/// observed) and could win (were its forward as cheap as the plan's, within 5 % of the
/// plan's rate); a measured size is weighed by the search as it is, at no exploration
/// cost.
///
/// Context (`context_bounds`): with `plan(c)`, each class of contexts has its own
/// acceptance estimates and plan; `observe` updates the class of the last plan. Costs and
/// the curve are shared.
///
/// Trees against chains (`tree_margin`): a plan with branches is chosen only if its rate
/// beats the best chain's (or no draft's) by `tree_margin` of it. The model counts a
/// tree's rows and draft forwards but not all of its own work (a sibling's draft row, its
/// sampled draw, the sibling rule), and a chain's acceptance per depth is learnt from far
/// more verdicts than a sibling's: where the tree's edge is within that error, the chain
/// is the safer plan.
///
/// Trees against chains, measured (`realised_steps`): the model can be wrong in ways it
/// cannot see, so where it plans a tree, the realised rate decides. Each context class
/// keeps, from `observe_cost`, the committed tokens per step time (target, draft and the
/// step's own work, over the running t(1) then, so that a host slower for a while as a
/// whole charges no arm; each step capped at twice its arm's mean) of the steps
/// it planned as chains (no draft included) and of those it planned as trees, decayed by
/// `decay` per step of that arm. With timings (`target_token_seconds > 0`) a tree the
/// model prefers is planned only after `realised_steps` (decayed) chain steps and then as
/// many tree steps were measured (the chain first: a cold start costs no tree), and from
/// then on only while the trees' realised rate beats the chains' by `realised_margin`;
/// else the model's best chain is planned. Every `recheck_every`-th such decision plays
/// the other arm once, so that the loser's rate stays measured and the policy changes its
/// mind when the text does.
///
/// Chain lengths the model rates alike, measured (`rival_band`): with realised rates on,
/// the chains one node shorter and longer than the model's best chain whose modelled
/// rates are within `rival_band` of it are its rivals. Each is planned for
/// `realised_steps` steps, then the chain with the most expected tokens per measured
/// step time (decayed mean over the steps planned at that length; the tokens are
/// the model's for a draft model, which drafts what was planned, and the realised ones
/// for an id-only drafter, which may draft less), every `recheck_every`-th decision
/// another one in turn. The step's own costs that the model splits into forwards and
/// rows are measured whole here.
///
/// Hysteresis (`switch_margin`): once both forward sizes are measured (`explore_until`
/// forwards of each observed), a new search replaces the plan of its class by one of the
/// same branching only if the new one's rate beats the old one's (as modelled now) by
/// `switch_margin` of it: chain lengths whose rates differ by less than the step-time
/// noise they are learnt from do not take turns.
///
/// Example: with verify_cost = {1, 1.02, 1.05, 1.1, 1.8}, no draft cost, a(d, 0) = 0.6
/// and a(d, 1) = 0.3, a chain of 3 emits 1 + 0.6 + 0.36 + 0.216 = 2.18 tokens for 1.1
/// (1.98 per token-time), a tree of both children of the root and one grandchild
/// 1 + 0.6 + 0.3 + 0.36 = 2.26 for the same 1.1 (2.05, 3.9 % more): without a margin the
/// plan is that tree (3 nodes, depth 2, branching 2), with the default 10 % the chain; a
/// fourth node would cost 1.8.
///
/// ```cpp
/// specdec::hardware_aware_tree p{.verify_cost = {1.0, 1.02, 1.05, 1.1, 1.8}, .max_nodes = 4,
///                                .max_depth = 4, .max_branching = 2,
///                                .prior_table = {{0.6, 0.3}, {0.6, 0.3}, {0.6, 0.3}, {0.6, 0.3}},
///                                .level_drafter = false, .tree_margin = 0.0};
/// specdec::tree_plan plan = p.plan();   // {3, 2, 2}; {3, 3, 1} with tree_margin = 0.1
/// ```
///
/// Across generations (`carry_over`, off by default) the decoder's `reset()` keeps the
/// learnt state. Sampled output depends on the plans, so with learnt costs (or carried
/// state) repeating a seed need not repeat the output; its law is the target's whatever
/// the plan, and greedy output is the target's own.
struct hardware_aware_tree {
  /// The most committed tokens a step's first draft forward may take for the step to be
  /// a sample of the draft's cost (`observe_cost`): the next token and an accepted leaf
  /// the draft never forwarded.
  static constexpr std::size_t max_draft_context_rows = 2;
  /// verify_cost[n - 1] = t(n) / t(1): one target forward of n tokens against one; at
  /// least max_nodes + 1 entries (measure_verify_cost's `tree_ratio`).
  std::vector<double> verify_cost{};
  double draft_cost = 0.0;        ///< one draft forward, in units of one target token; >= 0
  std::size_t max_nodes = 16;     ///< >= 1
  std::size_t max_depth = 8;      ///< >= 1
  std::size_t max_branching = 4;  ///< >= 1
  double prior = 0.6;             ///< prior acceptance of the rank-0 child at depth 0; in (0, 1)
  /// Optional prior a(d, r) per depth (rows) and rank (columns), each in (0, 1); an entry
  /// it lacks follows the rule above.
  std::vector<std::vector<double>> prior_table{};
  double prior_weight = 4.0;          ///< pseudo-observations of the prior; > 0
  double decay = 0.98;                ///< per-step forgetting of counts and costs; in (0, 1]
  bool level_drafter = true;          ///< the drafter expands level by level (see above)
  bool learn_costs = true;            ///< re-estimate t(1), c_d and c_o from `observe_cost`
  bool carry_over = false;            ///< `reset()` keeps the learnt state
  /// `plan()` searches again once this many steps were observed since its last search
  /// (or when a knob changed); in between it returns that plan. >= 1 (1: every step).
  std::size_t replan_every = 8;
  /// After this many no-draft plans in a row, one step drafts the best drafting shape, so
  /// that its costs and acceptance are measured again (no draft measures neither);
  /// 0: never.
  std::size_t probe_every = 16;
  double target_token_seconds = 0.0;  ///< t(1) of the target, seconds (measure_tree_policy); 0 = unknown
  /// Re-estimate the curve's shape from the forwards observed (`verify_ratio`); needs
  /// `target_token_seconds > 0`.
  bool learn_curve = true;
  double curve_weight = 1.0;  ///< observations the start-up ratio weighs as at each size; > 0
  /// With `learn_curve`, every this-many-th drafting plan is the best tree of a
  /// neighbouring node count instead (see the struct comment); 0: never.
  std::size_t explore_every = 8;
  /// A neighbouring size is explored only while fewer than this many forwards of its size
  /// were observed (decayed): once its cost is known, the search weighs it as it is.
  double explore_until = 4.0;
  /// Forwards of a size (decayed) the search needs before it prices the size above its
  /// start-up ratio (see the struct comment); 0: at once. >= 0.
  double trust_after = 8.0;
  /// A plan with branches must beat the best chain (or no draft) by this fraction of its
  /// rate, else the chain is planned (see the struct comment). >= 0.
  double tree_margin = 0.1;
  /// Measured chain and tree steps (decayed) each arm needs before the realised rates
  /// decide between them (see the struct comment); 0: the model alone decides.
  std::size_t realised_steps = 8;
  /// A tree is planned only while its realised rate beats the chain's by this fraction. >= 0.
  double realised_margin = 0.02;
  /// Every this-many-th decision between a tree and the chain plays the losing arm, so
  /// its rate stays measured; 0: never (the loser keeps its last rate).
  std::size_t recheck_every = 8;
  /// A new plan of the same branching replaces the old one only if its modelled rate is
  /// higher by this fraction of the old one's (see the struct comment). >= 0.
  double switch_margin = 0.02;
  /// With realised rates on (`realised_steps`), the chains one node shorter and longer
  /// than the model's best chain whose modelled rates are within this fraction of it are
  /// its rivals, and measured step times decide among them (see the struct comment); 0:
  /// none (the default: measuring each rival costs steps that a run as long as
  /// bench_tree's did not win back, e.g. 0.05). >= 0.
  double rival_band = 0.0;
  /// Context classes (`plan(context)`): class k holds the contexts c with
  /// context_bounds[k - 1] <= c < context_bounds[k] (class 0: c < context_bounds[0]), each
  /// with its own acceptance estimates and plan; strictly increasing; empty: one class.
  /// `tree_decoder` passes a drafter's `context(S)` (`text_index_drafter`: the length of
  /// its longest match), so continuations of long matches are sized by how often
  /// continuations of long matches were accepted, short ones by short ones.
  std::vector<std::size_t> context_bounds{};

  void validate() const {
    if (max_nodes == 0) detail::fail_knob("hardware_aware_tree.max_nodes", "0", ">= 1 (a node budget)");
    if (max_depth == 0) detail::fail_knob("hardware_aware_tree.max_depth", "0", ">= 1");
    if (max_branching == 0) detail::fail_knob("hardware_aware_tree.max_branching", "0", ">= 1");
    if (verify_cost.size() < max_nodes + 1)
      detail::fail_knob("hardware_aware_tree.verify_cost", std::to_string(verify_cost.size()) + " entries",
                        "at least max_nodes + 1 = " + std::to_string(max_nodes + 1));
    for (double c : verify_cost)
      if (!(c > 0.0) || !std::isfinite(c))
        detail::fail_knob("hardware_aware_tree.verify_cost", detail::format_value(c), "finite ratios > 0");
    detail::check_non_negative("hardware_aware_tree.draft_cost", draft_cost);
    if (!(prior > 0.0 && prior < 1.0))
      detail::fail_knob("hardware_aware_tree.prior", detail::format_value(prior), "in (0, 1)");
    for (std::size_t d = 0; d < prior_table.size(); ++d)
      for (std::size_t r = 0; r < prior_table[d].size(); ++r)
        if (!(prior_table[d][r] > 0.0 && prior_table[d][r] < 1.0))
          detail::fail_knob("hardware_aware_tree.prior_table[" + std::to_string(d) + "][" + std::to_string(r) + "]",
                            detail::format_value(prior_table[d][r]), "in (0, 1)");
    detail::check_positive("hardware_aware_tree.prior_weight", prior_weight);
    if (!(decay > 0.0 && decay <= 1.0))
      detail::fail_knob("hardware_aware_tree.decay", detail::format_value(decay), "in (0, 1]");
    detail::check_non_negative("hardware_aware_tree.target_token_seconds", target_token_seconds);
    detail::check_positive("hardware_aware_tree.curve_weight", curve_weight);
    if (replan_every == 0) detail::fail_knob("hardware_aware_tree.replan_every", "0", ">= 1 (1: every step)");
    detail::check_non_negative("hardware_aware_tree.explore_until", explore_until);
    detail::check_non_negative("hardware_aware_tree.trust_after", trust_after);
    detail::check_non_negative("hardware_aware_tree.tree_margin", tree_margin);
    detail::check_non_negative("hardware_aware_tree.realised_margin", realised_margin);
    detail::check_non_negative("hardware_aware_tree.switch_margin", switch_margin);
    detail::check_non_negative("hardware_aware_tree.rival_band", rival_band);
    for (std::size_t k = 1; k < context_bounds.size(); ++k)
      if (context_bounds[k] <= context_bounds[k - 1])
        detail::fail_knob("hardware_aware_tree.context_bounds[" + std::to_string(k) + "]",
                          std::to_string(context_bounds[k]),
                          "> context_bounds[" + std::to_string(k - 1) + "] = " + std::to_string(context_bounds[k - 1]) +
                              " (strictly increasing)");
  }

  /// Forgets what was learnt, unless `carry_over`.
  void reset() {
    if (!carry_over) learnt = {};
  }

  /// The class of a context (see `context_bounds`).
  [[nodiscard]] std::size_t context_class(std::size_t context) const noexcept {
    return static_cast<std::size_t>(std::ranges::upper_bound(context_bounds, context) - context_bounds.begin());
  }

  /// The estimated acceptance of a rank-r child at depth d (see the struct comment), in
  /// the class of the last plan's context.
  [[nodiscard]] double acceptance(std::size_t d, std::size_t r) const { return acceptance_in(learnt.context, d, r); }
  /// The same in the class of `context`.
  [[nodiscard]] double acceptance(std::size_t d, std::size_t r, std::size_t context) const {
    return acceptance_in(context_class(context), d, r);
  }

  /// One target token's seconds now: `target_token_seconds` refined by `observe_cost`.
  [[nodiscard]] double token_seconds() const noexcept {
    return (target_token_seconds + learnt.token_sum) / (1.0 + learnt.token_steps);
  }
  /// r(rows): the verify cost of a forward of `rows` rows (nodes + 1) in units of one
  /// target token, `verify_cost[rows - 1]` followed by the forwards observed at that
  /// size (see the struct comment). Throws `invalid_argument` unless 1 <= rows <=
  /// `verify_cost.size()`.
  [[nodiscard]] double verify_ratio(std::size_t rows) const {
    if (rows == 0 || rows > verify_cost.size())
      throw invalid_argument("hardware_aware_tree::verify_ratio: rows = " + std::to_string(rows) +
                             "; expected 1 <= rows <= verify_cost.size() = " + std::to_string(verify_cost.size()));
    return curve_at(rows - 1);
  }
  /// c_d: a step's draft forward after its first, in target tokens (`draft_cost`, refined
  /// by `observe_cost`).
  [[nodiscard]] double draft_forward_cost() const noexcept {
    return learnt_draft_cost(learnt.draft_sum, learnt.draft_forwards);
  }
  /// c_1: a step's first draft forward, in target tokens (`draft_cost`, refined by
  /// `observe_cost`).
  [[nodiscard]] double first_draft_cost() const noexcept {
    return learnt_draft_cost(learnt.first_sum, learnt.first_steps);
  }
  /// What F draft forwards of one step cost, in target tokens: c_1 + c_d (F - 1), 0 for none.
  [[nodiscard]] double drafting_cost(std::size_t forwards) const noexcept {
    return drafting_time(first_draft_cost(), draft_forward_cost(), forwards);
  }
  /// c_o: the step's own work per row in target tokens (0 until `observe_cost` says).
  [[nodiscard]] double row_overhead() const noexcept {
    return learnt.other_rows > 0.0 ? learnt.other_sum / (1.0 + learnt.other_rows) / token_seconds() : 0.0;
  }

  /// Expected tokens per target-token time of a step with a tree of `nodes` nodes and at
  /// most `branching` children per node, its depth cap chosen best (returned in
  /// `depth_out`); nodes = 0 is plain decoding, 0 when no such tree fits the knobs. Throws `invalid_argument` for bad knobs
  /// (`validate`), or unless `nodes <= max_nodes` and `branching >= 1`.
  [[nodiscard]] double rate(std::size_t nodes, std::size_t branching, std::size_t* depth_out = nullptr) const {
    validate();
    if (nodes > max_nodes || branching == 0)
      throw invalid_argument("hardware_aware_tree::rate: nodes = " + std::to_string(nodes) + ", branching = " +
                             std::to_string(branching) + "; expected nodes <= max_nodes = " +
                             std::to_string(max_nodes) + " and branching >= 1");
    const choice c = search(nodes, branching);
    if (depth_out) *depth_out = c.plan.depth;
    return c.rate;
  }

  /// The shape that maximises expected tokens per unit of time (see the struct comment),
  /// searched again every `replan_every` observed steps; for the class of context 0.
  [[nodiscard]] tree_plan plan() const { return plan(0); }
  /// The same for the class of `context`, whose acceptance estimates the next `observe`
  /// updates.
  [[nodiscard]] tree_plan plan(std::size_t context) const {
    learnt.context = context_class(context);
    if (learnt.cache.size() <= learnt.context) learnt.cache.resize(learnt.context + 1);
    plan_cache& c = learnt.cache[learnt.context];
    knob_key(c.scratch);
    if (!(c.valid && c.key == c.scratch && learnt.version - c.version < replan_every)) {
      validate();
      const bool same_knobs = c.valid && c.key == c.scratch;
      c.plan = settle(same_knobs, c.plan, search(any, any));
      c.chain = c.plan.branching > 1 ? settle(same_knobs, c.chain, search(any, 1)) : c.plan;
      find_rivals(c);
      c.key.swap(c.scratch);
      c.version = learnt.version;
      c.valid = true;
    }
    const auto remember = [&](const tree_plan& q) {
      learnt.tree_arm = q.nodes > 0 && q.branching > 1;
      learnt.planned = q.nodes;
      return q;
    };
    const tree_plan p = remember(measured_arm(c));
    if (p.nodes > 0) {
      if (!learn_curve || !(target_token_seconds > 0.0) || explore_every == 0 || ++c.drafting < explore_every)
        return p;
      c.drafting = 0;
      // The neighbour sizes in turn: +1, -1, +2, -2 nodes (those within [1, max_nodes]),
      // each only if it could win: were its forward to cost no more than the plan's, it
      // would be within 5 % of the plan's rate (a bigger tree usually is; a tree that is
      // worse whatever its forward costs is not worth a step). Trees only while the
      // realised rates allow them.
      const std::size_t shapes = p.branching == 1 ? 1 : any;
      const double best_rate = search(p.nodes, p.branching, false).rate;
      const double plan_cost = curve_at(p.nodes);
      for (std::size_t tries = 0; tries < 4; ++tries) {
        const std::size_t k = c.explored++ % 4;
        const std::size_t step = k / 2 + 1;
        const std::size_t n = k % 2 == 0 ? p.nodes + step : p.nodes - std::min(step, p.nodes);
        if (n >= 1 && n <= max_nodes && n != p.nodes && observed_forwards(n + 1) < explore_until) {
          const choice e = search(n, shapes, false, plan_cost);
          if (e.plan.nodes > 0 && e.rate >= 0.95 * best_rate) return remember(e.plan);
        }
      }
      return p;
    }
    if (probe_every == 0) return p;
    if (++c.idle < probe_every) return p;
    c.idle = 0;
    return remember(search(any, any, false).plan);
  }

  /// The realised rate (committed tokens per step time, in units of the running t(1) at
  /// each step, or seconds while `target_token_seconds` is 0) of the steps planned as
  /// chains (no draft included) or as trees in the class of `context` (see the struct
  /// comment); 0 until such a step was observed.
  [[nodiscard]] double realised_rate(bool trees, std::size_t context = 0) const {
    const std::size_t cls = context_class(context);
    return cls < learnt.cache.size() ? learnt.cache[cls].realised[trees ? 1 : 0].rate() : 0.0;
  }

  /// Counts, for every child of the root and of each accepted node, one trial at its
  /// (depth, rank), and one hit when it is on the accepted path (older counts decayed),
  /// in the class of the last plan's context.
  void observe(const token_tree& t, std::span<const std::size_t> path) {
    ++learnt.version;
    learnt.step_counted = true;
    learnt.step_tokens = path.size() + 1;
    const std::size_t cls = learnt.context;
    for (auto* m : {&learnt.trials, &learnt.hits}) {
      if (m->size() <= cls) m->resize(cls + 1);
      for (auto& row : (*m)[cls])
        for (double& x : row) x *= decay;
    }
    std::vector<std::size_t> rank(t.size(), 0), kids(t.size() + 1, 0);
    for (std::size_t j = 0; j < t.size(); ++j) {
      const std::int32_t p = t.parent(j);
      const std::size_t slot = p == no_parent ? 0 : static_cast<std::size_t>(p) + 1;
      rank[j] = kids[slot]++;
    }
    const auto reached = [&](std::int32_t p) {
      return p == no_parent || std::ranges::find(path, static_cast<std::size_t>(p)) != path.end();
    };
    for (std::size_t j = 0; j < t.size(); ++j) {
      if (!reached(t.parent(j))) continue;
      const std::size_t d = t.depth(j), r = rank[j];
      bump(learnt.trials[cls], d, r);
      if (std::ranges::find(path, j) != path.end()) bump(learnt.hits[cls], d, r);
    }
  }

  /// Re-estimates t(1), c_1, c_d and c_o (`learn_costs`) and r(rows) (`learn_curve`)
  /// from a plain step's timing (target_rows == nodes + 1, within the curve), and the
  /// realised rate of the last plan's arm (`realised_steps`); ignores other steps, and
  /// learns no cost unless `target_token_seconds > 0`.
  void observe_cost(const tree_step_cost& c) {
    // A step `observe` was told of is counted once (`replan_every` counts steps).
    const bool counted = std::exchange(learnt.step_counted, false);
    const std::size_t rows = c.target_rows;
    if (rows != c.nodes + 1 || rows > verify_cost.size()) return;
    if (!(c.target_seconds > 0.0) || !std::isfinite(c.target_seconds) || !(c.draft_seconds >= 0.0) ||
        !std::isfinite(c.draft_seconds) || !(c.other_seconds >= 0.0) || !std::isfinite(c.other_seconds))
      return;
    learned& l = learnt;
    if (realised_steps > 0) realise(c);  // read by the gate every call, not by the search
    if (!(learn_costs || learn_curve) || !(target_token_seconds > 0.0)) return;
    if (!counted) ++l.version;
    // A step's sample counts at most `spike` times the running estimate: a shared
    // machine that takes the core away mid-forward must not make a cost look dear for
    // the many steps the decay needs to forget it.
    constexpr double spike = 2.0;
    const double t1 = token_seconds(), per_forward = draft_forward_cost() * t1, first = first_draft_cost() * t1,
                 ratio = curve_at(rows - 1);
    if (learn_curve) {
      if (l.curve_sum.size() != verify_cost.size()) {
        l.curve_sum.assign(verify_cost.size(), 0.0);
        l.curve_steps.assign(verify_cost.size(), 0.0);
      }
      l.curve_sum[rows - 1] = decay * l.curve_sum[rows - 1] + std::min(c.target_seconds / t1, spike * ratio);
      l.curve_steps[rows - 1] = decay * l.curve_steps[rows - 1] + 1.0;
    }
    if (!learn_costs) return;
    for (double* x : {&l.token_sum, &l.token_steps, &l.draft_sum, &l.draft_forwards, &l.first_sum, &l.first_steps,
                      &l.other_sum, &l.other_rows})
      *x *= decay;
    l.token_sum += std::min(c.target_seconds / verify_cost[rows - 1], spike * t1);
    l.token_steps += 1.0;
    // A first draft forward that also caught up on committed tokens (after steps that
    // drafted nothing) is no sample of a draft forward, as a prompt step is none of a
    // verify block: after a run of no-draft plans every probe is such a step, and
    // learning from them alone would price drafting out for good.
    if (c.draft_forwards > 0 && c.draft_context_rows <= max_draft_context_rows) {
      const double n = static_cast<double>(c.draft_forwards);
      const bool split = c.first_draft_seconds > 0.0 && std::isfinite(c.first_draft_seconds) &&
                         c.first_draft_seconds <= c.draft_seconds;
      const double head = split ? c.first_draft_seconds : c.draft_seconds / n;
      l.first_sum += std::min(head, spike * first);
      l.first_steps += 1.0;
      if (!split) {
        l.draft_sum += n * std::min(head, spike * per_forward);
        l.draft_forwards += n;
      } else if (c.draft_forwards > 1) {
        l.draft_sum += (n - 1.0) * std::min((c.draft_seconds - head) / (n - 1.0), spike * per_forward);
        l.draft_forwards += n - 1.0;
      }
    }
    l.other_sum += std::min(c.other_seconds, 0.25 * t1 * static_cast<double>(rows));
    l.other_rows += static_cast<double>(rows);
  }

  /// What `observe` and `observe_cost` learnt (decayed sums): trials[k][d][r] children of
  /// rank r at depth d whose parent was reached in context class k, hits[k][d][r] of them
  /// accepted; the target's
  /// seconds per token-time and the steps they came from; the draft's seconds and
  /// forwards; the steps' other seconds and rows; the learnt curve. Public only so the
  /// struct stays an aggregate.
  /// The last searched plan, the knobs it was searched with and `learned::version` then.
  struct plan_cache {
    bool valid = false;
    std::size_t version = 0;
    std::size_t idle = 0;      ///< no-draft plans returned in a row
    std::size_t drafting = 0;  ///< drafting plans returned since the last exploration
    std::size_t explored = 0;  ///< explorations so far (which neighbour is next)
    std::size_t decided = 0;   ///< decisions between a tree and the chain by realised rate
    tree_plan plan{};
    tree_plan chain{};  ///< the best chain (or no draft) when `plan` is a tree, else `plan`
    /// Decayed committed tokens, step seconds and steps of the steps planned as chains
    /// (no draft included) and as trees.
    struct arm {
      double tokens = 0.0, seconds = 0.0, steps = 0.0;
      [[nodiscard]] double rate() const noexcept { return seconds > 0.0 ? tokens / seconds : 0.0; }
      /// One step, the older ones decayed; as for the costs, a step the machine stalled
      /// counts at most twice the mean.
      void add(double step_tokens, double step_seconds, double decay) noexcept {
        if (steps > 0.0) step_seconds = std::min(step_seconds, 2.0 * seconds / steps);
        tokens = decay * tokens + step_tokens;
        seconds = decay * seconds + step_seconds;
        steps = decay * steps + 1.0;
      }
    } realised[2]{};
    std::vector<arm> lengths{};  ///< the same per planned chain length (nodes; 0: no draft)
    /// The model's best chain and its rivals (`rival_band`), with their expected tokens per
    /// step; empty: no rivals.
    struct candidate {
      tree_plan plan;
      double tokens = 0.0;
    };
    std::vector<candidate> candidates{};
    std::size_t measured = 0;  ///< decisions among the candidates
    std::vector<double> key{}, scratch{};
  };
  struct learned {
    std::vector<std::vector<std::vector<double>>> trials, hits;
    double token_sum = 0.0, token_steps = 0.0;
    double draft_sum = 0.0, draft_forwards = 0.0;  ///< later draft forwards (c_d)
    double first_sum = 0.0, first_steps = 0.0;     ///< the steps' first draft forwards (c_1)
    double other_sum = 0.0, other_rows = 0.0;
    std::vector<double> curve_sum, curve_steps;  ///< per size (rows - 1): decayed observed ratios, their count
    std::size_t version = 0;  ///< observed steps
    bool step_counted = false;  ///< `observe` counted the step whose `observe_cost` comes next
    mutable std::size_t context = 0;  ///< the class of the last plan's context
    mutable bool tree_arm = false;    ///< the last plan has branches
    mutable std::size_t planned = 0;  ///< the last plan's nodes
    std::size_t step_tokens = 1;      ///< the last verified path's length + 1
    mutable std::vector<plan_cache> cache{};  ///< per context class
  } learnt{};

 private:
  static constexpr std::size_t any = static_cast<std::size_t>(-1);
  /// A draft forward's cost in target tokens from `count` decayed observations summing to
  /// `sum` seconds, `draft_cost` weighing as one more (`draft_cost` alone before any).
  [[nodiscard]] double learnt_draft_cost(double sum, double count) const noexcept {
    if (!(count > 0.0)) return draft_cost;
    const double t1 = token_seconds();
    return (draft_cost * t1 + sum) / (1.0 + count) / t1;
  }
  /// F draft forwards of one step at c_1 for the first and c_d for each later one.
  static constexpr double drafting_time(double c_1, double c_d, std::size_t forwards) noexcept {
    return forwards == 0 ? 0.0 : c_1 + c_d * static_cast<double>(forwards - 1);
  }
  struct choice {
    tree_plan plan;
    double rate = 0.0;
    double tokens = 0.0;  ///< expected tokens per step (accepted + 1)
  };

  /// Every knob the search reads, flattened (a changed knob means a new search).
  void knob_key(std::vector<double>& k) const {
    k.assign(verify_cost.begin(), verify_cost.end());
    for (double x : {draft_cost, static_cast<double>(max_nodes), static_cast<double>(max_depth),
                     static_cast<double>(max_branching), prior, prior_weight, level_drafter ? 1.0 : 0.0,
                     learn_costs ? 1.0 : 0.0, target_token_seconds, static_cast<double>(prior_table.size()),
                     learn_curve ? 1.0 : 0.0, curve_weight, static_cast<double>(explore_every), explore_until,
                     trust_after, tree_margin, switch_margin, rival_band})
      k.push_back(x);
    for (std::size_t b : context_bounds) k.push_back(static_cast<double>(b));
    for (const auto& row : prior_table) {
      k.push_back(static_cast<double>(row.size()));
      k.insert(k.end(), row.begin(), row.end());
    }
  }

  static bool same(const tree_plan& a, const tree_plan& b) noexcept {
    return a.nodes == b.nodes && a.depth == b.depth && a.branching == b.branching;
  }

  /// Hysteresis (`switch_margin`): `found` replaces `old`, a plan of the same branching
  /// searched with the same knobs, only if its rate beats old's by the margin, or if the
  /// forward size of either is not yet measured (`explore_until` forwards of it observed;
  /// the plan must be free to move while the curve is being learnt).
  [[nodiscard]] tree_plan settle(bool same_knobs, const tree_plan& old, const choice& found) const {
    if (!same_knobs || !(switch_margin > 0.0) || same(old, found.plan) || old.branching != found.plan.branching ||
        old.nodes > max_nodes || observed_forwards(old.nodes + 1) < std::max(explore_until, 1.0) ||
        observed_forwards(found.plan.nodes + 1) < std::max(explore_until, 1.0))
      return found.plan;
    const choice kept = search(old.nodes, old.branching, old.nodes == 0);
    return kept.rate > 0.0 && found.rate <= kept.rate * (1.0 + switch_margin) ? kept.plan : found.plan;
  }

  /// The plan of class c as the realised rates allow it (see the struct comment): the
  /// model's tree, or its best chain.
  [[nodiscard]] tree_plan measured_arm(plan_cache& c) const {
    if (realised_steps == 0 || !(target_token_seconds > 0.0)) return c.plan;
    if (c.plan.branching == 1 || c.plan.nodes == 0) return measured_chain(c);
    const double need = static_cast<double>(realised_steps);
    if (c.realised[0].steps < need) return measured_chain(c);  // the chain first: a cold start costs no tree
    if (c.realised[1].steps < need) return c.plan;
    const bool tree_wins = c.realised[1].rate() > c.realised[0].rate() * (1.0 + realised_margin);
    const bool recheck = recheck_every > 0 && ++c.decided % recheck_every == 0;
    return tree_wins != recheck ? c.plan : measured_chain(c);
  }

  /// The chain of class c among the model's best and its rivals: each measured for
  /// `realised_steps` steps first, then the one whose expected tokens per measured second
  /// of step is highest, every `recheck_every`-th decision another one in turn.
  [[nodiscard]] tree_plan measured_chain(plan_cache& c) const {
    const std::size_t k = c.candidates.size();
    if (k < 2) return c.chain;
    const auto arm_of = [&](std::size_t nodes) -> const plan_cache::arm& {
      static const plan_cache::arm none{};
      return nodes < c.lengths.size() ? c.lengths[nodes] : none;
    };
    for (const auto& x : c.candidates)
      if (arm_of(x.plan.nodes).steps < static_cast<double>(realised_steps)) return x.plan;
    std::size_t best = 0;
    double best_rate = 0.0;
    for (std::size_t i = 0; i < k; ++i) {
      const plan_cache::arm& a = arm_of(c.candidates[i].plan.nodes);
      // A draft model drafts the planned chain, so its tokens per step are the model's (far
      // less noisy than the realised ones); an id-only drafter may draft less than planned.
      const double tokens = level_drafter ? c.candidates[i].tokens : a.tokens / a.steps;
      const double r = a.seconds > 0.0 ? tokens * a.steps / a.seconds : 0.0;
      if (r > best_rate) {
        best = i;
        best_rate = r;
      }
    }
    if (recheck_every > 0 && ++c.measured % recheck_every == 0)
      best = (best + 1 + (c.measured / recheck_every) % (k - 1)) % k;
    return c.candidates[best].plan;
  }

  /// The rivals of class c's best chain (`rival_band`): the chains one node shorter and
  /// longer whose modelled rates are within the band of it.
  void find_rivals(plan_cache& c) const {
    c.candidates.clear();
    if (realised_steps == 0 || !(target_token_seconds > 0.0) || !(rival_band > 0.0)) return;
    const std::size_t n = c.chain.nodes, longest = std::min(max_nodes, max_depth);
    const choice mine = search(n, 1, n == 0);
    if (!(mine.rate > 0.0)) return;
    c.candidates.push_back({c.chain, mine.tokens});
    for (std::size_t m : {n - 1, n + 1}) {
      if (n == 0 && m != 1) continue;  // n - 1 wrapped
      if (m > longest) continue;
      const choice r = search(m, 1, m == 0);
      if (r.plan.nodes == m && r.rate > 0.0 && r.rate * (1.0 + rival_band) >= mine.rate)
        c.candidates.push_back({r.plan, r.tokens});
    }
    if (c.candidates.size() < 2) c.candidates.clear();
  }

  /// Adds a plain step to its arm's realised rate in the class of the last plan (a tree
  /// plan whose draft came out empty counts as a tree step of one token).
  void realise(const tree_step_cost& c) {
    if (learnt.cache.size() <= learnt.context) learnt.cache.resize(learnt.context + 1);
    plan_cache& k = learnt.cache[learnt.context];
    const double tokens = c.nodes > 0 ? static_cast<double>(learnt.step_tokens) : 1.0;
    // In units of the running t(1): a shared host that slows down for a while as a whole
    // (another process on the core's sibling, say) charges no arm that ran then.
    const double t1 = target_token_seconds > 0.0 ? token_seconds() : 1.0;
    const double seconds = (c.target_seconds + c.draft_seconds + c.other_seconds) / t1;
    learnt.step_tokens = 1;
    k.realised[learnt.tree_arm ? 1 : 0].add(tokens, seconds, decay);
    // A chain step also counts for the length planned (whatever the drafter made of it).
    if (learnt.tree_arm) return;
    if (k.lengths.size() <= learnt.planned) k.lengths.resize(learnt.planned + 1);
    k.lengths[learnt.planned].add(tokens, seconds, decay);
  }

  [[nodiscard]] double acceptance_in(std::size_t cls, std::size_t d, std::size_t r) const {
    static const std::vector<std::vector<double>> none;
    const auto& trials = cls < learnt.trials.size() ? learnt.trials[cls] : none;
    const auto& hits = cls < learnt.hits.size() ? learnt.hits[cls] : none;
    double est = prior * std::pow(0.5, static_cast<double>(r));
    for (std::size_t k = 0; k <= d; ++k) {
      if (k < prior_table.size() && r < prior_table[k].size()) est = prior_table[k][r];
      const double t = at(trials, k, r), h = at(hits, k, r);
      est = (h + prior_weight * est) / (t + prior_weight);
    }
    return est;
  }

  /// Forwards of `rows` rows observed (decayed; 0 unless `learn_curve`).
  [[nodiscard]] double observed_forwards(std::size_t rows) const {
    return rows - 1 < learnt.curve_steps.size() ? learnt.curve_steps[rows - 1] : 0.0;
  }

  /// What the search prices a forward of i + 1 rows at: r, or the start-up ratio if that
  /// is lower and the size has been observed fewer than `trust_after` times.
  [[nodiscard]] double search_ratio(std::size_t i) const {
    const double r = curve_at(i);
    return observed_forwards(i + 1) < trust_after ? std::min(r, verify_cost[i]) : r;
  }

  /// r at index i (rows i + 1): the start-up ratio, or what was learnt of it.
  [[nodiscard]] double curve_at(std::size_t i) const {
    if (!learn_curve || learnt.curve_sum.size() != verify_cost.size()) return verify_cost[i];
    return (curve_weight * verify_cost[i] + learnt.curve_sum[i]) / (curve_weight + learnt.curve_steps[i]);
  }

  static double at(const std::vector<std::vector<double>>& m, std::size_t d, std::size_t r) {
    return d < m.size() && r < m[d].size() ? m[d][r] : 0.0;
  }
  static void bump(std::vector<std::vector<double>>& m, std::size_t d, std::size_t r) {
    if (m.size() <= d) m.resize(d + 1);
    if (m[d].size() <= r) m[d].resize(r + 1, 0.0);
    m[d][r] += 1.0;
  }

  /// A node that may be added next: its value (its parent's value times a(d, r)), its
  /// parent's value (1 at the root), its depth and rank.
  struct open_child {
    double v, parent_v;
    std::size_t d, r;
    bool operator<(const open_child& o) const { return v < o.v; }
  };
  /// One grown tree: value[n] its expected accepted nodes with n nodes, forwards[n] the
  /// draft forwards that took (0: n nodes not reachable), height[n] its height; the heap
  /// and round are scratch, kept across the search's many trees.
  struct growth {
    std::vector<double> value;
    std::vector<std::size_t> forwards, height;
    std::vector<open_child> heap, round;
  };

  /// Grows the tree of branching b and depth cap cap as the drafter would (see the struct
  /// comment), `width` nodes per round (0: no rounds), up to n_max nodes.
  void grow(const std::vector<std::vector<double>>& a, std::size_t b, std::size_t cap, std::size_t width,
            std::size_t n_max, growth& g) const {
    g.value.assign(n_max + 1, 0.0);
    g.forwards.assign(n_max + 1, 0);
    g.height.assign(n_max + 1, 0);
    std::vector<open_child>& q = g.heap;
    std::vector<open_child>& round = g.round;
    q.clear();
    const auto push = [&](const open_child& c) {
      q.push_back(c);
      std::push_heap(q.begin(), q.end());
    };
    push({a[0][0], 1.0, 0, 0});
    std::size_t n = 0, forwards = width ? 1 : 0, height = 0;
    double value = 0.0;
    const auto open = [&](const open_child& c) {  // c was added and forwarded: its first child
      if (c.d + 1 < cap) push({c.v * a[c.d + 1][0], c.v, c.d + 1, 0});
    };
    while (n < n_max && !q.empty()) {
      round.clear();
      while (n < n_max && !q.empty() && (width == 0 || round.size() < width)) {
        std::pop_heap(q.begin(), q.end());
        const open_child c = q.back();
        q.pop_back();
        ++n;
        value += c.v;
        height = std::max(height, c.d + 1);
        g.value[n] = value;
        g.forwards[n] = forwards;
        g.height[n] = height;
        if (c.r + 1 < b) push({c.parent_v * a[c.d][c.r + 1], c.parent_v, c.d, c.r + 1});
        if (width == 0) open(c);
        else round.push_back(c);
      }
      if (width == 0 || n >= n_max) break;
      bool forwarded = false;
      for (const open_child& c : round)
        if (c.d + 1 < cap) {
          open(c);
          forwarded = true;
        }
      if (forwarded) ++forwards;
    }
  }

  /// The best plan (or, with `only_nodes` / `only_branching` set, the best with those;
  /// without `none`, the best that drafts); a forward of `only_nodes` nodes costs at most
  /// `cost_cap`.
  [[nodiscard]] choice search(std::size_t only_nodes, std::size_t only_branching, bool none = true,
                              double cost_cap = std::numeric_limits<double>::infinity()) const {
    const std::size_t b_max = only_branching == any ? max_branching : only_branching;
    const std::size_t depth_max = std::min(max_depth, max_nodes);
    std::vector<std::vector<double>> a(depth_max, std::vector<double>(b_max));
    for (std::size_t d = 0; d < depth_max; ++d)
      for (std::size_t r = 0; r < b_max; ++r) a[d][r] = acceptance(d, r);
    const double c_1 = first_draft_cost(), c_d = draft_forward_cost(), c_o = row_overhead();
    std::vector<double> cost(max_nodes + 1);
    for (std::size_t n = 0; n <= max_nodes; ++n) cost[n] = search_ratio(n);
    if (only_nodes != any) cost[only_nodes] = std::min(cost[only_nodes], cost_cap);
    choice best{{}, 0.0}, chain{{}, 0.0};  // chain: the best without branches (no draft included)
    const auto consider = [&](const tree_plan& p, double value, std::size_t forwards) {
      const std::size_t n = p.nodes;
      const double r =
          (value + 1.0) / (cost[n] + drafting_time(c_1, c_d, forwards) + c_o * static_cast<double>(n + 1));
      if (r > best.rate * (1.0 + 1e-9)) best = {p, r, value + 1.0};
      if (p.branching == 1 && r > chain.rate * (1.0 + 1e-9)) chain = {p, r, value + 1.0};
    };
    if (none && (only_nodes == any || only_nodes == 0)) consider({}, 0.0, 0);
    if (only_nodes == 0) return best;
    const std::size_t n_lo = only_nodes == any ? 1 : only_nodes, n_hi = only_nodes == any ? max_nodes : only_nodes;
    growth g;
    for (std::size_t b = only_branching == any ? 1 : only_branching; b <= b_max; ++b) {
      if (!level_drafter) {
        grow(a, b, depth_max, 0, n_hi, g);
        for (std::size_t n = n_lo; n <= n_hi; ++n)
          if (g.height[n] > 0) consider({n, g.height[n], b}, g.value[n], 0);
        continue;
      }
      for (std::size_t cap = 1; cap <= depth_max; ++cap) {
        // No tree of branching b and height cap holds more than b + b^2 + ... + b^cap
        // nodes: larger N are unreachable, and growing towards them is wasted work.
        std::size_t top = 0;
        for (std::size_t k = 0, level = 1; k < cap && top < n_hi; ++k) {
          level = std::min(level * b, n_hi);
          top += level;
        }
        top = std::min(top, n_hi);
        for (std::size_t w = 1; (w - 1) * cap < top; ++w) {
          // The nodes N whose round width ceil(N / cap) is w.
          const std::size_t lo = std::max(n_lo, (w - 1) * cap + 1), hi = std::min(top, w * cap);
          if (lo > hi) continue;
          grow(a, b, cap, w, hi, g);
          for (std::size_t n = lo; n <= hi; ++n)
            if (g.forwards[n] > 0) consider({n, cap, b}, g.value[n], g.forwards[n]);
        }
      }
    }
    if (only_branching == any && best.plan.branching > 1 && chain.rate > 0.0 &&
        best.rate < chain.rate * (1.0 + tree_margin))
      return chain;
    return best;
  }
};

/// The context classes `measure_tree_policy` gives an id-only drafter by default: match
/// lengths 0 (none), 1, 2-3, 4-7, 8-15, 16-31, 32+ tokens (`text_index_drafter::context`).
///
/// ```cpp
/// specdec::hardware_aware_tree p{.context_bounds = specdec::text_context_bounds()};
/// ```
[[nodiscard]] inline std::vector<std::size_t> text_context_bounds() { return {1, 2, 4, 8, 16, 32}; }

/// A `hardware_aware_tree` sized to this host: the target's verify-cost curve up to
/// `knobs.max_nodes + 1` tokens (made non-decreasing) and, with a draft model, one draft
/// forward's cost against one target token, both measured now (`measure_verify_cost`;
/// each model's cache is left as it was), and `target_token_seconds`, so that the policy
/// refines these costs from the decoder's step timings. The text-only overload models an
/// id-only drafter (`level_drafter` off; `context_bounds`, unless given, the match-length
/// classes of `text_context_bounds`), the other a draft model (on).
///
/// ```cpp
/// auto policy = specdec::measure_tree_policy(big, little, {.max_nodes = 24, .max_depth = 8});
/// auto text_only = specdec::measure_tree_policy(big, {.max_nodes = 16});
/// ```
template <tree_model Target>
hardware_aware_tree measure_tree_policy(Target& target, hardware_aware_tree knobs = {},
                                        verify_cost_options options = {}) {
  const verify_cost_curve t = measure_verify_cost(target, knobs.max_nodes + 1, options);
  // A block never costs less than a smaller one: a size timed below a smaller size (a
  // noisy measurement) takes the smaller size's cost.
  knobs.verify_cost.clear();
  for (std::size_t n = 1; n <= knobs.max_nodes + 1; ++n)
    knobs.verify_cost.push_back(std::max(t.tree_ratio(n), n == 1 ? 0.0 : knobs.verify_cost.back()));
  knobs.draft_cost = 0.0;
  knobs.level_drafter = false;
  if (knobs.context_bounds.empty()) knobs.context_bounds = text_context_bounds();
  knobs.target_token_seconds = t.chain[0];
  return knobs;
}
template <tree_model Target, tree_model Draft>
hardware_aware_tree measure_tree_policy(Target& target, Draft& draft, hardware_aware_tree knobs = {},
                                        verify_cost_options options = {}) {
  std::vector<std::size_t> bounds = std::move(knobs.context_bounds);  // a draft model has no context
  knobs = measure_tree_policy(target, std::move(knobs), options);
  knobs.context_bounds = std::move(bounds);
  knobs.level_drafter = true;
  options.trees = false;  // one draft forward of one token
  knobs.draft_cost = measure_verify_cost(draft, 1, options).chain[0] / knobs.target_token_seconds;
  return knobs;
}

}  // namespace specdec
