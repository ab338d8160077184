// Tests for include/specdec/tree_policy.hpp: fixed_tree's knobs; hardware_aware_tree picks
// the analytically best shape for a given cost curve, draft cost and acceptance table
// (worked out by hand below, in both the level-by-level and the free drafting model), a
// big tree on a flat curve, a chain or no draft on a steep one; its online estimates
// (acceptance per depth and rank, one token's time, the draft forward, the per-row
// overhead) converge on synthetic streams and follow a change; measure_tree_policy fills
// the curve from the models; bad knobs get clear errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "specdec/testing/archetypes.hpp"
#include "specdec/tree_policy.hpp"

namespace {
static_assert(specdec::tree_sizing_policy<specdec::fixed_tree>);
static_assert(specdec::tree_sizing_policy<specdec::hardware_aware_tree>);
static_assert(specdec::cost_observing_policy<specdec::hardware_aware_tree>);
static_assert(!specdec::cost_observing_policy<specdec::fixed_tree>);

std::vector<double> curve(std::size_t n, double per_token) {
  std::vector<double> c;
  for (std::size_t i = 0; i < n; ++i) c.push_back(1.0 + per_token * static_cast<double>(i));
  return c;
}

// The same a(d, 0), a(d, 1) at every depth.
std::vector<std::vector<double>> table(std::size_t depth, double a0, double a1) {
  return std::vector<std::vector<double>>(depth, std::vector<double>{a0, a1});
}

void expect_plan(const specdec::tree_plan& p, std::size_t nodes, std::size_t depth, std::size_t branching) {
  EXPECT_EQ(p.nodes, nodes);
  EXPECT_EQ(p.depth, depth);
  EXPECT_EQ(p.branching, branching);
}

// A chain of n nodes: tokens 1..n, each the child of the one before.
specdec::token_tree chain_of(std::size_t n) {
  specdec::token_tree t;
  for (std::size_t i = 0; i < n; ++i)
    t.add(static_cast<specdec::token_id>(i + 1), i == 0 ? specdec::no_parent : static_cast<std::int32_t>(i - 1));
  return t;
}

// Node 0 (rank 0 root) is accepted, then its rank-0 child.
specdec::token_tree two_level() {
  specdec::token_tree t;
  t.add(1);     // 0: rank 0, depth 0
  t.add(2);     // 1: rank 1, depth 0
  t.add(3, 0);  // 2: rank 0, depth 1
  t.add(4, 0);  // 3: rank 1, depth 1
  return t;
}
}  // namespace

TEST(fixed_tree, plans_its_shape_and_rejects_bad_knobs) {
  const specdec::fixed_tree f{.nodes = 6, .depth = 3, .branching = 2};
  EXPECT_NO_THROW(f.validate());
  EXPECT_EQ(f.plan().nodes, 6u);
  EXPECT_NO_THROW((specdec::fixed_tree{.nodes = 0}.validate()));  // never draft
  EXPECT_THROW((specdec::fixed_tree{.nodes = 3, .depth = 4}.validate()), specdec::invalid_argument);
  EXPECT_THROW((specdec::fixed_tree{.nodes = 3, .depth = 0}.validate()), specdec::invalid_argument);
  EXPECT_THROW((specdec::fixed_tree{.nodes = 3, .depth = 2, .branching = 0}.validate()), specdec::invalid_argument);
}

// Free best-first (an id-only drafter), verify_cost {1, 1.02, 1.05, 1.1, 1.8}, a(d, 0) =
// 0.6, a(d, 1) = 0.3. Per step (tokens / cost): no draft 1; one node 1.6 / 1.02; a chain
// of 2 1.96 / 1.05 = 1.867; a chain of 3 (1 + 0.6 + 0.36 + 0.216) / 1.1 = 1.978; the root's
// two children plus the first one's child (1 + 0.6 + 0.3 + 0.36) / 1.1 = 2.055; four
// nodes at most 2.476 / 1.8. Best: that 3-node tree of height 2.
TEST(hardware_aware_tree, picks_the_best_shape_of_a_free_drafter) {
  specdec::hardware_aware_tree p{.verify_cost = {1.0, 1.02, 1.05, 1.1, 1.8}, .max_nodes = 4, .max_depth = 4,
                                 .max_branching = 2, .prior_table = table(4, 0.6, 0.3), .level_drafter = false,
                                 .tree_margin = 0.0};
  expect_plan(p.plan(), 3, 2, 2);
  EXPECT_NEAR(p.rate(3, 2), 2.26 / 1.1, 1e-12);
  EXPECT_NEAR(p.rate(3, 1), 2.176 / 1.1, 1e-12);
  EXPECT_NEAR(p.rate(2, 1), 1.96 / 1.05, 1e-12);
  EXPECT_NEAR(p.rate(0, 1), 1.0, 1e-12);
  EXPECT_NEAR(p.acceptance(2, 1), 0.3, 1e-12);
}

// tree_margin: the 3-node tree of the test above beats the chain of 3 by 3.9 % (2.26 /
// 1.1 against 2.176 / 1.1); a margin of 3 % keeps the tree, of 5 % (or the default 10 %)
// plans that chain. A tree far ahead of every chain (a flat curve, siblings as likely as
// first children) stays a tree under the default margin; a margin never turns a chain
// or no draft into anything else.
TEST(hardware_aware_tree, plans_a_tree_only_if_it_beats_the_best_chain_by_the_margin) {
  specdec::hardware_aware_tree p{.verify_cost = {1.0, 1.02, 1.05, 1.1, 1.8}, .max_nodes = 4, .max_depth = 4,
                                 .max_branching = 2, .prior_table = table(4, 0.6, 0.3), .level_drafter = false,
                                 .tree_margin = 0.03};
  expect_plan(p.plan(), 3, 2, 2);
  p.tree_margin = 0.05;
  expect_plan(p.plan(), 3, 3, 1);
  EXPECT_NEAR(p.rate(3, 2), 2.26 / 1.1, 1e-12);  // rate() of a given branching ignores the margin
  p.tree_margin = specdec::hardware_aware_tree{}.tree_margin;
  expect_plan(p.plan(), 3, 3, 1);
  specdec::hardware_aware_tree flat{.verify_cost = curve(9, 0.0), .max_nodes = 8, .max_depth = 4, .max_branching = 2,
                                    .prior_table = table(4, 0.5, 0.5), .level_drafter = false};
  EXPECT_EQ(flat.plan().branching, 2u);
  EXPECT_EQ(flat.plan().nodes, 8u);
  specdec::hardware_aware_tree steep{.verify_cost = curve(9, 1.0), .max_nodes = 8, .tree_margin = 5.0};
  EXPECT_EQ(steep.plan().nodes, 0u);
  EXPECT_THROW((void)(specdec::hardware_aware_tree{.verify_cost = curve(9, 0.1), .max_nodes = 8,
                                                   .tree_margin = -0.1}.plan()),
               specdec::invalid_argument);
}

