// Tests for include/specdec/tree_drafter.hpp: the text index proposes the repeated
// continuations of a repetitive sequence as branches of one trie within the request's
// limits; the model drafter expands best-first (top-k when greedy, children drawn without
// replacement with their q rows when sampling), keeps the accepted path in the draft's
// cache; the combined drafter never repeats a sibling; bad input gets clear errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

#include "specdec/testing/archetypes.hpp"
#include "specdec/testing/contracts.hpp"
#include "specdec/tree_drafter.hpp"

namespace {
using specdec::token_id;
using specdec::testing::markov_model;

static_assert(specdec::tree_drafter<specdec::text_index_drafter>);
static_assert(specdec::tree_drafter<specdec::model_tree_drafter<markov_model>>);
static_assert(specdec::tree_drafter<specdec::combined_tree_drafter<markov_model>>);
static_assert(!specdec::tree_drafter<markov_model>);

std::vector<token_id> tokens_of(const specdec::token_tree& t, const std::vector<std::size_t>& nodes) {
  std::vector<token_id> out;
  for (std::size_t n : nodes) out.push_back(t.token(n));
  return out;
}

// Every node's children carry distinct tokens.
bool siblings_distinct(const specdec::token_tree& t) {
  for (std::size_t n = 0; n <= t.size(); ++n) {
    const auto kids = n == 0 ? t.roots() : t.children(n - 1);
    std::set<token_id> seen;
    for (std::size_t k : kids)
      if (!seen.insert(t.token(k)).second) return false;
  }
  return true;
}
}  // namespace

// The public tree-drafter contract on the three shipped drafters.
namespace {
markov_model& contract_draft() {
  static markov_model m({.vocab = 12, .order = 2, .seed = 4});
  return m;
}
}  // namespace
template <>
struct specdec::testing::tree_drafter_factory<specdec::text_index_drafter> {
  static specdec::text_index_drafter make() { return specdec::text_index_drafter(12); }
};
template <>
struct specdec::testing::tree_drafter_factory<specdec::model_tree_drafter<markov_model>> {
  static specdec::model_tree_drafter<markov_model> make() {
    return specdec::model_tree_drafter<markov_model>(contract_draft());
  }
};
template <>
struct specdec::testing::tree_drafter_factory<specdec::combined_tree_drafter<markov_model>> {
  static specdec::combined_tree_drafter<markov_model> make() {
    return specdec::combined_tree_drafter<markov_model>(contract_draft());
  }
};
SPECDEC_TREE_DRAFTER_CONTRACT_TESTS(shipped, specdec::text_index_drafter, specdec::model_tree_drafter<markov_model>,
                                    specdec::combined_tree_drafter<markov_model>);

TEST(text_index_drafter, proposes_the_repeated_continuations_as_branches) {
  // "10 11 12 13" is followed once by 20 and later by 21; S ends in "10 11".
  const std::vector<token_id> s{1, 10, 11, 12, 13, 20, 10, 11, 12, 13, 21, 10, 11};
  specdec::text_index_drafter lookup(32);
  const specdec::token_tree& t = lookup.propose(s, {.max_nodes = 16, .max_depth = 5, .branching = 3});
  ASSERT_EQ(t.roots().size(), 1u);
  const std::size_t r = t.roots()[0];
  EXPECT_EQ(t.token(r), 12);
  const auto after12 = t.children(r);
  ASSERT_EQ(after12.size(), 1u);
  EXPECT_EQ(t.token(after12[0]), 13);
  const auto after13 = t.children(after12[0]);
  ASSERT_EQ(after13.size(), 2u);
  EXPECT_EQ(t.token(after13[0]), 21);  // the most recent occurrence first
  EXPECT_EQ(t.token(after13[1]), 20);
  EXPECT_EQ(t.path_tokens(t.children(after13[1]).at(0)), (std::vector<token_id>{12, 13, 20, 10}));
  EXPECT_TRUE(siblings_distinct(t));
  EXPECT_EQ(lookup.indexed(), s.size());

  // The request's limits.
  EXPECT_EQ(lookup.propose(s, {.max_nodes = 3, .max_depth = 5, .branching = 3}).size(), 3u);
  EXPECT_EQ(lookup.propose(s, {.max_nodes = 16, .max_depth = 2, .branching = 3}).height(), 2u);
  const specdec::token_tree& chain = lookup.propose(s, {.max_nodes = 16, .max_depth = 5, .branching = 1});
  EXPECT_EQ(tokens_of(chain, chain.path_to(chain.size() - 1)), (std::vector<token_id>{12, 13, 21, 10, 11}));
  EXPECT_TRUE(lookup.propose(s, {.max_nodes = 0, .max_depth = 5}).empty());

  // Nothing repeats: nothing proposed. A sequence that does not extend the index re-indexes.
  const std::vector<token_id> fresh{1, 2, 3, 4};
  EXPECT_TRUE(lookup.propose(fresh, {.max_nodes = 8, .max_depth = 4, .branching = 2}).empty());
  EXPECT_EQ(lookup.indexed(), fresh.size());
  // As a tree_drafter: deterministic nodes, no q.
  specdec::random_source rng(1);
  const specdec::tree_draft& d = lookup.draft(s, {.max_nodes = 6, .max_depth = 4, .branching = 2}, {}, rng);
  EXPECT_EQ(d.position, s.size());
  EXPECT_FALSE(d.has_distributions());
  EXPECT_TRUE(std::ranges::all_of(d.sampled, [](std::uint8_t f) { return f == 0; }));
}

