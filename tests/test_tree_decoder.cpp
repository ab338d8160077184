// Tests for include/specdec/tree_decoder.hpp: greedy tree decoding equals the target's own
// greedy decoding token for token (analytic markov pairs with every tree drafter, the kjv
// pair on held-out prompts, the stories260K self pair); sampled tree decoding passes the
// statistical exactness harness, and a tree decoder with a wrong sibling rule fails it;
// the committer's stop rules, statistics, cache sync and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "cpu_fixtures.hpp"
#include "specdec/backend/cpu/tokenizer.hpp"
#include "specdec/decoder.hpp"
#include "specdec/testing/archetypes.hpp"
#include "specdec/testing/exactness.hpp"
#include "specdec/tree_decoder.hpp"

namespace {
using specdec::token_id;
using specdec::testing::markov_model;

std::vector<token_id> target_greedy(markov_model& target, const std::vector<token_id>& prompt, std::size_t n) {
  specdec::autoregressive_decoder ar(target);
  return ar.generate(prompt, {.max_new_tokens = n, .stop_at_eos = false}).tokens;
}

// The residual without its update: each sibling is judged against p itself, and the
// final draw comes from p minus the last proposal. Not exact: the negative control.
struct no_residual_update {
  static constexpr bool exact = true;  // claims to be, so the decoder treats it as such
  specdec::sibling_result select(const specdec::sibling_input& in) const {
    std::vector<float> q(in.p.size());
    for (std::size_t i = 0; i < in.candidates.size(); ++i) {
      const auto x = static_cast<std::size_t>(in.candidates[i]);
      std::fill(q.begin(), q.end(), 0.0f);
      if (in.sampled[i]) std::copy(in.q.begin(), in.q.end(), q.begin());
      else q[x] = 1.0f;
      if (in.rng->uniform() * q[x] < in.p[x]) return {i, in.candidates[i]};
    }
    std::vector<float> r(in.p.begin(), in.p.end());
    float mass = 0.0f;
    for (std::size_t y = 0; y < r.size(); ++y) mass += r[y] = std::max(0.0f, r[y] - q[y]);
    if (!(mass > 0.0f)) r.assign(in.p.begin(), in.p.end());
    return {in.candidates.size(), specdec::sample_from(r, in.rng->uniform())};
  }
};

}  // namespace

TEST(tree_decoder, greedy_equals_the_targets_greedy_output_with_every_tree_drafter) {
  for (int order : {1, 2})
    for (std::uint64_t seed : {3u, 11u, 29u}) {
      markov_model target({.vocab = 12, .order = order, .seed = seed});
      markov_model draft({.vocab = 12, .order = order, .seed = seed, .noise_seed = seed + 7, .noise = 0.8f});
      const std::vector<token_id> prompt{1, 5, 3, 5, 3};
      const auto want = target_greedy(target, prompt, 40);
      for (auto plan : {specdec::fixed_tree{.nodes = 1, .depth = 1, .branching = 1},
                        specdec::fixed_tree{.nodes = 4, .depth = 4, .branching = 1},
                        specdec::fixed_tree{.nodes = 10, .depth = 4, .branching = 3},
                        specdec::fixed_tree{.nodes = 0}}) {
        specdec::model_tree_drafter md(draft);
        specdec::tree_decoder a(md, target, plan);
        EXPECT_EQ(a.generate(prompt, {.max_new_tokens = 40, .stop_at_eos = false}).tokens, want);
        specdec::text_index_drafter td(12);
        specdec::tree_decoder b(td, target, plan);
        EXPECT_EQ(b.generate(prompt, {.max_new_tokens = 40, .stop_at_eos = false}).tokens, want);
        specdec::combined_tree_drafter cd(draft);
        specdec::tree_decoder c(cd, target, plan);
        EXPECT_EQ(c.generate(prompt, {.max_new_tokens = 40, .stop_at_eos = false}).tokens, want);
      }
    }
}