// A draft model expanded level by level (rounds of ceil(N / D) nodes, one draft forward
// per round that has a successor), flat verify cost, a(d, 0) = 0.7, a(d, 1) = 0.2, c_d the
// draft forward. Candidates (tokens, draft forwards):
//   1 node:                               1.7,   1
//   chain of 2 / of 3:                    2.19,  2  /  2.533, 3
//   2 roots (D = 1, one round of 2):      1.9,   1
//   2 roots + a grandchild (D = 2, w = 2: the roots, then the best child): 2.39, 2
// c_d = 0.1: 2.39 / 1.2 = 1.992 beats the chain of 3, 2.533 / 1.3 = 1.948 -> {3, 2, 2}.
// c_d = 0.6: 1.9 / 1.6 = 1.1875 beats 2.39 / 2.2 and 1.7 / 1.6 -> {2, 1, 2}.
// c_d = 1.0: the best, 1.9 / 2, is below 1 -> no draft.
TEST(hardware_aware_tree, picks_the_best_shape_of_a_level_by_level_drafter) {
  specdec::hardware_aware_tree p{.verify_cost = {1.0, 1.0, 1.0, 1.0}, .draft_cost = 0.1, .max_nodes = 3,
                                 .max_depth = 3, .max_branching = 2, .prior_table = table(3, 0.7, 0.2),
                                 .tree_margin = 0.0};
  expect_plan(p.plan(), 3, 2, 2);
  EXPECT_NEAR(p.rate(3, 2), 2.39 / 1.2, 1e-12);
  EXPECT_NEAR(p.rate(3, 1), 2.533 / 1.3, 1e-12);
  p.draft_cost = 0.6;
  expect_plan(p.plan(), 2, 1, 2);
  EXPECT_NEAR(p.rate(2, 2), 1.9 / 1.6, 1e-12);
  p.draft_cost = 1.0;
  EXPECT_EQ(p.plan().nodes, 0u);
  // A chain longer than the depth allows does not exist.
  p.max_depth = 2;
  EXPECT_EQ(p.rate(3, 1), 0.0);
}

TEST(hardware_aware_tree, a_flat_curve_gives_a_big_tree_a_steep_one_a_chain_or_nothing) {
  // Verifying more rows is free: as many nodes as allowed, in a tree.
  specdec::hardware_aware_tree flat{.verify_cost = curve(17, 0.0), .max_nodes = 16, .max_depth = 6};
  const auto p = flat.plan();
  EXPECT_EQ(p.nodes, 16u);
  EXPECT_GT(p.branching, 1u);
  EXPECT_LE(p.depth, 6u);
  // Each row costs a whole token: nothing pays.
  specdec::hardware_aware_tree linear{.verify_cost = curve(17, 1.0), .max_nodes = 16};
  EXPECT_EQ(linear.plan().nodes, 0u);
  // A dear draft model: nothing pays either, but every 16th plan in a row drafts once,
  // to measure the costs again.
  specdec::hardware_aware_tree slow_draft{.verify_cost = curve(17, 0.0), .draft_cost = 2.0, .max_nodes = 16};
  for (int i = 1; i < 16; ++i) EXPECT_EQ(slow_draft.plan().nodes, 0u) << i;
  EXPECT_GT(slow_draft.plan().nodes, 0u);
  EXPECT_EQ(slow_draft.plan().nodes, 0u);
  slow_draft.probe_every = 0;
  for (int i = 0; i < 40; ++i) EXPECT_EQ(slow_draft.plan().nodes, 0u) << i;
  // Rows at a quarter token each, a confident draft whose second choices are rarely
  // right: the best chain, (1 + 0.9 + ... + 0.9^k) / (1 + 0.25 k), is k = 6.
  specdec::hardware_aware_tree steep{.verify_cost = curve(17, 0.25), .max_nodes = 16, .max_depth = 8,
                                     .prior_table = table(8, 0.9, 0.05)};
  double best = 0.0;
  std::size_t best_k = 0;
  for (std::size_t k = 0; k <= 8; ++k) {
    double tokens = 1.0;
    for (std::size_t i = 1; i <= k; ++i) tokens += std::pow(0.9, static_cast<double>(i));
    const double r = tokens / (1.0 + 0.25 * static_cast<double>(k));
    if (r > best) best = r, best_k = k;
  }
  ASSERT_EQ(best_k, 6u);
  expect_plan(steep.plan(), 6, 6, 1);
  EXPECT_NEAR(steep.rate(6, 1), best, 1e-12);
}

TEST(hardware_aware_tree, learns_acceptance_per_depth_and_rank_from_verdicts) {
  // Siblings never accepted, first children always: the plan becomes a chain.
  specdec::hardware_aware_tree learnt{.verify_cost = curve(17, 0.05), .max_nodes = 16, .max_depth = 8};
  const specdec::token_tree t = two_level();
  const std::vector<std::size_t> path{0, 2};
  for (int i = 0; i < 200; ++i) learnt.observe(t, path);
  EXPECT_GT(learnt.acceptance(0, 0), 0.95);
  EXPECT_LT(learnt.acceptance(0, 1), 0.05);
  EXPECT_LT(learnt.acceptance(1, 1), 0.05);
  const auto c = learnt.plan();
  EXPECT_EQ(c.branching, 1u);
  EXPECT_EQ(c.nodes, c.depth);
  EXPECT_GE(c.nodes, 2u);
  EXPECT_GE(learnt.rate(c.nodes, c.branching), learnt.rate(0, 1));
  learnt.reset();
  EXPECT_NEAR(learnt.acceptance(0, 0), learnt.prior, 1e-12);
  // carry_over keeps it.
  learnt.carry_over = true;
  learnt.observe(t, path);
  learnt.reset();
  EXPECT_GT(learnt.acceptance(0, 0), learnt.prior);
}

