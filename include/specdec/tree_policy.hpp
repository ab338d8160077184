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
#include <cstddef>
#include <queue>
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

/// Sizes trees to the host. Model: a child of rank r (its index among its siblings) at
/// depth d is accepted, given that its parent was, with probability a(d, r), estimated
/// online from the verdicts (a Beta-style mean whose prior is the estimate one level up,
/// `prior * 0.5^r` at depth 0). For each branching b = 1..max_branching the tree of N
/// nodes with the most expected accepted tokens A(N) is built best-first (a node's value
/// is the product of a along its path, and adding the most valuable open node is
/// optimal because a child is never worth more than its parent); a step then emits A(N)
/// + 1 tokens at a cost of `verify_cost[N]` (N nodes plus the committed token, in units
/// of one target token) plus `draft_cost` per tree level. The plan maximises (A + 1) /
/// cost over b and N = 0..max_nodes; N = 0 is plain decoding, b = 1 a chain.
///
/// ```cpp
/// specdec::hardware_aware_tree p{.verify_cost = {1.0, 1.02, 1.05, 1.1, 1.2}, .draft_cost = 0.1,
///                                .max_nodes = 4, .max_depth = 4, .max_branching = 2};
/// p.validate();
/// specdec::tree_plan plan = p.plan();
/// ```
struct hardware_aware_tree {
  /// verify_cost[n - 1] = t(n) / t(1): one target forward of n tokens against one; at
  /// least max_nodes + 1 entries (measure_verify_cost's `tree_ratio`).
  std::vector<double> verify_cost;
  double draft_cost = 0.0;        ///< one draft forward, in units of one target token; >= 0
  std::size_t max_nodes = 16;     ///< >= 1
  std::size_t max_depth = 8;      ///< >= 1
  std::size_t max_branching = 4;  ///< >= 1
  double prior = 0.6;             ///< prior acceptance of the rank-0 child at depth 0; in (0, 1)
  double prior_weight = 4.0;      ///< pseudo-observations of the prior; > 0
  double target_token_seconds = 0.0;  ///< set by measure_tree_policy: t(1) of the target

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
    detail::check_positive("hardware_aware_tree.prior_weight", prior_weight);
  }

  /// Forgets what was learnt.
  void reset() {
    observed.trials.clear();
    observed.hits.clear();
  }

  /// The estimated acceptance of a rank-r child at depth d (see the struct comment).
  [[nodiscard]] double acceptance(std::size_t d, std::size_t r) const {
    double est = prior * std::pow(0.5, static_cast<double>(r));
    for (std::size_t k = 0; k <= d; ++k) {
      const double t = at(observed.trials, k, r), h = at(observed.hits, k, r);
      est = (h + prior_weight * est) / (t + prior_weight);
    }
    return est;
  }

  /// Expected tokens per unit of target time of the best tree of `nodes` nodes and
  /// `branching`, with its depth in `depth_out` (nodes = 0: 1 / verify_cost[0]).
  /// Throws `invalid_argument` for bad knobs (`validate`), or unless
  /// `nodes < verify_cost.size()` and `branching >= 1`.
  [[nodiscard]] double rate(std::size_t nodes, std::size_t branching, std::size_t* depth_out = nullptr) const {
    validate();
    if (nodes >= verify_cost.size() || branching == 0)
      throw invalid_argument("hardware_aware_tree::rate: nodes = " + std::to_string(nodes) + ", branching = " +
                             std::to_string(branching) + "; expected nodes < verify_cost.size() = " +
                             std::to_string(verify_cost.size()) + " and branching >= 1");
    std::vector<double> best(nodes + 1, 0.0);
    std::vector<std::size_t> depth(nodes + 1, 0);
    grow(branching, nodes, best, depth);
    if (depth_out) *depth_out = depth[nodes];
    return (best[nodes] + 1.0) / (verify_cost.at(nodes) + draft_cost * static_cast<double>(depth[nodes]));
  }

  /// The shape that maximises expected tokens per unit of time (ties: fewer nodes).
  [[nodiscard]] tree_plan plan() const {
    validate();
    tree_plan out{};
    double best_rate = 1.0 / verify_cost[0];
    std::vector<double> value(max_nodes + 1);
    std::vector<std::size_t> depth(max_nodes + 1);
    for (std::size_t b = 1; b <= max_branching; ++b) {
      grow(b, max_nodes, value, depth);
      for (std::size_t n = 1; n <= max_nodes; ++n) {
        const double r = (value[n] + 1.0) / (verify_cost[n] + draft_cost * static_cast<double>(depth[n]));
        if (r > best_rate * (1.0 + 1e-9)) {
          best_rate = r;
          out = {n, depth[n], b};
        }
      }
    }
    return out;
  }

  /// Counts, for every child of the root and of each accepted node, one trial at its
  /// (depth, rank), and one hit when it is on the accepted path.
  void observe(const token_tree& t, std::span<const std::size_t> path) {
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
      bump(observed.trials, d, r);
      if (std::ranges::find(path, j) != path.end()) bump(observed.hits, d, r);
    }
  }

 private:
  static double at(const std::vector<std::vector<double>>& m, std::size_t d, std::size_t r) {
    return d < m.size() && r < m[d].size() ? m[d][r] : 0.0;
  }
  static void bump(std::vector<std::vector<double>>& m, std::size_t d, std::size_t r) {
    if (m.size() <= d) m.resize(d + 1);
    if (m[d].size() <= r) m[d].resize(r + 1, 0.0);
    m[d][r] += 1.0;
  }

  /// Best-first: value[n] = expected accepted tokens of the best n-node tree with at most
  /// b children per node, depth[n] its height.
  void grow(std::size_t b, std::size_t n_max, std::vector<double>& value, std::vector<std::size_t>& depth) const {
    struct open_node {
      double v;
      std::size_t d;
      bool operator<(const open_node& o) const { return v < o.v; }
    };
    std::vector<std::vector<double>> a(max_depth, std::vector<double>(b));
    for (std::size_t d = 0; d < max_depth; ++d)
      for (std::size_t r = 0; r < b; ++r) a[d][r] = acceptance(d, r);
    std::priority_queue<open_node> q;
    for (std::size_t r = 0; r < b; ++r) q.push({a[0][r], 0});
    value[0] = 0.0;
    depth[0] = 0;
    for (std::size_t n = 1; n <= n_max; ++n) {
      if (q.empty()) {
        value[n] = value[n - 1];
        depth[n] = depth[n - 1];
        continue;
      }
      const open_node top = q.top();
      q.pop();
      value[n] = value[n - 1] + top.v;
      depth[n] = std::max(depth[n - 1], top.d + 1);
      if (top.d + 1 < max_depth)
        for (std::size_t r = 0; r < b; ++r) q.push({top.v * a[top.d + 1][r], top.d + 1});
    }
  }


 public:
  /// What `observe` learnt: trials[d][r] children of rank r at depth d whose parent was
  /// reached, hits[d][r] of them accepted (public only so the struct stays an aggregate).
  struct counts {
    std::vector<std::vector<double>> trials, hits;
  } observed{};
};

