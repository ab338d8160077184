// Tests for include/specdec/tree_verifier.hpp: the tree_draft value, the sibling rule's
// law at one node (sampled candidates without replacement, deterministic candidates, a
// mix; against a wrong rule as the negative control), the verifier's greedy walk and
// cache bookkeeping on a markov target, and its errors.
#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <vector>

#include "specdec/sampling.hpp"
#include "specdec/testing/archetypes.hpp"
#include "specdec/testing/exactness.hpp"
#include "specdec/tree_verifier.hpp"

namespace {
using specdec::token_id;
using specdec::testing::markov_model;

static_assert(specdec::sibling_rule<specdec::recursive_rejection_sampling>);

// Judges each sibling against p itself (no residual update): not exact.
struct no_residual_update {
  static constexpr bool exact = false;
  specdec::sibling_result select(const specdec::sibling_input& in) const {
    for (std::size_t i = 0; i < in.candidates.size(); ++i) {
      const auto x = static_cast<std::size_t>(in.candidates[i]);
      const float qx = in.sampled[i] ? in.q[x] : 1.0f;
      if (in.rng->uniform() * qx < in.p[x]) return {i, in.candidates[i]};
    }
    return {in.candidates.size(), specdec::sample_from(in.p, in.rng->uniform())};
  }
};
static_assert(specdec::sibling_rule<no_residual_update>);

// The law of the token a node emits, over `runs` trials: each trial drafts `k` children
// (the first `fixed` deterministic, the rest drawn from q without replacement), then the
// rule picks; counts of the emitted token.
template <class Rule>
std::vector<std::uint64_t> node_law(const std::vector<float>& p, const std::vector<float>& q,
                                    const std::vector<token_id>& fixed, std::size_t sampled, std::size_t runs) {
  Rule rule;
  specdec::random_source rng(7);
  std::vector<std::uint64_t> counts(p.size(), 0);
  std::vector<token_id> cand;
  std::vector<std::uint8_t> flags;
  std::vector<float> rest;
  for (std::size_t t = 0; t < runs; ++t) {
    cand = fixed;
    flags.assign(fixed.size(), 0);
    for (std::size_t s = 0; s < sampled; ++s) {
      rest = q;
      for (token_id c : cand) rest[static_cast<std::size_t>(c)] = 0.0f;
      cand.push_back(specdec::sample_from(rest, rng.uniform()));
      flags.push_back(1);
    }
    const specdec::sibling_result r = rule.select({p, cand, flags, q, &rng});
    ++counts[static_cast<std::size_t>(r.accepted < cand.size() ? cand[r.accepted] : r.next)];
  }
  return counts;
}

std::vector<double> as_law(const std::vector<float>& p) { return {p.begin(), p.end()}; }
}  // namespace

TEST(sibling_rule, recursive_rejection_emits_the_targets_law_and_the_wrong_rule_does_not) {
  const std::vector<float> p{0.05f, 0.40f, 0.10f, 0.30f, 0.15f};
  const std::vector<float> q{0.35f, 0.05f, 0.30f, 0.10f, 0.20f};  // far from p: rejections are common
  const std::size_t runs = 60000;
  struct setup {
    std::vector<token_id> fixed;
    std::size_t sampled;
  };
  for (const setup& s : {setup{{}, 1}, setup{{}, 3}, setup{{0}, 2}, setup{{2, 0}, 0}, setup{{4}, 0}}) {
    const auto good = node_law<specdec::recursive_rejection_sampling>(p, q, s.fixed, s.sampled, runs);
    const auto fit = specdec::testing::goodness_of_fit(as_law(p), good);
    EXPECT_TRUE(fit.passed()) << s.fixed.size() << " fixed + " << s.sampled << " sampled: " << fit.describe();
    const auto bad = node_law<no_residual_update>(p, q, s.fixed, s.sampled, runs);
    EXPECT_FALSE(specdec::testing::goodness_of_fit(as_law(p), bad).passed())
        << s.fixed.size() << " fixed + " << s.sampled << " sampled";
  }
}

