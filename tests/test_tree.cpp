// Tests for include/specdec/tree.hpp: the token_tree value type, the tree_model concept
// (positive and near-miss types), measure_verify_cost, and the public tree-model contract
// (specdec/testing/contracts.hpp) on the markov archetype and on the CPU transformer in
// several weight formats, KV formats and thread counts.
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/testing/archetypes.hpp"
#include "specdec/testing/contracts.hpp"
#include "specdec/tree.hpp"

namespace {
using specdec::no_parent;
using specdec::token_id;
using specdec::token_tree;
using specdec::cpu::weight_format;

// An order-2 markov model: a node's logits read its parent's token too.
struct markov2 : specdec::testing::markov_model {
  markov2() : markov_model({.vocab = 7, .order = 2, .seed = 5, .context = 64}) {}
};

// A transformer over a bundled checkpoint (loaded once per test binary) in one weight
// format, KV format and thread count: one type per configuration, for the typed suite.
constexpr const char stories[] = "stories260K";
constexpr const char kjv_little[] = "kjv-little";
template <const char* Model>
std::shared_ptr<const specdec::cpu::checkpoint> checkpoint_of() {
  static const auto ck = std::make_shared<const specdec::cpu::checkpoint>(
      specdec::cpu::load_checkpoint(std::string(SPECDEC_MODELS_DIR) + "/" + Model + ".bin"));
  return ck;
}
template <const char* Model, weight_format Weights, weight_format Kv, std::size_t Threads>
struct configured : specdec::cpu::transformer {
  configured() : transformer(checkpoint_of<Model>(), {.threads = Threads, .format = Weights, .kv_format = Kv}) {}
};
}  // namespace

SPECDEC_TREE_MODEL_CONTRACT_TESTS(archetypes, specdec::testing::markov_model, markov2);
SPECDEC_TREE_MODEL_CONTRACT_TESTS(
    cpu, configured<stories, weight_format::fp32, weight_format::fp32, 1>,
    configured<stories, weight_format::fp32, weight_format::bf16, 2>,
    configured<kjv_little, weight_format::w8a8, weight_format::bf16, 2>,
    configured<kjv_little, weight_format::bf16, weight_format::fp16, 1>,
    configured<kjv_little, weight_format::q8_0, weight_format::fp32, 2>);