TEST(tree_decoder, a_tree_yields_more_tokens_per_target_call_than_a_chain_of_its_depth) {
  markov_model target({.vocab = 12, .seed = 5});
  markov_model draft({.vocab = 12, .seed = 5, .noise_seed = 9, .noise = 1.2f});
  const std::vector<token_id> prompt{1};
  specdec::model_tree_drafter md(draft);
  specdec::tree_decoder chain(md, target, specdec::fixed_tree{.nodes = 4, .depth = 4, .branching = 1});
  specdec::tree_decoder tree(md, target, specdec::fixed_tree{.nodes = 16, .depth = 4, .branching = 4});
  const auto c = chain.generate(prompt, {.max_new_tokens = 300, .stop_at_eos = false});
  const auto t = tree.generate(prompt, {.max_new_tokens = 300, .stop_at_eos = false});
  EXPECT_EQ(c.tokens, t.tokens);
  EXPECT_GT(t.stats.mean_accepted_per_target_call(), c.stats.mean_accepted_per_target_call());
  EXPECT_EQ(t.stats.tokens_emitted, 300u);
  EXPECT_GT(t.stats.draft_calls, 0u);
  EXPECT_LE(t.stats.per_position_proposed.size(), 4u);
}

// The hardware-aware policy in the loop: told every step's verdict and timing (so its
// costs become the decoder's measured ones), its plans change nothing in greedy output.
TEST(tree_decoder, a_hardware_aware_policy_learns_from_every_step_and_keeps_greedy_output) {
  markov_model target({.vocab = 12, .seed = 5});
  markov_model draft({.vocab = 12, .seed = 5, .noise_seed = 9, .noise = 1.2f});
  const std::vector<token_id> prompt{1, 4};
  const auto want = target_greedy(target, prompt, 120);
  specdec::model_tree_drafter md(draft);
  std::vector<double> flat(9, 1.0);
  specdec::hardware_aware_tree policy{.verify_cost = flat, .draft_cost = 0.01, .max_nodes = 8, .max_depth = 4,
                                      .replan_every = 1, .target_token_seconds = 1e-6};
  specdec::tree_decoder dec(md, target, policy);
  const auto r = dec.generate(prompt, {.max_new_tokens = 120, .stop_at_eos = false});
  EXPECT_EQ(r.tokens, want);
  const auto& learnt = dec.policy().learnt;
  EXPECT_GT(learnt.token_steps, 0.0);
  EXPECT_EQ(learnt.version, r.stats.target_calls);  // every step counted once, told by observe and observe_cost
  EXPECT_GT(learnt.draft_forwards, 0.0);
  EXPECT_GT(learnt.first_steps, 0.0);  // the decoder reports each step's first draft forward
  EXPECT_NE(dec.policy().token_seconds(), 1e-6);  // measured now, not the knob
  EXPECT_TRUE(std::isfinite(dec.policy().draft_forward_cost()));
  EXPECT_TRUE(std::isfinite(dec.policy().first_draft_cost()));
}

// A text index's match length is the policy's context: the decoder plans each step by
// it, the classes learn apart (greedy output loops, so short matches come first, then
// long ones), and greedy output stays the target's.
TEST(tree_decoder, plans_a_text_index_by_its_match_length_and_keeps_greedy_output) {
  markov_model target({.vocab = 12, .seed = 5});
  const std::vector<token_id> prompt{1, 4};
  const auto want = target_greedy(target, prompt, 120);
  specdec::text_index_drafter td(12);
  specdec::hardware_aware_tree policy{.verify_cost = std::vector<double>(9, 1.0), .max_nodes = 8, .max_depth = 8,
                                      .level_drafter = false, .replan_every = 1,
                                      .context_bounds = specdec::text_context_bounds()};
  specdec::tree_decoder dec(td, target, policy);
  const auto r = dec.generate(prompt, {.max_new_tokens = 120, .stop_at_eos = false});
  EXPECT_EQ(r.tokens, want);
  std::size_t classes = 0;
  for (const auto& t : dec.policy().learnt.trials) classes += !t.empty() && t[0][0] > 0.0 ? 1 : 0;
  EXPECT_GE(classes, 2u);
  EXPECT_LT(r.stats.target_calls, 60u);  // the loop is drafted whole
}