// A synthetic stream of greedy verdicts on one tree shape (two children per node, three
// levels): at each reached node the rank-0 child is accepted with probability a0(d), else
// the rank-1 one with a1(d), else the walk ends. The estimates converge on those values,
// and after the stream's law changes they follow it (decay forgets the old steps).
TEST(hardware_aware_tree, online_acceptance_estimates_converge_and_follow_a_change) {
  specdec::token_tree t;  // node k's children: 2k + 1, 2k + 2 (a full binary tree of 3 levels)
  t.add(0);
  t.add(1);
  for (std::size_t k = 0; k < 6; ++k) t.add(static_cast<specdec::token_id>(k + 2), static_cast<std::int32_t>(k / 2));
  // parents: 2,3 -> 0; 4,5 -> 1; 6,7 -> 2 (depth 2 only under node 2).
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const auto stream = [&](specdec::hardware_aware_tree& p, const double (&a0)[3], const double (&a1)[3], int steps) {
    for (int s = 0; s < steps; ++s) {
      std::vector<std::size_t> path;
      std::int32_t at = specdec::no_parent;
      for (;;) {
        std::vector<std::size_t> kids;
        for (std::size_t j = 0; j < t.size(); ++j)
          if (t.parent(j) == at) kids.push_back(j);
        if (kids.empty()) break;
        const std::size_t d = t.depth(kids[0]);
        const double x = u(rng);
        const std::size_t pick = x < a0[d] ? 0 : x < a0[d] + a1[d] ? 1 : 2;
        if (pick >= kids.size()) break;
        path.push_back(kids[pick]);
        at = static_cast<std::int32_t>(kids[pick]);
      }
      p.observe(t, path);
    }
  };
  specdec::hardware_aware_tree p{.verify_cost = curve(9, 0.1), .max_nodes = 8, .decay = 0.999};
  const double a0[3] = {0.7, 0.55, 0.4}, a1[3] = {0.2, 0.25, 0.3};
  stream(p, a0, a1, 6000);
  for (std::size_t d = 0; d < 3; ++d) {
    EXPECT_NEAR(p.acceptance(d, 0), a0[d], 0.05) << "depth " << d;
    EXPECT_NEAR(p.acceptance(d, 1), a1[d], 0.05) << "depth " << d;
  }
  const double b0[3] = {0.3, 0.3, 0.3}, b1[3] = {0.1, 0.1, 0.1};
  stream(p, b0, b1, 4000);
  for (std::size_t d = 0; d < 2; ++d) {  // depth 2 is now reached in 9 % of the steps only
    EXPECT_NEAR(p.acceptance(d, 0), b0[d], 0.05) << "depth " << d;
    EXPECT_NEAR(p.acceptance(d, 1), b1[d], 0.05) << "depth " << d;
  }
}

// Step timings re-estimate one token's time, the draft forward and the per-row overhead;
// a draft that turns out dear in the running decoder moves the plan to no draft.
TEST(hardware_aware_tree, online_cost_estimates_converge_and_change_the_plan) {
  specdec::hardware_aware_tree p{.verify_cost = {1.0, 1.0, 1.0, 1.0}, .draft_cost = 0.1, .max_nodes = 3,
                                 .max_depth = 3, .max_branching = 2, .prior_table = table(3, 0.7, 0.2),
                                 .target_token_seconds = 0.8e-3, .learn_curve = false, .tree_margin = 0.0,
                                 .realised_steps = 0};  // the model's plan, not the realised rates
  expect_plan(p.plan(), 3, 2, 2);
  EXPECT_NEAR(p.token_seconds(), 0.8e-3, 1e-15);
  EXPECT_NEAR(p.draft_forward_cost(), 0.1, 1e-12);
  EXPECT_EQ(p.row_overhead(), 0.0);
  EXPECT_EQ(p.learnt.token_steps, 0.0);
  // Not plain (the prompt rode along) or not learning: ignored.
  p.observe_cost({.nodes = 3, .target_rows = 40, .draft_forwards = 2, .target_seconds = 9e-3, .draft_seconds = 1e-3});
  EXPECT_NEAR(p.token_seconds(), 0.8e-3, 1e-15);
  // In the decoder one token takes 1 ms, a draft forward 1 ms, and the step's own work
  // 0.02 ms per row; in every tenth step the machine took the core away for 50 ms.
  for (int s = 0; s < 400; ++s) {
    const double stall = s % 10 == 9 ? 50e-3 : 0.0;
    p.observe_cost({.nodes = 3, .target_rows = 4, .draft_forwards = 2, .target_seconds = 1e-3 + stall,
                    .draft_seconds = 2e-3 + stall, .other_seconds = 0.08e-3 + stall});
  }
  // Steady state: ~50 decayed steps (100 draft forwards, 200 rows) against the measured
  // values' one step; a stall counts as twice the estimate e, so e = (9 + 2e) / 10 ms:
  // 1.125 ms for one token, as much for a draft forward (c_d stays 1), and the overhead
  // at most a quarter token per row in a stalled step.
  EXPECT_NEAR(p.token_seconds(), 1.125e-3, 0.02e-3);
  EXPECT_NEAR(p.draft_forward_cost(), 1.0, 0.02);
  EXPECT_GT(p.row_overhead(), 0.015);
  EXPECT_LT(p.row_overhead(), 0.06);
  EXPECT_EQ(p.plan().nodes, 0u);
  // A stall alone counts twice the estimate, not 50 ms.
  specdec::hardware_aware_tree q = p;
  q.reset();
  q.observe_cost({.nodes = 3, .target_rows = 4, .draft_forwards = 2, .target_seconds = 50e-3});
  EXPECT_NEAR(q.token_seconds(), (0.8e-3 + 2 * 0.8e-3) / 2, 1e-12);
  // Without learn_costs the measured values stand.
  p.reset();
  p.learn_costs = false;
  p.observe_cost({.nodes = 3, .target_rows = 4, .draft_forwards = 2, .target_seconds = 1e-3, .draft_seconds = 2e-3});
  EXPECT_NEAR(p.draft_forward_cost(), 0.1, 1e-12);
  expect_plan(p.plan(), 3, 2, 2);
}

// A step whose first draft forward caught up on committed tokens the draft had not seen
// (after steps that drafted nothing) is no sample of a draft forward's cost; a policy that
// learnt from those probes alone priced drafting out for good (the self pair at
// temperature 1 on the Zen 4 host: 3.3 target tokens per draft forward, no draft in 94 %
// of the steps, 0.62x of the best chain).
TEST(hardware_aware_tree, a_draft_forward_that_caught_up_is_no_sample_of_the_draft_cost) {
  specdec::hardware_aware_tree p{.verify_cost = {1.0, 1.0, 1.0, 1.0}, .draft_cost = 0.1, .max_nodes = 3,
                                 .max_depth = 3, .max_branching = 1, .prior_table = table(3, 0.7, 0.2),
                                 .target_token_seconds = 1e-3, .learn_curve = false, .tree_margin = 0.0,
                                 .realised_steps = 0};
  ASSERT_EQ(specdec::hardware_aware_tree::max_draft_context_rows, 2u);
  specdec::hardware_aware_tree q = p;
  // One draft forward that also took 9 committed tokens: 2 ms, twenty times a plain one.
  for (int s = 0; s < 50; ++s)
    p.observe_cost({.nodes = 1, .target_rows = 2, .draft_forwards = 1, .draft_context_rows = 9,
                    .target_seconds = 1e-3, .draft_seconds = 2e-3});
  EXPECT_NEAR(p.draft_forward_cost(), 0.1, 1e-12);
  EXPECT_GT(p.plan().nodes, 0u);
  // The same timings from forwards that took 2 committed tokens are samples: each counts
  // at most twice the estimate, so 50 of them lift it far enough to stop drafting.
  for (int s = 0; s < 50; ++s)
    q.observe_cost({.nodes = 1, .target_rows = 2, .draft_forwards = 1, .draft_context_rows = 2,
                    .target_seconds = 1e-3, .draft_seconds = 2e-3});
  EXPECT_GT(q.draft_forward_cost(), 1.0);
  EXPECT_EQ(q.plan().nodes, 0u);
}