namespace {

// ---- the concept: positive and near-miss types ----
struct base_model {
  std::size_t vocab_size() const { return 2; }
  std::size_t context_length() const { return 2; }
  std::size_t cache_length() const { return 0; }
  specdec::logits_block forward(std::span<const token_id>) { return {}; }
  void truncate(std::size_t) {}
};
struct full_tree : base_model {
  specdec::logits_block forward_tree(std::span<const token_id>, std::span<const std::int32_t>) { return {}; }
  void keep_path(std::span<const std::size_t>) {}
};
struct no_keep_path : base_model {
  specdec::logits_block forward_tree(std::span<const token_id>, std::span<const std::int32_t>) { return {}; }
};
struct no_tree_forward : base_model {
  void keep_path(std::span<const std::size_t>) {}
};
struct tree_forward_wrong_result : base_model {
  std::vector<float> forward_tree(std::span<const token_id>, std::span<const std::int32_t>) { return {}; }
  void keep_path(std::span<const std::size_t>) {}
};
struct tree_forward_wrong_parents : base_model {  // parents as size_t: no room for -1
  specdec::logits_block forward_tree(std::span<const token_id>, std::span<const std::size_t>) { return {}; }
  void keep_path(std::span<const std::size_t>) {}
};
struct tree_without_chain {  // tree members but not a language_model (no truncate)
  std::size_t vocab_size() const { return 2; }
  std::size_t context_length() const { return 2; }
  std::size_t cache_length() const { return 0; }
  specdec::logits_block forward(std::span<const token_id>) { return {}; }
  specdec::logits_block forward_tree(std::span<const token_id>, std::span<const std::int32_t>) { return {}; }
  void keep_path(std::span<const std::size_t>) {}
};

static_assert(specdec::tree_model<full_tree>);
static_assert(specdec::tree_model<specdec::testing::markov_model>);
static_assert(specdec::tree_model<specdec::cpu::transformer>);
static_assert(!specdec::tree_model<base_model>);
static_assert(!specdec::tree_model<no_keep_path>);
static_assert(specdec::has_tree_forward<no_keep_path> && !specdec::has_keep_path<no_keep_path>);
static_assert(!specdec::tree_model<no_tree_forward>);
static_assert(!specdec::has_tree_forward<no_tree_forward> && specdec::has_keep_path<no_tree_forward>);
static_assert(!specdec::has_tree_forward<tree_forward_wrong_result>);
static_assert(!specdec::has_tree_forward<tree_forward_wrong_parents>);
static_assert(!specdec::tree_model<tree_without_chain>);
static_assert(specdec::has_tree_forward<tree_without_chain> && specdec::has_keep_path<tree_without_chain>);
static_assert(!specdec::tree_model<specdec::testing::minimal_model>);  // a language_model without trees

// ---- token_tree ----
TEST(token_tree, depths_paths_children_and_roots) {
  //  0 -> 1 -> 3
  //    -> 2
  //  4 -> 5 -> 6 -> 7
  token_tree t({10, 11, 12, 13, 14, 15, 16, 17}, {-1, 0, 0, 1, -1, 4, 5, 6});
  EXPECT_EQ(t.size(), 8u);
  EXPECT_EQ(t.height(), 4u);
  const std::vector<std::size_t> depths{0, 1, 1, 2, 0, 1, 2, 3};
  for (std::size_t i = 0; i < t.size(); ++i) EXPECT_EQ(t.depth(i), depths[i]) << "node " << i;
  EXPECT_EQ(t.path_to(3), (std::vector<std::size_t>{0, 1, 3}));
  EXPECT_EQ(t.path_to(7), (std::vector<std::size_t>{4, 5, 6, 7}));
  EXPECT_EQ(t.path_to(4), (std::vector<std::size_t>{4}));
  EXPECT_EQ(t.path_tokens(3), (std::vector<token_id>{10, 11, 13}));
  EXPECT_EQ(t.children(0), (std::vector<std::size_t>{1, 2}));
  EXPECT_TRUE(t.children(3).empty());
  EXPECT_EQ(t.roots(), (std::vector<std::size_t>{0, 4}));
  EXPECT_TRUE(t.is_path(t.path_to(7)));
  EXPECT_TRUE(t.is_path(std::vector<std::size_t>{}));
  EXPECT_TRUE(t.is_path(std::vector<std::size_t>{0, 2}));
  EXPECT_FALSE(t.is_path(std::vector<std::size_t>{1, 3}));     // does not start at a root
  EXPECT_FALSE(t.is_path(std::vector<std::size_t>{0, 3}));     // skips node 1
  EXPECT_FALSE(t.is_path(std::vector<std::size_t>{0, 1, 8}));  // no node 8
  // add() numbers nodes in order; truncate keeps a prefix, which is a tree again.
  EXPECT_EQ(t.add(18, 3), 8u);
  EXPECT_EQ(t.depth(8), 3u);
  t.truncate(5);
  EXPECT_EQ(t.size(), 5u);
  EXPECT_EQ(t.height(), 3u);
  t.clear();
  EXPECT_TRUE(t.empty());
  EXPECT_EQ(t.height(), 0u);
}

TEST(token_tree, rejects_malformed_topology_paths_and_ids_with_named_values) {
  const auto message = [](auto&& f) -> std::string {
    try {
      f();
    } catch (const specdec::invalid_argument& e) {
      return e.what();
    }
    return "no invalid_argument";
  };
  EXPECT_NE(message([] { token_tree({1, 2}, {-1}); }).find("2 tokens but 1 parents"), std::string::npos);
  EXPECT_NE(message([] { token_tree({1, 2}, {-1, 1}); }).find("parents[1] = 1"), std::string::npos);
  EXPECT_NE(message([] { token_tree({1, 2}, {-1, -3}); }).find("parents[1] = -3"), std::string::npos);
  token_tree t({1, 2, 3}, {-1, 0, 0});
  EXPECT_NE(message([&] { t.add(4, 3); }).find("parents[0] = 3"), std::string::npos);
  EXPECT_EQ(t.size(), 3u) << "a rejected add leaves the tree unchanged";
  EXPECT_NE(message([&] { t.check_path(std::vector<std::size_t>{0, 2, 1}, "me"); }).find("me: path[2] = 1"),
            std::string::npos);
  EXPECT_NE(message([&] { t.check_path(std::vector<std::size_t>{1}, "me"); }).find("expected a root"),
            std::string::npos);
  EXPECT_NE(message([&] { (void)t.depth(3); }).find("node 3 does not exist"), std::string::npos);
  EXPECT_NE(message([&] { (void)t.children(7); }).find("node 7"), std::string::npos);
  EXPECT_THROW(t.check_tokens(3), specdec::token_out_of_range);  // token 3 with vocab 3
  EXPECT_NO_THROW(t.check_tokens(4));
}

// ---- the CPU transformer beyond the contract ----
TEST(transformer_tree, a_chain_shaped_tree_equals_a_block_forward_and_deep_paths_compact_exactly) {
  // A chain-shaped tree is a block forward; and a long path kept from the middle of a
  // wide tree lands at the right positions in a 16-bit cache (the copies are of stored
  // bits).
  using model = configured<kjv_little, weight_format::fp32, weight_format::bf16, 2>;
  model tree_model, chain_model;
  const auto prefix = specdec::testing::some_tokens(tree_model.vocab_size(), 20, 3);
  const auto chain = specdec::testing::some_tokens(tree_model.vocab_size(), 12, 4);
  std::vector<std::int32_t> parents(chain.size());
  for (std::size_t i = 0; i < parents.size(); ++i) parents[i] = static_cast<std::int32_t>(i) - 1;
  (void)tree_model.forward(prefix);
  (void)chain_model.forward(prefix);
  const auto tree_rows = specdec::testing::copy_rows(tree_model.forward_tree(chain, parents));
  const auto chain_rows = specdec::testing::copy_rows(chain_model.forward(chain));
  EXPECT_TRUE(specdec::testing::same_bits(tree_rows, chain_rows));
  std::vector<std::size_t> all(chain.size());
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
  tree_model.keep_path(all);  // nothing moves
  EXPECT_EQ(tree_model.cache_length(), prefix.size() + chain.size());

  // A wide tree: 3 decoys under every node of a 10-deep spine, spine nodes last.
  token_tree t;
  std::int32_t up = no_parent;
  std::vector<std::size_t> spine;
  for (std::size_t d = 0; d < 10; ++d) {
    for (token_id decoy = 0; decoy < 3; ++decoy) t.add(decoy + 7, up);
    spine.push_back(t.add(chain[d], up));
    up = static_cast<std::int32_t>(spine.back());
  }
  tree_model.truncate(prefix.size());
  (void)tree_model.forward_tree(t.tokens(), t.parents());
  tree_model.keep_path(spine);
  const auto next = specdec::testing::some_tokens(tree_model.vocab_size(), 3, 5);
  const auto got = specdec::testing::copy_rows(tree_model.forward(next));
  chain_model.truncate(prefix.size() + 10);
  const auto want = specdec::testing::copy_rows(chain_model.forward(next));
  EXPECT_TRUE(specdec::testing::same_bits(got, want));
}

// ---- measure_verify_cost ----
TEST(measure_verify_cost, times_every_size_and_leaves_the_cache_as_it_was) {
  using model = configured<stories, weight_format::fp32, weight_format::fp32, 1>;
  model m;
  const auto prompt = specdec::testing::some_tokens(m.vocab_size(), 5, 6);
  (void)m.forward(prompt);
  const auto before = specdec::testing::copy_rows(specdec::forward_one(m, 3));
  m.truncate(prompt.size());
  const specdec::verify_cost_curve c = specdec::measure_verify_cost(m, 4, {.position = 16, .repeats = 2});
  ASSERT_EQ(c.chain.size(), 4u);
  ASSERT_EQ(c.tree.size(), 4u);
  for (std::size_t n = 1; n <= 4; ++n) {
    EXPECT_GT(c.chain[n - 1], 0.0) << n;
    EXPECT_GT(c.tree[n - 1], 0.0) << n;
  }
  EXPECT_EQ(c.chain_ratio(1), 1.0);
  EXPECT_EQ(m.cache_length(), prompt.size());
  EXPECT_TRUE(specdec::testing::same_bits(specdec::testing::copy_rows(specdec::forward_one(m, 3)), before));
  // Chain blocks only: no tree is timed, and a tree ratio is refused, not read past the end.
  const std::size_t held = m.cache_length();
  const specdec::verify_cost_curve chains =
      specdec::measure_verify_cost(m, 4, {.position = 16, .repeats = 2, .trees = false});
  ASSERT_EQ(chains.chain.size(), 4u);
  EXPECT_TRUE(chains.tree.empty());
  for (std::size_t n = 1; n <= 4; ++n) EXPECT_GT(chains.chain[n - 1], 0.0) << n;
  EXPECT_THROW((void)chains.tree_ratio(1), specdec::invalid_argument);
  EXPECT_EQ(m.cache_length(), held);
  EXPECT_THROW((void)specdec::measure_verify_cost(m, 0), specdec::invalid_argument);
  EXPECT_THROW((void)specdec::measure_verify_cost(m, 4, {.repeats = 0}), specdec::invalid_argument);
  EXPECT_THROW((void)specdec::measure_verify_cost(m, 4, {.position = m.context_length()}), specdec::context_overflow);
}

}  // namespace