static_assert(specdec::context_drafter<specdec::text_index_drafter>);

// The match is measured beyond max_ngram, the furthest-reaching occurrence comes first,
// and a continuation that runs into the end of S repeats the loop it found.
TEST(text_index_drafter, measures_its_match_and_continues_a_loop_past_the_end) {
  specdec::text_index_drafter lookup(32, {.max_ngram = 2});
  // "5 6" occurs twice before the end: the first occurrence agrees with the end 3 tokens
  // back (3 5 6), the more recent one only 2 (7 5 6).
  const std::vector<token_id> s{1, 3, 5, 6, 8, 9, 7, 5, 6, 4, 2, 3, 5, 6};
  EXPECT_EQ(lookup.context(s), 3u);
  const specdec::token_tree& t = lookup.propose(s, {.max_nodes = 8, .max_depth = 3, .branching = 2});
  ASSERT_EQ(t.roots().size(), 2u);
  EXPECT_EQ(t.token(t.roots()[0]), 8);  // the furthest-reaching match's continuation first
  EXPECT_EQ(t.token(t.roots()[1]), 4);
  // A loop of period 3: the chain goes round it, past the end of S.
  const std::vector<token_id> loop{1, 5, 6, 7, 5, 6, 7, 5, 6};
  EXPECT_EQ(lookup.context(loop), 5u);
  const specdec::token_tree& c = lookup.propose(loop, {.max_nodes = 7, .max_depth = 7, .branching = 1});
  EXPECT_EQ(c.path_tokens(c.size() - 1), (std::vector<token_id>{7, 5, 6, 7, 5, 6, 7}));
  // max_match caps the measurement; nothing repeats: 0.
  specdec::text_index_drafter capped(32, {.max_ngram = 2, .max_match = 2});
  EXPECT_EQ(capped.context(loop), 2u);
  EXPECT_EQ(lookup.context(std::vector<token_id>{1, 2, 3}), 0u);
  EXPECT_THROW(specdec::text_index_drafter(8, {.max_ngram = 4, .max_match = 3}), specdec::invalid_argument);
}

TEST(text_index_drafter, rejects_bad_options_requests_and_ids) {
  EXPECT_THROW(specdec::text_index_drafter(0), specdec::invalid_argument);
  EXPECT_THROW(specdec::text_index_drafter(8, {.max_ngram = 2, .min_ngram = 0}), specdec::invalid_argument);
  EXPECT_THROW(specdec::text_index_drafter(8, {.max_ngram = 1, .min_ngram = 2}), specdec::invalid_argument);
  EXPECT_THROW(specdec::text_index_drafter(8, {.max_matches = 0}), specdec::invalid_argument);
  specdec::text_index_drafter lookup(8);
  const std::vector<token_id> s{1, 2, 1, 2};
  EXPECT_THROW(lookup.propose(s, {.max_nodes = 4, .max_depth = 2, .branching = 0}), specdec::invalid_argument);
  EXPECT_THROW(lookup.propose(std::vector<token_id>{1, 8}, {.max_nodes = 4, .max_depth = 2}),
               specdec::token_out_of_range);
}