TEST(tree_decoder, commits_through_the_committer_and_syncs_both_caches) {
  markov_model target({.vocab = 9, .seed = 4});
  markov_model draft({.vocab = 9, .seed = 4, .noise_seed = 2, .noise = 0.5f});
  const std::vector<token_id> prompt{1, 3};
  const auto full = target_greedy(target, prompt, 30);
  specdec::model_tree_drafter md(draft);
  specdec::tree_decoder dec(md, target, specdec::fixed_tree{.nodes = 8, .depth = 5, .branching = 2});
  // Budget: exactly max_new_tokens, never more, even when a path is longer.
  auto r = dec.generate(prompt, {.max_new_tokens = 7, .stop_at_eos = false});
  EXPECT_EQ(r.tokens, std::vector<token_id>(full.begin(), full.begin() + 7));
  EXPECT_EQ(r.stop_reason, "max_tokens");
  // Caches synced: each holds S minus its last token.
  EXPECT_EQ(target.cache_length(), prompt.size() + 7 - 1);
  EXPECT_EQ(draft.cache_length(), prompt.size() + 7 - 1);
  // A stop sequence inside an accepted path ends the generation right after it.
  const std::vector<token_id> stop(full.begin(), full.begin() + 5);  // first complete after 5 tokens
  r = dec.generate(prompt, {.max_new_tokens = 30, .stop_at_eos = false, .stop_sequences = {stop}});
  EXPECT_EQ(r.stop_reason, "stop_sequence");
  EXPECT_EQ(r.tokens, std::vector<token_id>(full.begin(), full.begin() + 5));
  // The callback sees every token, and false stops.
  std::vector<token_id> seen;
  r = dec.generate(prompt, {.max_new_tokens = 30, .stop_at_eos = false}, [&](token_id t) {
    seen.push_back(t);
    return seen.size() < 4;
  });
  EXPECT_EQ(r.stop_reason, "callback");
  EXPECT_EQ(seen, r.tokens);
  EXPECT_EQ(r.tokens.size(), 4u);
  // The context edge.
  markov_model small_t({.vocab = 9, .seed = 4, .context = 12}), small_d({.vocab = 9, .seed = 4, .context = 12});
  specdec::model_tree_drafter sd(small_d);
  specdec::tree_decoder edge(sd, small_t, specdec::fixed_tree{.nodes = 8, .depth = 5, .branching = 2});
  r = edge.generate(prompt, {.max_new_tokens = 30, .stop_at_eos = false});
  EXPECT_EQ(r.stop_reason, "context");
  EXPECT_EQ(r.tokens.size(), 10u);
}

TEST(tree_decoder, rejects_bad_input_with_named_values) {
  markov_model target({.vocab = 9, .seed = 4}), other({.vocab = 10, .seed = 4});
  specdec::model_tree_drafter md(other);
  EXPECT_THROW(specdec::tree_decoder(md, target), specdec::vocabulary_mismatch);
  specdec::text_index_drafter td(9);
  EXPECT_THROW(specdec::tree_decoder(td, target, specdec::fixed_tree{.nodes = 4, .depth = 0}),
               specdec::invalid_argument);
  EXPECT_THROW(specdec::tree_decoder(td, target, specdec::fixed_tree{.nodes = 4, .depth = 2, .branching = 0}),
               specdec::invalid_argument);
  specdec::tree_decoder dec(td, target);
  EXPECT_THROW(dec.generate(std::vector<token_id>{}), specdec::invalid_argument);
  EXPECT_THROW(dec.generate(std::vector<token_id>{1, 9}), specdec::token_out_of_range);
}

namespace {
// A generator for the exactness harness: tree decoding with drafter D under `rule`.
template <class Rule, class MakeDrafter>
auto tree_generator(const specdec::testing::exactness_case& c, specdec::fixed_tree plan, MakeDrafter make) {
  return [=](markov_model& draft, markov_model& target, const specdec::sampling_params& p) {
    return [&, c, plan, p, drafter = make(draft)](std::uint64_t seed) mutable {
      specdec::tree_decoder dec(drafter, target, plan, p, seed, Rule{});
      return dec.generate(c.prompt, {.max_new_tokens = c.length, .stop_at_eos = false}).tokens;
    };
  };
}
}  // namespace