// A step's first draft forward reads the draft's weights back after the target's forward
// streamed its own through the caches, and costs more than a later one where the caches
// hold neither model whole. Priced apart, it no longer makes a longer chain's extra
// forwards look dear; the same steps reported without the split teach one mean cost, and
// that policy plans a shorter chain.
TEST(hardware_aware_tree, a_steps_first_draft_forward_is_priced_apart_from_the_later_ones) {
  specdec::hardware_aware_tree p{.verify_cost = {1.0, 1.0, 1.0, 1.0, 1.0}, .draft_cost = 0.05, .max_nodes = 4,
                                 .max_depth = 4, .max_branching = 1, .prior_table = table(4, 0.7, 0.2),
                                 .target_token_seconds = 1e-3, .learn_curve = false, .tree_margin = 0.0,
                                 .realised_steps = 0};
  specdec::hardware_aware_tree mean = p;
  EXPECT_NEAR(p.first_draft_cost(), 0.05, 1e-12);  // the start-up cost until steps say otherwise
  // Chains of 2 nodes: one token 1 ms, the first draft forward 0.4 ms, the second 0.05 ms.
  for (int s = 0; s < 300; ++s) {
    p.observe_cost({.nodes = 2, .target_rows = 3, .draft_forwards = 2, .draft_context_rows = 1,
                    .target_seconds = 1e-3, .draft_seconds = 0.45e-3, .first_draft_seconds = 0.4e-3});
    mean.observe_cost({.nodes = 2, .target_rows = 3, .draft_forwards = 2, .draft_context_rows = 1,
                       .target_seconds = 1e-3, .draft_seconds = 0.45e-3});
  }
  EXPECT_NEAR(p.first_draft_cost(), 0.4, 0.01);
  EXPECT_NEAR(p.draft_forward_cost(), 0.05, 1e-3);
  EXPECT_NEAR(p.drafting_cost(4), 0.4 + 3 * 0.05, 0.01);
  EXPECT_EQ(p.drafting_cost(0), 0.0);
  // The search charges the same: a chain of 4 at a = 0.7 emits 1 + 0.7 + ... + 0.7^4 tokens.
  EXPECT_NEAR(p.rate(4, 1), (1.0 + 0.7 + 0.49 + 0.343 + 0.2401) / (1.0 + p.drafting_cost(4)), 1e-9);
  EXPECT_NEAR(mean.first_draft_cost(), 0.225, 0.005);
  EXPECT_NEAR(mean.draft_forward_cost(), 0.225, 0.005);
  // a = 0.7 at every depth, a flat curve: 4 nodes emit 2.77 tokens for 1 + 0.4 + 3 x 0.05
  // (1.80 per token-time) against 3 nodes' 2.53 for 1.5 (1.69); at one mean cost of 0.225,
  // 3 nodes (1.52) beat 4 (1.47).
  expect_plan(p.plan(), 4, 4, 1);
  expect_plan(mean.plan(), 3, 3, 1);
}

// The curve's shape: each forward size's ratio is the start-up ratio, weighing as
// curve_weight observations, blended with the decayed ratios t_step / t(1) observed at
// that size (each capped at twice the estimate); other sizes keep theirs.
TEST(hardware_aware_tree, online_curve_estimate_blends_the_start_up_ratio_with_the_observed_ones) {
  specdec::hardware_aware_tree p{.verify_cost = {1.0, 1.5, 1.5, 1.5}, .max_nodes = 3, .max_depth = 3,
                                 .max_branching = 2, .decay = 0.5, .learn_costs = false,
                                 .target_token_seconds = 1e-3, .curve_weight = 2.0};
  EXPECT_EQ(p.verify_ratio(3), 1.5);
  p.observe_cost({.nodes = 2, .target_rows = 3, .target_seconds = 1.2e-3});
  p.observe_cost({.nodes = 2, .target_rows = 3, .target_seconds = 1.2e-3});
  // Decayed: sum 0.5 * 1.2 + 1.2 = 1.8 of 0.5 + 1 = 1.5 steps, beside 2 x 1.5.
  EXPECT_NEAR(p.verify_ratio(3), (2 * 1.5 + 1.8) / (2 + 1.5), 1e-12);
  EXPECT_EQ(p.verify_ratio(1), 1.0);
  EXPECT_EQ(p.verify_ratio(2), 1.5);
  EXPECT_EQ(p.verify_ratio(4), 1.5);
  EXPECT_NEAR(p.token_seconds(), 1e-3, 1e-15);  // learn_costs off: t(1) stands
  // A stalled forward counts as twice the estimate.
  const double before = p.verify_ratio(3);
  p.observe_cost({.nodes = 2, .target_rows = 3, .target_seconds = 50e-3});
  EXPECT_NEAR(p.verify_ratio(3), (2 * 1.5 + 0.5 * 1.8 + 2 * before) / (2 + 0.5 * 1.5 + 1), 1e-12);
  // A step whose forward also took the prompt says nothing of the curve.
  const double now = p.verify_ratio(3);
  p.observe_cost({.nodes = 2, .target_rows = 30, .target_seconds = 9e-3});
  EXPECT_EQ(p.verify_ratio(3), now);
  // A host twice as slow as a whole moves t(1) (learnt through the start-up curve), not
  // the shape: size 2 observed at 2 x 1.5 ms reads as 1.5.
  specdec::hardware_aware_tree q{.verify_cost = {1.0, 1.5, 1.5}, .max_nodes = 2, .max_depth = 2,
                                 .max_branching = 1, .decay = 1.0, .target_token_seconds = 1e-3};
  for (int i = 0; i < 400; ++i) q.observe_cost({.nodes = 1, .target_rows = 2, .target_seconds = 3e-3});
  EXPECT_NEAR(q.token_seconds(), 2e-3, 0.01e-3);
  EXPECT_NEAR(q.verify_ratio(2), 1.5, 0.02);
  // Off: the start-up curve; reset: forgotten.
  p.learn_curve = false;
  EXPECT_EQ(p.verify_ratio(3), 1.5);
  p.learn_curve = true;
  EXPECT_EQ(p.verify_ratio(3), now);
  p.reset();
  EXPECT_EQ(p.verify_ratio(3), 1.5);
  EXPECT_THROW((void)p.verify_ratio(0), specdec::invalid_argument);
  EXPECT_THROW((void)p.verify_ratio(5), specdec::invalid_argument);
  EXPECT_THROW((void)(specdec::hardware_aware_tree{.verify_cost = curve(17, 0.1), .curve_weight = 0.0}.plan()),
               specdec::invalid_argument);
}