TEST(model_tree_drafter, greedy_expands_the_top_k_best_first_within_the_limits) {
  markov_model draft({.vocab = 10, .order = 2, .seed = 6});
  specdec::model_tree_drafter md(draft);
  md.reset();
  specdec::random_source rng(1);
  const std::vector<token_id> s{1, 4, 2};
  const specdec::tree_draft& d = md.draft(s, {.max_nodes = 9, .max_depth = 3, .branching = 3}, {}, rng);
  EXPECT_EQ(d.size(), 9u);
  EXPECT_LE(d.tree.height(), 3u);
  EXPECT_TRUE(siblings_distinct(d.tree));
  EXPECT_FALSE(d.has_distributions());
  // The roots are the draft's most likely tokens after S, best first.
  const auto l = draft.logits_after(s);
  std::vector<token_id> order(10);
  for (int i = 0; i < 10; ++i) order[static_cast<std::size_t>(i)] = i;
  std::ranges::stable_sort(order, [&](token_id a, token_id b) { return l[std::size_t(a)] > l[std::size_t(b)]; });
  const auto roots = d.tree.roots();
  ASSERT_GE(roots.size(), 1u);
  ASSERT_LE(roots.size(), 3u);
  for (std::size_t i = 0; i < roots.size(); ++i) EXPECT_EQ(d.tree.token(roots[i]), order[i]);
  for (std::size_t n = 0; n < d.size(); ++n) EXPECT_LE(d.tree.children(n).size(), 3u);
  // Draft forwards: one per level at most (the first also feeds S).
  EXPECT_LE(d.forwards, 3u);
  // The draft's cache keeps S and the accepted path as far as it forwarded it.
  const auto leaf = d.tree.path_to(d.size() - 1);
  std::vector<std::size_t> path(leaf.begin(), leaf.end());
  md.accept(path);
  EXPECT_GE(draft.cache_length(), s.size());
  EXPECT_LE(draft.cache_length(), s.size() + path.size());
  const std::size_t kept = draft.cache_length() - s.size();
  EXPECT_EQ(tokens_of(d.tree, std::vector<std::size_t>(path.begin(), path.begin() + kept)),
            std::vector<token_id>(draft.history().begin() + static_cast<std::ptrdiff_t>(s.size()),
                                  draft.history().end()));
  // A zero budget drafts nothing and forwards nothing.
  std::vector<token_id> s2 = s;
  for (std::size_t n : path) s2.push_back(d.tree.token(n));
  s2.push_back(0);
  const std::size_t before = draft.cache_length();
  EXPECT_TRUE(md.draft(s2, {.max_nodes = 0, .max_depth = 3}, {}, rng).empty());
  EXPECT_EQ(draft.cache_length(), before);
  md.sync(s2);
  EXPECT_EQ(draft.cache_length(), s2.size() - 1);
  EXPECT_THROW(md.draft(s2, {.max_nodes = 4, .max_depth = 3, .branching = 0}, {}, rng), specdec::invalid_argument);
  EXPECT_THROW(md.draft(std::vector<token_id>{}, {.max_nodes = 4, .max_depth = 3}, {}, rng),
               specdec::invalid_argument);
}

TEST(model_tree_drafter, the_greedy_row_normaliser_matches_the_libm_sum) {
  // Vocabularies with and without a 16-lane tail, logits spread over 0..-100 (the floor
  // at exp(-87) included), against the double-precision sum.
  std::mt19937 gen(5);
  std::uniform_real_distribution<float> u(-100.0f, 0.0f);
  for (const std::size_t n : {1u, 15u, 16u, 37u, 512u, 2048u}) {
    std::vector<float> v(n);
    for (float& x : v) x = u(gen);
    v[n / 2] = 3.5f;
    double exact = 0.0;
    for (float x : v) exact += std::exp(std::max(static_cast<double>(x) - 3.5, -87.0));
    EXPECT_NEAR(specdec::detail::sum_exp_below(v, 3.5f), exact, 1e-6 * exact) << n;
  }
  EXPECT_NEAR(specdec::detail::sum_exp_below(std::vector<float>(16, 0.0f), 0.0f), 16.0, 1e-5);
}

TEST(model_tree_drafter, a_greedy_chain_is_the_drafts_own_greedy_continuation) {
  // Branching 1, greedy: the chain the chain engine drafts (each row's argmax), one draft
  // forward per token but the last; with more nodes than the depth it stays one chain.
  markov_model draft({.vocab = 10, .order = 2, .seed = 6});
  specdec::model_tree_drafter md(draft);
  specdec::random_source rng(1);
  for (const std::size_t nodes : {5u, 9u}) {
    md.reset();
    std::vector<token_id> seq{1, 4, 2};
    const specdec::tree_draft& d = md.draft(seq, {.max_nodes = nodes, .max_depth = 5, .branching = 1}, {}, rng);
    ASSERT_EQ(d.size(), 5u);
    EXPECT_EQ(d.tree.height(), 5u);
    EXPECT_EQ(d.forwards, 5u);
    // The first forward's time is reported apart, as a part of the five's.
    EXPECT_GT(d.first_seconds, 0.0);
    EXPECT_LT(d.first_seconds, d.seconds);
    for (std::size_t n = 0; n < d.size(); ++n) {
      const auto l = draft.logits_after(seq);
      const auto best = static_cast<token_id>(std::ranges::max_element(l) - l.begin());
      EXPECT_EQ(d.tree.token(n), best) << "node " << n;
      EXPECT_EQ(d.tree.parent(n), static_cast<std::int32_t>(n) - 1);
      seq.push_back(best);
    }
  }
}