TEST(tree_decoder, sampled_tree_decoding_has_exactly_the_targets_law) {
  const specdec::fixed_tree plan{.nodes = 8, .depth = 5, .branching = 3};
  for (const auto& c : specdec::testing::standard_exactness_cases(20000)) {
    // Children sampled without replacement from the draft's q.
    auto sampled = specdec::testing::check_case(
        c, tree_generator<specdec::recursive_rejection_sampling>(
               c, plan, [](markov_model& d) { return specdec::model_tree_drafter(d); }));
    EXPECT_TRUE(sampled.passed()) << c.name << " sampled children: " << sampled.describe();
    // Deterministic top-k children (point-mass proposals), plus text-index branches.
    auto topk = specdec::testing::check_case(
        c, tree_generator<specdec::recursive_rejection_sampling>(c, plan, [](markov_model& d) {
          return specdec::combined_tree_drafter(d, 0.5, {}, {.sample_children = false});
        }));
    EXPECT_TRUE(topk.passed()) << c.name << " top-k children: " << topk.describe();
  }
}

TEST(tree_decoder, the_exactness_harness_catches_a_sibling_rule_without_the_residual_update) {
  const specdec::fixed_tree plan{.nodes = 8, .depth = 5, .branching = 3};
  const auto cases = specdec::testing::standard_exactness_cases(20000);
  auto r = specdec::testing::check_case(
      cases[0], tree_generator<no_residual_update>(cases[0], plan,
                                                   [](markov_model& d) { return specdec::model_tree_drafter(d); }));
  EXPECT_FALSE(r.passed()) << r.describe();
}

namespace {
std::vector<std::vector<token_id>> kjv_prompts(const specdec::cpu::tokenizer& tok, std::size_t n) {
  std::ifstream in(cpu_fixtures::model_path("kjv_val_openings.tsv"));
  std::vector<std::vector<token_id>> prompts;
  std::string line;
  while (prompts.size() < n && std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const std::string verse = line.substr(line.rfind('\t') + 1);
    prompts.push_back(tok.encode(verse.substr(0, verse.find(' ', 30))));
  }
  return prompts;
}
}  // namespace

TEST(tree_decoder, greedy_kjv_pair_and_stories_self_pair_equal_the_targets_greedy_output) {
  using cpu_fixtures::shared_checkpoint;
  using specdec::cpu::transformer;
  auto big_ck = shared_checkpoint("kjv-big.bin");
  transformer big(big_ck, {.threads = 2}), little(shared_checkpoint("kjv-little.bin"), {.threads = 2});
  specdec::cpu::tokenizer tok(cpu_fixtures::model_path("kjv2k-tokenizer.bin"), std::size_t(big_ck->config.vocab_size));
  const auto prompts = kjv_prompts(tok, 3);
  ASSERT_EQ(prompts.size(), 3u);
  specdec::model_tree_drafter md(little);
  specdec::combined_tree_drafter cd(little);
  specdec::tree_decoder tree(md, big, specdec::fixed_tree{.nodes = 12, .depth = 6, .branching = 3});
  specdec::tree_decoder both(cd, big, specdec::fixed_tree{.nodes = 12, .depth = 6, .branching = 3});
  specdec::autoregressive_decoder ar(big);
  for (const auto& p : prompts) {
    const auto want = ar.generate(p, {.max_new_tokens = 32, .stop_at_eos = false}).tokens;
    EXPECT_EQ(tree.generate(p, {.max_new_tokens = 32, .stop_at_eos = false}).tokens, want);
    EXPECT_EQ(both.generate(p, {.max_new_tokens = 32, .stop_at_eos = false}).tokens, want);
  }
  transformer st(shared_checkpoint("stories260K.bin"), {.threads = 1}),
      sd(shared_checkpoint("stories260K.bin"), {.threads = 1});
  specdec::model_tree_drafter self(sd);
  specdec::tree_decoder same(self, st, specdec::fixed_tree{.nodes = 8, .depth = 4, .branching = 2});
  specdec::autoregressive_decoder ar_st(st);
  const std::vector<token_id> prompt{1, 400, 300};
  const auto want = ar_st.generate(prompt, {.max_new_tokens = 40}).tokens;
  const auto got = same.generate(prompt, {.max_new_tokens = 40});
  EXPECT_EQ(got.tokens, want);
  // The self pair agrees with itself: every step accepts the whole depth (bar the budget's end).
  EXPECT_GT(got.stats.mean_accepted_per_target_call(), 4.0);
}