// A start-up curve measured on a loaded host made 5-8 rows look 1.5x as dear as they are:
// the policy plans small trees at first, then, from the forwards it runs (its own plans
// and the neighbour sizes it explores), learns the host's curve and ends on the plan the
// true curve gives (the model's own plan: no hysteresis, which may stop within
// switch_margin of it, and no rivals measured against it; see their tests).
TEST(hardware_aware_tree, a_distorted_start_up_curve_is_corrected_by_the_forwards_it_runs) {
  std::vector<double> truth, distorted;
  for (std::size_t rows = 1; rows <= 13; ++rows) {
    truth.push_back(rows <= 8 ? 1.0 + 0.02 * static_cast<double>(rows - 1) : 1.9 + 0.02 * static_cast<double>(rows - 9));
    distorted.push_back(rows >= 5 && rows <= 8 ? 1.5 * truth.back() : truth.back());
  }
  const specdec::hardware_aware_tree knobs{.verify_cost = truth, .max_nodes = 12, .max_depth = 12,
                                           .max_branching = 2, .prior_table = table(12, 0.75, 0.25),
                                           .level_drafter = false, .target_token_seconds = 1e-3,
                                           .switch_margin = 0.0, .rival_band = 0.0};  // the model's own plan
  specdec::hardware_aware_tree true_host = knobs;
  true_host.learn_curve = false;
  const specdec::tree_plan best = true_host.plan();
  EXPECT_GE(best.nodes, 4u);
  EXPECT_LE(best.nodes, 7u);
  const auto run = [&](double explore_until, std::size_t& explorations) {
    specdec::hardware_aware_tree p = knobs;
    p.verify_cost = distorted;
    p.explore_until = explore_until;
    EXPECT_LT(p.plan().nodes, 4u);
    for (int step = 0; step < 3000; ++step) {
      const specdec::tree_plan q = p.plan();
      explorations += q.nodes != p.learnt.cache.at(0).plan.nodes ? 1 : 0;
      p.observe_cost({.nodes = q.nodes, .target_rows = q.nodes + 1, .target_seconds = 1e-3 * truth[q.nodes]});
    }
    return p;
  };
  // Exploring for ever: the sizes the distortion hit that the plan and its explored
  // neighbours keep measuring, against the plan's, take their true ratios.
  std::size_t explorations = 0;
  const specdec::hardware_aware_tree p = run(1e9, explorations);
  EXPECT_GT(explorations, 0u);
  EXPECT_LE(explorations, 3000u / 8);  // one plan in explore_every
  for (std::size_t rows = std::max<std::size_t>(5, best.nodes - 1); rows <= 8; ++rows)
    EXPECT_NEAR(p.verify_ratio(rows) / p.verify_ratio(best.nodes + 1), truth[rows - 1] / truth[best.nodes], 0.03)
        << rows << " rows";
  specdec::hardware_aware_tree settled = p;
  settled.explore_every = 0;
  const specdec::tree_plan learnt = settled.plan();
  expect_plan(learnt, best.nodes, best.depth, best.branching);
  // Exploring each neighbour only until explore_until forwards of its size were seen
  // (the default): a few dozen explorations, and the same plan in the end.
  std::size_t few = 0;
  specdec::hardware_aware_tree q = run(specdec::hardware_aware_tree{}.explore_until, few);
  EXPECT_GT(few, 0u);
  EXPECT_LT(few, explorations / 3);
  q.explore_every = 0;
  expect_plan(q.plan(), best.nodes, best.depth, best.branching);
  // Without learning the curve it stays where the distorted curve put it.
  specdec::hardware_aware_tree fixed = knobs;
  fixed.verify_cost = distorted;
  fixed.learn_curve = false;
  for (int step = 0; step < 3000; ++step) {
    const specdec::tree_plan q = fixed.plan();
    fixed.observe_cost({.nodes = q.nodes, .target_rows = q.nodes + 1, .target_seconds = 1e-3 * truth[q.nodes]});
  }
  EXPECT_LT(fixed.plan().nodes, 4u);
}

// Exploration pays only while a neighbour's cost is unknown: chains only, a(d, 0) = 0.5,
// forwards of up to 6 rows cost one token and of 7+ rows 1.5. The plan is the chain of 5
// (1.96875 tokens per token-time; 6 nodes give 1.984 / 1.5), and each neighbour (4, 6, 3,
// 7 nodes) could win were its forward as cheap: 1.9375, 1.984, 1.875 and 1.992 are
// within 5 % of 1.96875. Every second drafting plan explores one, until each has been
// observed explore_until = 4 times (no decay): 16 explorations, then none.
TEST(hardware_aware_tree, explores_a_neighbouring_size_only_until_its_cost_is_measured) {
  std::vector<double> truth;
  for (std::size_t rows = 1; rows <= 9; ++rows) truth.push_back(rows <= 6 ? 1.0 : 1.5);
  const specdec::hardware_aware_tree knobs{.verify_cost = truth, .max_nodes = 8, .max_depth = 8,
                                           .max_branching = 1, .prior_table = table(8, 0.5, 0.25),
                                           .decay = 1.0, .level_drafter = false, .learn_costs = false,
                                           .target_token_seconds = 1e-3, .explore_every = 2,
                                           .explore_until = 4.0, .rival_band = 0.0};  // explorations only
  const auto explorations = [&](specdec::hardware_aware_tree p, int steps) {
    expect_plan(p.plan(), 5, 5, 1);
    std::size_t n = 0;
    for (int step = 0; step < steps; ++step) {
      const specdec::tree_plan q = p.plan();
      n += q.nodes != 5 ? 1 : 0;
      p.observe_cost({.nodes = q.nodes, .target_rows = q.nodes + 1, .target_seconds = 1e-3 * truth[q.nodes]});
    }
    return n;
  };
  EXPECT_EQ(explorations(knobs, 200), 16u);
  specdec::hardware_aware_tree always = knobs;
  always.explore_until = 1e9;
  EXPECT_EQ(explorations(always, 200), 100u);
  specdec::hardware_aware_tree never = knobs;
  never.explore_until = 0.0;
  EXPECT_EQ(explorations(never, 200), 0u);
}