TEST(sibling_rule, greedy_inputs_consume_no_randomness_and_pick_the_argmax) {
  const std::vector<float> p{0.0f, 0.0f, 1.0f, 0.0f};
  const std::vector<float> q{0.25f, 0.25f, 0.25f, 0.25f};
  const std::vector<token_id> cand{1, 2};
  const std::vector<std::uint8_t> flags{1, 1};
  specdec::random_source rng(3), fresh(3);
  const auto r = specdec::recursive_rejection_sampling{}.select({p, cand, flags, q, &rng});
  EXPECT_EQ(r.accepted, 1u);
  EXPECT_EQ(rng.uniform(), fresh.uniform());
  const std::vector<float> q_without_2{0.5f, 0.5f, 0.0f, 0.0f};
  const std::vector<token_id> two{1, 2};
  EXPECT_THROW((void)specdec::recursive_rejection_sampling{}.select({p, two, flags, q_without_2, &rng}),
               specdec::invalid_argument);
}

TEST(tree_verifier, greedy_accepts_the_longest_argmax_path_and_keeps_it_in_the_cache) {
  markov_model target({.vocab = 6, .order = 2, .seed = 3});
  const std::vector<token_id> s{1, 4};
  // The target's greedy continuation of s.
  std::vector<token_id> g = s;
  for (int i = 0; i < 4; ++i) g.push_back(specdec::argmax(target.logits_after(g)));
  const token_id wrong0 = (g[2] + 1) % 6, wrong2 = (g[4] + 1) % 6;
  specdec::tree_draft d;
  d.clear(s.size());
  d.add(wrong0);                              // 0: a wrong root
  const auto a = d.add(g[2]);                 // 1: the right root
  const auto b = d.add(g[3], static_cast<std::int32_t>(a));   // 2
  d.add(wrong2, static_cast<std::int32_t>(b));                 // 3: wrong at depth 2
  d.add(g[3], 0);                                              // 4: under the wrong root
  specdec::tree_verifier v(target);
  v.reset();
  specdec::random_source rng(1);
  const specdec::tree_verdict r = v.verify(s, d, {}, rng);
  EXPECT_EQ(r.path, (std::vector<std::size_t>{1, 2}));
  EXPECT_EQ(r.next, g[4]);
  EXPECT_EQ(r.target_rows, s.size() + d.size());
  // The target holds S plus the path (the next token is fed by the next call).
  EXPECT_EQ(target.cache_length(), s.size() + 2);
  EXPECT_EQ(std::vector<token_id>(target.history().begin(), target.history().end()),
            (std::vector<token_id>{1, 4, g[2], g[3]}));
  // The next step feeds only the unseen token.
  std::vector<token_id> s2{1, 4, g[2], g[3], g[4]};
  d.clear(s2.size());
  const auto r2 = v.verify(s2, d, {}, rng);
  EXPECT_EQ(r2.target_rows, 1u);
  EXPECT_EQ(r2.next, g[5]);
  v.sync(std::vector<token_id>{1, 4, g[2]});
  EXPECT_EQ(target.cache_length(), 2u);
}

TEST(tree_verifier, rejects_malformed_drafts_with_named_values) {
  markov_model target({.vocab = 6, .seed = 3});
  specdec::tree_verifier v(target);
  v.reset();
  specdec::random_source rng(1);
  const std::vector<token_id> s{1, 2};
  specdec::tree_draft d;
  d.clear(5);  // wrong position
  EXPECT_THROW(v.verify(s, d, {}, rng), specdec::invalid_argument);
  d.clear(s.size());
  d.add(7);  // out of the vocabulary
  EXPECT_THROW(v.verify(s, d, {}, rng), specdec::token_out_of_range);
  d.clear(s.size());
  d.add(3, specdec::no_parent, true);  // sampled, but no q rows
  EXPECT_THROW(v.verify(s, d, {.temperature = 1.0f}, rng), specdec::invalid_argument);
  d.clear(s.size(), 6);
  d.add(3, specdec::no_parent, true);
  d.sampled.pop_back();  // flags out of step with the nodes
  EXPECT_THROW(v.verify(s, d, {.temperature = 1.0f}, rng), specdec::invalid_argument);
  EXPECT_EQ(target.cache_length(), 0u);  // nothing was forwarded
  EXPECT_THROW(d.tree.add(1, 5), specdec::invalid_argument);  // a parent that does not exist
}
