// The public contract suites (specdec/testing/contracts.hpp) run on the example types of
// examples/, exactly as a user would run them on their own: one macro per concept, plus
// the traits that say what each type promises. Also the prompt-lookup drafter (ids only).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "../examples/margin_fallback.hpp"
#include "../examples/prompt_lookup_drafter.hpp"
#include "specdec/decoder.hpp"
#include "specdec/testing/archetypes.hpp"
#include "specdec/testing/contracts.hpp"

// What the margin policy promises: blocks end within max_draft, and bad knobs are named.
template <>
struct specdec::testing::fallback_traits<example::top2_margin_fallback>
    : specdec::testing::default_fallback_traits<example::top2_margin_fallback> {
  static constexpr std::size_t cap = 8;
  static std::vector<std::pair<example::top2_margin_fallback, std::string>> bad_knobs() {
    return {{{.min_margin = std::numeric_limits<float>::quiet_NaN()}, "min_margin"},
            {{.min_margin = -0.1f}, "min_margin"},
            {{.min_margin = 1.5f}, "min_margin"},
            {{.max_draft = 0}, "max_draft"}};
  }
};

// What L-infinity promises: symmetric, bounded by 1 (reached on disjoint supports), exactly
// 0 on equal inputs.
template <>
struct specdec::testing::distance_traits<example::max_abs_difference>
    : specdec::testing::default_distance_traits<example::max_abs_difference> {
  static constexpr float equal_tolerance = 0.0f;
  static constexpr bool symmetric = true;
  static constexpr std::optional<float> upper_bound{1.0f};
  static constexpr bool disjoint_reaches_bound = true;
};

SPECDEC_FALLBACK_CONTRACT_TESTS(examples, example::top2_margin_fallback);
SPECDEC_DISTANCE_CONTRACT_TESTS(examples, example::max_abs_difference);
// The built-in BiLD rollback with the user's metric is a rollback policy like any other.
SPECDEC_ROLLBACK_CONTRACT_TESTS(examples, specdec::distance_rollback<example::max_abs_difference>);

namespace {
using specdec::token_id;

TEST(prompt_lookup_drafter, proposes_the_continuation_of_the_most_recent_match) {
  example::prompt_lookup_drafter d({.max_ngram = 2});
  using v = std::vector<token_id>;
  const v seq{1, 2, 3, 4, 2, 3, 9, 2, 3};  // "2 3" last seen before 9, "3" too
  const auto got = d.propose(seq, 4);
  EXPECT_EQ(v(got.begin(), got.end()), (v{9, 2, 3}));  // runs to the end of S
  EXPECT_EQ(d.propose(seq, 1).size(), 1u);             // capped by max
  EXPECT_TRUE(d.propose(v{1, 2, 3}, 4).empty());       // no earlier occurrence: nothing
  const auto one = d.propose(v{5, 7, 5}, 4);           // the 1-gram "5" matches at 0
  EXPECT_EQ(v(one.begin(), one.end()), (v{7, 5}));
  EXPECT_THROW(example::prompt_lookup_drafter({.min_ngram = 0}), specdec::invalid_argument);
  EXPECT_THROW(example::prompt_lookup_drafter({.max_ngram = 1, .min_ngram = 2}), specdec::invalid_argument);
}

TEST(prompt_lookup_drafter, as_a_draft_keeps_output_exact_and_drafts_on_repetition) {
  // An order-1 Markov target over 6 tokens, greedy, soon cycles: prompt lookup then drafts
  // the cycle, and the output must still be exactly the target's own greedy output.
  specdec::testing::markov_model target({.vocab = 6, .seed = 4, .context = 512});
  example::prompt_lookup_drafter draft;
  const std::vector<token_id> prompt{1, 3};
  const specdec::generation_options opts{.max_new_tokens = 120, .stop_at_eos = false};
  const auto want = specdec::autoregressive_decoder(target).generate(prompt, opts);
  for (std::size_t gamma : {3u, 8u}) {
    specdec::speculative_decoder dec(draft, target, specdec::fixed_gamma{.gamma = gamma}, specdec::greedy_match{});
    const auto got = dec.generate(prompt, opts);
    EXPECT_EQ(got.tokens, want.tokens);
    EXPECT_GT(got.stats.draft_tokens_accepted, 60u) << "the lookup should predict the cycle";
    EXPECT_LT(got.stats.target_calls, want.stats.target_calls / 2);
  }
}

TEST(top2_margin_fallback, discards_when_the_margin_is_small) {
  const example::top2_margin_fallback policy{.min_margin = 0.3f, .max_draft = 3};
  const std::vector<float> torn{0.5f, 0.25f, 0.25f}, sure{0.8f, 0.1f, 0.1f};
  EXPECT_FLOAT_EQ(example::top2_margin_fallback::margin(torn), 0.25f);
  EXPECT_EQ(policy.decide({0, torn, 0}), specdec::draft_action::discard_and_stop);
  EXPECT_EQ(policy.decide({0, sure, 0}), specdec::draft_action::keep_and_continue);
  EXPECT_EQ(policy.decide({2, sure, 0}), specdec::draft_action::keep_and_stop);
}
}  // namespace