// Context classes (a text index's match length), chains only, no decay: continuations of
// long matches (context >= 8) always accepted, of short ones (1-7) never, 100 times each.
// Each class learns its own table, (hits + 4 x 0.6) / (trials + 4), and plans by it: the
// longest chain after a long match (a(d, 0) = 102.4 / 104), no draft after a short one
// (a(0, 0) = 2.4 / 104: one node returns 1.023 tokens for a forward of 1.05); the class
// of context 0, never observed, keeps the prior's plan.
TEST(hardware_aware_tree, plans_each_context_class_by_its_own_acceptance) {
  specdec::hardware_aware_tree p{.verify_cost = curve(9, 0.05), .max_nodes = 8, .max_depth = 8, .max_branching = 1,
                                 .decay = 1.0, .level_drafter = false, .context_bounds = {1, 8}};
  const specdec::tree_plan before = p.plan(0);
  EXPECT_EQ(p.context_class(0), 0u);
  EXPECT_EQ(p.context_class(7), 1u);
  EXPECT_EQ(p.context_class(8), 2u);
  EXPECT_EQ(p.context_class(100), 2u);
  const specdec::token_tree chain = chain_of(8);
  const std::vector<std::size_t> all{0, 1, 2, 3, 4, 5, 6, 7}, none{};
  for (int i = 0; i < 100; ++i) {
    (void)p.plan(12);
    p.observe(chain, all);
    (void)p.plan(3);
    p.observe(chain, none);
  }
  EXPECT_NEAR(p.acceptance(0, 0, 12), 102.4 / 104, 1e-12);
  EXPECT_GT(p.acceptance(7, 0, 9), 0.98);
  EXPECT_NEAR(p.acceptance(0, 0, 3), 2.4 / 104, 1e-12);
  EXPECT_NEAR(p.acceptance(0, 0, 0), p.prior, 1e-12);
  expect_plan(p.plan(12), 8, 8, 1);
  EXPECT_EQ(p.plan(3).nodes, 0u);
  const specdec::tree_plan after = p.plan(0);
  expect_plan(after, before.nodes, before.depth, before.branching);
  // One class: the contexts share one table.
  specdec::hardware_aware_tree one{.verify_cost = curve(9, 0.05), .max_nodes = 8, .level_drafter = false};
  (void)one.plan(12);
  one.observe(chain, all);
  EXPECT_EQ(one.acceptance(0, 0, 3), one.acceptance(0, 0, 12));
  EXPECT_THROW((void)(specdec::hardware_aware_tree{.verify_cost = curve(9, 0.05), .max_nodes = 8,
                                                   .context_bounds = {4, 4}}.plan()),
               specdec::invalid_argument);
}

// The realised rates overrule the model. The free drafter of the first test (the model's
// plan: the tree {3, 2, 2}, its best chain {3, 3, 1}), its acceptance pinned (a prior that
// weighs 1e9 verdicts), no decay, no exploration. A synthetic stream commits `tokens` per
// step in `seconds`: the first 8 steps are the chain (a cold start costs no tree), the
// next 8 the tree; from then on every decision goes to the faster arm, except every 8th,
// which plays the other. Over 96 steps: a tree that commits 2 tokens in 1.2 ms against
// the chain's 2 in 1 ms runs in 8 + 80 / 8 = 18 steps; one that commits 3 tokens in
// 1.1 ms runs in 8 + 80 - 10 = 78.
TEST(hardware_aware_tree, a_tree_the_model_prefers_runs_only_while_its_realised_rate_beats_the_chain) {
  const specdec::hardware_aware_tree knobs{.verify_cost = {1.0, 1.02, 1.05, 1.1, 1.8}, .max_nodes = 4,
                                           .max_depth = 4, .max_branching = 2, .prior_table = table(4, 0.6, 0.3),
                                           .prior_weight = 1e9, .decay = 1.0, .level_drafter = false,
                                           .learn_costs = false, .replan_every = 1, .target_token_seconds = 1e-3,
                                           .learn_curve = false, .tree_margin = 0.0};
  specdec::token_tree t;
  t.add(1);
  t.add(2, 0);
  t.add(3, 1);
  const std::vector<std::size_t> one{0}, two{0, 1};
  // Runs `steps` steps; returns how many were trees, and checks every plan is one of the two.
  const auto stream = [&](specdec::hardware_aware_tree& p, int steps, double tree_seconds, bool tree_two) {
    std::size_t trees = 0;
    for (int s = 0; s < steps; ++s) {
      const specdec::tree_plan q = p.plan();
      const bool tree = q.branching > 1;
      if (tree) expect_plan(q, 3, 2, 2);
      else expect_plan(q, 3, 3, 1);
      trees += tree ? 1 : 0;
      p.observe(t, tree && tree_two ? two : one);
      p.observe_cost({.nodes = 3, .target_rows = 4, .target_seconds = tree ? tree_seconds : 1e-3});
    }
    return trees;
  };
  specdec::hardware_aware_tree slower = knobs;
  EXPECT_EQ(stream(slower, 96, 1.2e-3, false), 18u);
  // Tokens per step time in units of t(1) = 1 ms (learn_costs is off).
  EXPECT_NEAR(slower.realised_rate(false), 2.0, 1e-9);
  EXPECT_NEAR(slower.realised_rate(true), 2.0 / 1.2, 1e-9);
  specdec::hardware_aware_tree faster = knobs;
  EXPECT_EQ(stream(faster, 96, 1.1e-3, true), 78u);
  EXPECT_NEAR(faster.realised_rate(true), 3.0 / 1.1, 1e-9);
  // A tree 1 % faster than the chain is within realised_margin (2 %): it runs only in its
  // first 8 steps and the 10 rechecks.
  specdec::hardware_aware_tree close = knobs;
  EXPECT_EQ(stream(close, 96, 1e-3 / 1.01, false), 18u);
  // Without timings, or with realised_steps = 0, the model alone decides.
  specdec::hardware_aware_tree untimed = knobs;
  untimed.target_token_seconds = 0.0;
  EXPECT_EQ(stream(untimed, 20, 1.2e-3, false), 20u);
  specdec::hardware_aware_tree off = knobs;
  off.realised_steps = 0;
  EXPECT_EQ(stream(off, 20, 1.2e-3, false), 20u);
  // When the text changes, the rechecks let it change its mind: with decay 0.9 per step of
  // an arm, a tree that turns from slower to faster is back in most steps within 100.
  specdec::hardware_aware_tree changing = knobs;
  changing.decay = 0.9;
  EXPECT_LE(stream(changing, 200, 1.2e-3, false), 40u);
  (void)stream(changing, 100, 1.1e-3, true);
  EXPECT_GE(stream(changing, 40, 1.1e-3, true), 34u);
  // A stalled step counts at most twice its arm's mean: one 50 ms chain step does not
  // turn the decision to the slower tree.
  specdec::hardware_aware_tree stalled = knobs;
  EXPECT_EQ(stream(stalled, 16, 1.2e-3, false), 8u);
  stalled.observe(t, one);
  (void)stalled.plan();
  stalled.observe_cost({.nodes = 3, .target_rows = 4, .target_seconds = 50e-3});
  EXPECT_GT(stalled.realised_rate(false), stalled.realised_rate(true));
}