/// A `hardware_aware_tree` sized to this host: the target's verify-cost curve up to
/// `knobs.max_nodes + 1` tokens and, with a draft model, one draft forward's cost against
/// one target token, both measured now (`measure_verify_cost`; each model's cache is
/// left as it was).
///
/// ```cpp
/// auto policy = specdec::measure_tree_policy(big, little, {.max_nodes = 24, .max_depth = 8});
/// auto text_only = specdec::measure_tree_policy(big, {.max_nodes = 16});
/// ```
template <tree_model Target>
hardware_aware_tree measure_tree_policy(Target& target, hardware_aware_tree knobs = {},
                                        verify_cost_options options = {}) {
  const verify_cost_curve t = measure_verify_cost(target, knobs.max_nodes + 1, options);
  knobs.verify_cost.clear();
  for (std::size_t n = 1; n <= knobs.max_nodes + 1; ++n) knobs.verify_cost.push_back(t.tree_ratio(n));
  knobs.draft_cost = 0.0;
  knobs.target_token_seconds = t.chain[0];
  return knobs;
}
template <tree_model Target, tree_model Draft>
hardware_aware_tree measure_tree_policy(Target& target, Draft& draft, hardware_aware_tree knobs = {},
                                        verify_cost_options options = {}) {
  knobs = measure_tree_policy(target, std::move(knobs), options);
  knobs.draft_cost = measure_verify_cost(draft, 1, options).chain[0] / knobs.target_token_seconds;
  return knobs;
}

}  // namespace specdec