TEST(model_tree_drafter, reports_the_committed_tokens_its_first_forward_caught_up_on) {
  // context_rows: the committed tokens the first forward took before the tree: the whole
  // prompt at the start, 1 after a step whose chain was accepted up to a forwarded node
  // (the next token only), 2 after one accepted to its unforwarded leaf, and every token
  // committed since the last draft after steps that drafted nothing.
  markov_model draft({.vocab = 10, .order = 2, .seed = 6});
  specdec::model_tree_drafter md(draft);
  specdec::random_source rng(1);
  const specdec::tree_request chain{.max_nodes = 3, .max_depth = 3, .branching = 1};
  std::vector<token_id> seq{1, 4, 2};
  const specdec::tree_draft* d = &md.draft(seq, chain, {}, rng);
  EXPECT_EQ(d->context_rows, 3u);
  // The first node accepted (it was forwarded), then the target's next token.
  seq.push_back(d->tree.token(0));
  md.accept(std::vector<std::size_t>{0});
  seq.push_back(7);
  d = &md.draft(seq, chain, {}, rng);
  EXPECT_EQ(d->context_rows, 1u);
  // All three accepted: the leaf was never forwarded.
  for (std::size_t n = 0; n < 3; ++n) seq.push_back(d->tree.token(n));
  md.accept(std::vector<std::size_t>{0, 1, 2});
  seq.push_back(3);
  d = &md.draft(seq, chain, {}, rng);
  EXPECT_EQ(d->context_rows, 2u);
  md.accept({});  // the first node rejected: the target's token instead
  seq.push_back(4);
  // Three steps that drafted nothing, each committing the target's token.
  for (token_id t : {5, 6, 8}) {
    seq.push_back(t);
    d = &md.draft(seq, {.max_nodes = 0, .max_depth = 0, .branching = 1}, {}, rng);
    EXPECT_EQ(d->context_rows, 0u);
    md.accept({});
  }
  seq.push_back(9);
  d = &md.draft(seq, chain, {}, rng);
  EXPECT_EQ(d->context_rows, 5u);  // the rejected step's next token, three undrafted steps' and this one's
}

TEST(model_tree_drafter, sampling_draws_children_without_replacement_and_records_their_q_rows) {
  markov_model draft({.vocab = 5, .seed = 2});
  specdec::model_tree_drafter md(draft);
  md.reset();
  specdec::random_source rng(4);
  const specdec::sampling_params params{.temperature = 0.9f, .top_k = 4};
  const std::vector<token_id> s{1, 3};
  const specdec::tree_draft& d = md.draft(s, {.max_nodes = 12, .max_depth = 4, .branching = 3}, params, rng);
  ASSERT_FALSE(d.empty());
  ASSERT_TRUE(d.has_distributions());
  d.check(5, "test");
  EXPECT_TRUE(siblings_distinct(d.tree));
  std::vector<float> want(5);
  for (std::size_t n = 0; n < d.size(); ++n) {
    EXPECT_EQ(d.sampled[n], 1);
    const std::int32_t p = d.tree.parent(n);
    std::vector<token_id> path = s;
    if (p != specdec::no_parent)
      for (token_id t : d.tree.path_tokens(static_cast<std::size_t>(p))) path.push_back(t);
    specdec::make_distribution(draft.logits_after(path), params, want);
    const auto row = d.q_row(specdec::tree_draft::slot_of(p));
    EXPECT_TRUE(std::ranges::equal(row, want)) << "node " << n;
    EXPECT_GT(row[static_cast<std::size_t>(d.tree.token(n))], 0.0f);  // drawn from it
  }
  // Top-k mode under sampling: deterministic proposals, no q.
  specdec::model_tree_drafter det(draft, {.sample_children = false});
  det.reset();
  const specdec::tree_draft& e = det.draft(s, {.max_nodes = 6, .max_depth = 3, .branching = 2}, params, rng);
  EXPECT_FALSE(e.has_distributions());
  EXPECT_TRUE(std::ranges::all_of(e.sampled, [](std::uint8_t f) { return f == 0; }));
}

TEST(combined_tree_drafter, holds_the_text_branch_and_the_models_branches_without_repeats) {
  markov_model draft({.vocab = 16, .seed = 8});
  specdec::combined_tree_drafter cd(draft, 0.5);
  cd.reset();
  specdec::random_source rng(1);
  const std::vector<token_id> s{1, 7, 8, 9, 3, 7, 8};
  const specdec::tree_draft& d = cd.draft(s, {.max_nodes = 10, .max_depth = 4, .branching = 3}, {}, rng);
  EXPECT_EQ(d.size(), 10u);
  EXPECT_TRUE(siblings_distinct(d.tree));
  // The text index's continuation "9 3 7 8" comes first.
  EXPECT_EQ(d.tree.path_tokens(3), (std::vector<token_id>{9, 3, 7, 8}));
  EXPECT_THROW(specdec::combined_tree_drafter(draft, 1.5), specdec::invalid_argument);
}