// Hysteresis among measured chain lengths: a(d, 0) = 0.6, verify cost 1, 1.02, 1.05, 1.1,
// 1.17, 2 (0-5 nodes), no draft cost. The chain of 3 (2.176 / 1.1 = 1.978) leads the chain
// of 4 (2.3056 / 1.17 = 1.971). Once both sizes are measured (one forward each, at its
// start-up ratio), forwards of 5 rows timed at 1.13 and then 1.0 tokens bring r(5) to
// (1.17 + 1.17 + 1.13) / 3 = 1.1567 (4 nodes: 1.993, 0.8 % above the chain of 3) and then
// to 4.47 / 4 = 1.1175 (2.063, 4.3 % above): with switch_margin = 2 % the plan stays the
// chain of 3 after the first and moves to the chain of 4 after the second; without, it
// moves at once.
TEST(hardware_aware_tree, changes_among_measured_chain_lengths_only_for_more_than_the_switch_margin) {
  std::vector<double> cost{1.0, 1.02, 1.05, 1.1, 1.17, 2.0};
  const specdec::hardware_aware_tree knobs{.verify_cost = cost, .max_nodes = 5, .max_depth = 5, .max_branching = 1,
                                           .prior_table = table(5, 0.6, 0.3), .decay = 1.0,
                                           .level_drafter = false, .learn_costs = false, .replan_every = 1,
                                           .target_token_seconds = 1e-3, .explore_every = 0, .explore_until = 1.0,
                                           .rival_band = 0.0};  // the model's plan, no rivals measured
  const auto run = [&](double margin, std::vector<double> ratios) {
    specdec::hardware_aware_tree p = knobs;
    p.switch_margin = margin;
    // Both sizes measured at their start-up ratios: the curve, and so the plan, unchanged.
    p.observe_cost({.nodes = 3, .target_rows = 4, .target_seconds = 1.1e-3});
    expect_plan(p.plan(), 3, 3, 1);
    p.observe_cost({.nodes = 4, .target_rows = 5, .target_seconds = 1.17e-3});
    expect_plan(p.plan(), 3, 3, 1);
    std::vector<std::size_t> plans;
    for (double x : ratios) {
      p.observe_cost({.nodes = 4, .target_rows = 5, .target_seconds = x * 1e-3});
      plans.push_back(p.plan().nodes);
    }
    return plans;
  };
  EXPECT_EQ(run(0.02, {1.13, 1.0}), (std::vector<std::size_t>{3, 4}));
  EXPECT_EQ(run(0.0, {1.13, 1.0}), (std::vector<std::size_t>{4, 4}));
  EXPECT_THROW((void)(specdec::hardware_aware_tree{.verify_cost = cost, .max_nodes = 5, .switch_margin = -0.1}.plan()),
               specdec::invalid_argument);
}

// A size the plan does not use is sampled only now and then, and a few dear samples must
// not price it out for good: the costs of the test above, acceptance pinned at 0.6. The
// plan is the chain of 3 (4 rows at 1.1: 1.978 tokens per token-time; the chain of 4,
// 1.971, is next). Three forwards of 4 rows timed at 1.5 make r(4) = (1.1 + 3 x 1.5) / 4
// = 1.4, yet the search prices 4 rows at 1.1 until they were observed trust_after = 8
// times; then r(4) = (1.1 + 8 x 1.5) / 9 = 1.456 and the chain of 4 is planned. With
// trust_after = 0 the three samples move the plan at once.
TEST(hardware_aware_tree, prices_a_size_at_its_start_up_ratio_until_it_was_observed_trust_after_times) {
  const specdec::hardware_aware_tree knobs{.verify_cost = {1.0, 1.02, 1.05, 1.1, 1.17, 2.0}, .max_nodes = 5,
                                           .max_depth = 5, .max_branching = 1, .prior_table = table(5, 0.6, 0.3),
                                           .decay = 1.0, .level_drafter = false, .learn_costs = false,
                                           .replan_every = 1, .target_token_seconds = 1e-3, .explore_every = 0,
                                           .explore_until = 1.0, .rival_band = 0.0};
  const auto plans = [&](double trust_after) {
    specdec::hardware_aware_tree p = knobs;
    p.trust_after = trust_after;
    std::vector<std::size_t> out{p.plan().nodes};
    for (int i = 0; i < 8; ++i) {
      p.observe_cost({.nodes = 3, .target_rows = 4, .target_seconds = 1.5e-3});
      out.push_back(p.plan().nodes);
    }
    EXPECT_NEAR(p.verify_ratio(4), (1.1 + 8 * 1.5) / 9, 1e-12);  // the learnt ratio, whatever the search reads
    return out;
  };
  EXPECT_EQ(plans(8.0), (std::vector<std::size_t>{3, 3, 3, 3, 3, 3, 3, 3, 4}));
  EXPECT_EQ(plans(0.0), (std::vector<std::size_t>{3, 4, 4, 4, 4, 4, 4, 4, 4}));
  EXPECT_THROW((void)(specdec::hardware_aware_tree{.verify_cost = knobs.verify_cost, .max_nodes = 5,
                                                   .trust_after = -1.0}.plan()),
               specdec::invalid_argument);
}

// replan_every counts steps, each told to the policy by observe (the verdicts) and
// observe_cost (the timing): a prior that makes the chain of 8 the plan, then every draft
// rejected at its root, which a search would answer with a shorter plan at once. The
// plan changes at the 8th step's plan(), not at the 4th.
TEST(hardware_aware_tree, searches_again_every_replan_every_steps) {
  specdec::hardware_aware_tree p{.verify_cost = curve(9, 0.05), .max_nodes = 8, .max_depth = 8, .max_branching = 1,
                                 .prior = 0.9, .prior_weight = 0.5, .level_drafter = false, .replan_every = 8,
                                 .target_token_seconds = 1e-3, .learn_curve = false, .realised_steps = 0,
                                 .switch_margin = 0.0};
  const std::size_t first = p.plan().nodes;
  EXPECT_EQ(first, 8u);
  std::size_t changed_at = 0;
  for (std::size_t step = 0; step < 12 && changed_at == 0; ++step) {
    const specdec::tree_plan q = p.plan();
    if (q.nodes != first) {
      changed_at = step;
      break;
    }
    p.observe(chain_of(q.nodes), std::vector<std::size_t>{});
    p.observe_cost({.nodes = q.nodes, .target_rows = q.nodes + 1, .draft_forwards = 0,
                    .target_seconds = 1e-3 * (1.0 + 0.05 * static_cast<double>(q.nodes))});
  }
  EXPECT_EQ(changed_at, 8u);
}

