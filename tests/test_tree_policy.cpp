// Tests for include/specdec/tree_policy.hpp: fixed_tree's knobs; hardware_aware_tree
// picks a bushy tree where verifying many nodes is nearly free, a chain where siblings
// are rarely accepted, no draft where every extra token costs a full forward; it learns
// acceptance per depth and rank from verdicts; measure_tree_policy fills the curve from
// the models; bad knobs (a zero budget among them) get clear errors.
#include <gtest/gtest.h>

#include <vector>

#include "specdec/testing/archetypes.hpp"
#include "specdec/tree_policy.hpp"

namespace {
static_assert(specdec::tree_sizing_policy<specdec::fixed_tree>);
static_assert(specdec::tree_sizing_policy<specdec::hardware_aware_tree>);

std::vector<double> curve(std::size_t n, double per_token) {
  std::vector<double> c;
  for (std::size_t i = 0; i < n; ++i) c.push_back(1.0 + per_token * static_cast<double>(i));
  return c;
}

// A tree where node 0 (rank 0 root) is accepted, then its rank-0 child.
specdec::token_tree two_level() {
  specdec::token_tree t;
  t.add(1);         // 0: rank 0, depth 0
  t.add(2);         // 1: rank 1, depth 0
  t.add(3, 0);      // 2: rank 0, depth 1
  t.add(4, 0);      // 3: rank 1, depth 1
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

TEST(hardware_aware_tree, sizes_the_tree_to_the_verify_cost) {
  // Nearly free verification: a tree, as large as allowed, bushier than a chain.
  specdec::hardware_aware_tree cheap{.verify_cost = curve(17, 0.01), .max_nodes = 16, .max_depth = 6};
  const auto p = cheap.plan();
  EXPECT_EQ(p.nodes, 16u);
  EXPECT_GT(p.branching, 1u);
  EXPECT_LE(p.depth, 6u);
  // Each extra token costs a whole forward: drafting never pays.
  specdec::hardware_aware_tree dear{.verify_cost = curve(17, 1.0), .max_nodes = 16};
  EXPECT_EQ(dear.plan().nodes, 0u);
  // A dear draft model: drafting does not pay either.
  specdec::hardware_aware_tree slow_draft{.verify_cost = curve(17, 0.01), .draft_cost = 2.0, .max_nodes = 16};
  EXPECT_EQ(slow_draft.plan().nodes, 0u);
  // Siblings never accepted, first children always: a chain.
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
  // The modelled rate of the chosen plan is no worse than a chain's or no draft's.
  EXPECT_GE(learnt.rate(c.nodes, c.branching), learnt.rate(0, 1));
  learnt.reset();
  EXPECT_NEAR(learnt.acceptance(0, 0), learnt.prior, 1e-12);
}

TEST(hardware_aware_tree, rejects_bad_knobs_with_named_values) {
  EXPECT_THROW((specdec::hardware_aware_tree{.verify_cost = curve(17, 0.1), .max_nodes = 0}.plan()),
               specdec::invalid_argument);
  EXPECT_THROW((specdec::hardware_aware_tree{.verify_cost = curve(4, 0.1), .max_nodes = 16}.plan()),
               specdec::invalid_argument);
  EXPECT_THROW((specdec::hardware_aware_tree{.verify_cost = {1.0, -1.0}, .max_nodes = 1}.plan()),
               specdec::invalid_argument);
  EXPECT_THROW((specdec::hardware_aware_tree{.verify_cost = curve(17, 0.1), .draft_cost = -1.0}.plan()),
               specdec::invalid_argument);
  EXPECT_THROW((specdec::hardware_aware_tree{.verify_cost = curve(17, 0.1), .prior = 1.0}.plan()),
               specdec::invalid_argument);
  EXPECT_THROW((specdec::hardware_aware_tree{.verify_cost = curve(17, 0.1), .max_depth = 0}.plan()),
               specdec::invalid_argument);
  EXPECT_THROW((void)(specdec::hardware_aware_tree{.verify_cost = curve(5, 0.1), .max_nodes = 4}.rate(5, 1)),
               specdec::invalid_argument);
  EXPECT_THROW((void)(specdec::hardware_aware_tree{.verify_cost = curve(5, 0.1), .max_nodes = 4}.rate(2, 0)),
               specdec::invalid_argument);
}

TEST(measure_tree_policy, fills_the_curve_from_the_models_and_leaves_their_caches) {
  specdec::testing::markov_model target({.vocab = 8, .seed = 1}), draft({.vocab = 8, .seed = 1});
  const auto p = specdec::measure_tree_policy(target, draft, {.max_nodes = 6}, {.position = 4, .repeats = 1});
  EXPECT_EQ(p.verify_cost.size(), 7u);
  EXPECT_GT(p.draft_cost, 0.0);
  EXPECT_GT(p.target_token_seconds, 0.0);
  EXPECT_NO_THROW((void)p.plan());
  EXPECT_EQ(target.cache_length(), 0u);
  EXPECT_EQ(draft.cache_length(), 0u);
}