// Rival chain lengths measured: the costs of the test above before any forward was
// observed, acceptance pinned at 0.6 (a prior that weighs 1e9 verdicts), no decay. The
// model's best chain, 3 nodes (2.176 tokens for 1.1: 1.978), has one rival within
// rival_band = 5 %: 4 nodes (2.3056 for 1.17: 1.971; 2 nodes, 1.867, is outside). Each is
// measured for 8 steps (3 first), then each decision takes the higher expected tokens
// per measured second of step, every 8th the other one. A draft model's tokens per step
// are the model's: with 4 nodes timed at 1 ms a step and 3 at 1.1 ms, 4 runs in
// 8 + 80 - 10 = 78 of 96 steps; timed at 1.3 ms, in 8 + 10 = 18. An id-only drafter's are
// the realised ones: 3 tokens a step with 4 nodes against 2 with 3, both in 1.1 ms, 78.
TEST(hardware_aware_tree, measures_the_chain_lengths_the_model_rates_alike_and_keeps_the_faster) {
  const specdec::hardware_aware_tree knobs{.verify_cost = {1.0, 1.02, 1.05, 1.1, 1.17, 2.0}, .max_nodes = 5,
                                           .max_depth = 5, .max_branching = 1, .prior_table = table(5, 0.6, 0.3),
                                           .prior_weight = 1e9, .decay = 1.0, .learn_costs = false,
                                           .replan_every = 1, .target_token_seconds = 1e-3, .learn_curve = false,
                                           .rival_band = 0.05};
  const specdec::token_tree chain = chain_of(4);
  const std::vector<std::size_t> one{0}, two{0, 1};
  const auto stream = [&](specdec::hardware_aware_tree p, double seconds_4, bool two_with_4) {
    std::size_t fours = 0;
    for (int s = 0; s < 96; ++s) {
      const specdec::tree_plan q = p.plan();
      EXPECT_TRUE(q.nodes == 3 || q.nodes == 4) << q.nodes;
      EXPECT_EQ(q.branching, 1u);
      const bool four = q.nodes == 4;
      fours += four ? 1 : 0;
      p.observe(chain, four && two_with_4 ? two : one);
      p.observe_cost({.nodes = q.nodes, .target_rows = q.nodes + 1, .target_seconds = four ? seconds_4 : 1.1e-3});
    }
    return fours;
  };
  EXPECT_EQ(stream(knobs, 1e-3, false), 78u);
  EXPECT_EQ(stream(knobs, 1.3e-3, false), 18u);
  specdec::hardware_aware_tree off = knobs;
  off.rival_band = 0.0;
  EXPECT_EQ(stream(off, 1e-3, false), 0u);  // the model's chain of 3 alone
  specdec::hardware_aware_tree ids = knobs;
  ids.level_drafter = false;
  // 4 nodes: 3 tokens in 1.1 ms (2.73 per ms) against 3 nodes' 2 in 1.1 ms (1.82).
  EXPECT_EQ(stream(ids, 1.1e-3, true), 78u);
  // Equal tokens, 4 nodes slower: 18.
  EXPECT_EQ(stream(ids, 1.3e-3, false), 18u);
  EXPECT_THROW((void)(specdec::hardware_aware_tree{.verify_cost = curve(9, 0.1), .max_nodes = 8, .rival_band = -1.0}
                          .plan()),
               specdec::invalid_argument);
}

TEST(hardware_aware_tree, rejects_bad_knobs_with_named_values) {
  EXPECT_THROW((void)(specdec::hardware_aware_tree{.verify_cost = curve(17, 0.1), .max_nodes = 0}.plan()),
               specdec::invalid_argument);
  EXPECT_THROW((void)(specdec::hardware_aware_tree{.verify_cost = curve(4, 0.1), .max_nodes = 16}.plan()),
               specdec::invalid_argument);
  EXPECT_THROW((void)(specdec::hardware_aware_tree{.verify_cost = {1.0, -1.0}, .max_nodes = 1}.plan()),
               specdec::invalid_argument);
  EXPECT_THROW((void)(specdec::hardware_aware_tree{.verify_cost = curve(17, 0.1), .draft_cost = -1.0}.plan()),
               specdec::invalid_argument);
  EXPECT_THROW((void)(specdec::hardware_aware_tree{.verify_cost = curve(17, 0.1), .prior = 1.0}.plan()),
               specdec::invalid_argument);
  EXPECT_THROW((void)(specdec::hardware_aware_tree{.verify_cost = curve(17, 0.1), .max_depth = 0}.plan()),
               specdec::invalid_argument);
  EXPECT_THROW((void)(specdec::hardware_aware_tree{.verify_cost = curve(17, 0.1), .prior_table = {{0.5, 1.5}}}.plan()),
               specdec::invalid_argument);
  EXPECT_THROW((void)(specdec::hardware_aware_tree{.verify_cost = curve(17, 0.1), .decay = 0.0}.plan()),
               specdec::invalid_argument);
  EXPECT_THROW((void)(specdec::hardware_aware_tree{.verify_cost = curve(5, 0.1), .max_nodes = 4}.rate(5, 1)),
               specdec::invalid_argument);
  EXPECT_THROW((void)(specdec::hardware_aware_tree{.verify_cost = curve(5, 0.1), .max_nodes = 4}.rate(2, 0)),
               specdec::invalid_argument);
  try {
    (void)specdec::hardware_aware_tree{.verify_cost = curve(17, 0.1), .prior_table = {{0.5, 1.5}}}.plan();
  } catch (const specdec::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("prior_table[0][1]"), std::string::npos) << e.what();
  }
}

TEST(measure_tree_policy, fills_the_curve_from_the_models_and_leaves_their_caches) {
  specdec::testing::markov_model target({.vocab = 8, .seed = 1}), draft({.vocab = 8, .seed = 1});
  const auto p = specdec::measure_tree_policy(target, draft, {.max_nodes = 6}, {.position = 4, .repeats = 1});
  EXPECT_EQ(p.verify_cost.size(), 7u);
  EXPECT_GT(p.draft_cost, 0.0);
  EXPECT_GT(p.target_token_seconds, 0.0);
  EXPECT_TRUE(p.level_drafter);
  for (std::size_t n = 1; n < p.verify_cost.size(); ++n) EXPECT_GE(p.verify_cost[n], p.verify_cost[n - 1]) << n;
  EXPECT_NO_THROW((void)p.plan());
  EXPECT_EQ(target.cache_length(), 0u);
  EXPECT_EQ(draft.cache_length(), 0u);
  const auto text = specdec::measure_tree_policy(target, {.max_nodes = 6}, {.position = 4, .repeats = 1});
  EXPECT_FALSE(text.level_drafter);
  EXPECT_EQ(text.draft_cost, 0.0);
}
