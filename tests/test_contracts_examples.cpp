// The public contract suites (specdec/testing/contracts.hpp) run on the example types of
// examples/, exactly as a user would run them on their own: one macro per concept, plus
// the traits that say what each type promises. Also the prompt-lookup drafter's own rule.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "../examples/margin_fallback.hpp"
#include "../examples/prompt_lookup_model.hpp"
#include "specdec/decoder.hpp"
#include "specdec/testing/archetypes.hpp"
#include "specdec/testing/contracts.hpp"

// How the model contract builds a prompt-lookup drafter: a small vocabulary, so that the
// contract's token sequences repeat and the lookup actually fires.
template <>
struct specdec::testing::model_factory<example::prompt_lookup_model> {
  static example::prompt_lookup_model make() { return example::prompt_lookup_model({.vocab = 5, .context = 64}); }
};

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

SPECDEC_MODEL_CONTRACT_TESTS(examples, example::prompt_lookup_model);
SPECDEC_FALLBACK_CONTRACT_TESTS(examples, example::top2_margin_fallback);
SPECDEC_DISTANCE_CONTRACT_TESTS(examples, example::max_abs_difference);
// The built-in BiLD rollback with the user's metric is a rollback policy like any other.
SPECDEC_ROLLBACK_CONTRACT_TESTS(examples, specdec::distance_rollback<example::max_abs_difference>);

namespace {
using specdec::token_id;

std::size_t argmax_of_last_row(example::prompt_lookup_model& m, const std::vector<token_id>& tokens) {
  m.truncate(0);
  const auto out = m.forward(tokens);
  return static_cast<std::size_t>(specdec::argmax(out.row(out.rows - 1)));
}

TEST(prompt_lookup_model, proposes_the_continuation_of_the_most_recent_match) {
  example::prompt_lookup_model m({.vocab = 10, .max_ngram = 2, .confidence = 0.9f});
  // "1 2 3 ... 1 2 4 ... 1 2": the most recent "1 2" was followed by 4.
  EXPECT_EQ(argmax_of_last_row(m, {1, 2, 3, 9, 1, 2, 4, 8, 1, 2}), 4u);
  // The longest suffix wins over a more recent shorter one: "7 2" -> 5, but "2" alone -> 6.
  EXPECT_EQ(argmax_of_last_row(m, {7, 2, 5, 2, 6, 7, 2}), 5u);
  // A one-token match when no bigram matches.
  EXPECT_EQ(argmax_of_last_row(m, {3, 8, 1, 3}), 8u);
}

TEST(prompt_lookup_model, near_one_hot_when_matched_uniform_otherwise) {
  example::prompt_lookup_model m({.vocab = 10, .confidence = 0.9f});
  const std::vector<token_id> seq{1, 2, 3, 1, 2};
  const auto out = m.forward(seq);
  std::vector<float> p(10);
  specdec::softmax(out.row(4), p);  // after "1 2 3 1 2": 3
  EXPECT_NEAR(p[3], 0.9f, 1e-6f);
  for (std::size_t j = 0; j < 10; ++j) {
    if (j != 3) {
      EXPECT_NEAR(p[j], 0.1f / 9.0f, 1e-6f);
    }
  }
  specdec::softmax(out.row(1), p);  // after "1 2": nothing to look up
  for (float x : p) EXPECT_NEAR(x, 0.1f, 1e-6f);
}

TEST(prompt_lookup_model, rejects_bad_options) {
  EXPECT_THROW(example::prompt_lookup_model({.vocab = 1}), specdec::invalid_argument);
  EXPECT_THROW(example::prompt_lookup_model({.min_ngram = 0}), specdec::invalid_argument);
  EXPECT_THROW(example::prompt_lookup_model({.max_ngram = 1, .min_ngram = 2}), specdec::invalid_argument);
  EXPECT_THROW(example::prompt_lookup_model({.vocab = 4, .confidence = 0.2f}), specdec::invalid_argument);
  EXPECT_THROW(example::prompt_lookup_model({.confidence = 1.0f}), specdec::invalid_argument);
}

TEST(prompt_lookup_model, as_a_draft_keeps_greedy_output_exact_and_drafts_on_repetition) {
  // An order-1 Markov target over 6 tokens, greedy, soon cycles: prompt lookup then drafts
  // the cycle, and the output must still be exactly the target's own greedy output.
  specdec::testing::markov_model target({.vocab = 6, .seed = 4, .context = 512});
  example::prompt_lookup_model draft({.vocab = 6, .context = 512});
  const std::vector<token_id> prompt{1, 3};
  const specdec::generation_options opts{.max_new_tokens = 120, .stop_at_eos = false};
  const auto want = specdec::autoregressive_decoder(target).generate(prompt, opts);
  for (auto fallback : {example::top2_margin_fallback{.min_margin = 0.5f},
                        example::top2_margin_fallback{.min_margin = 0.0f, .max_draft = 3}}) {
    specdec::speculative_decoder dec(draft, target, fallback, specdec::greedy_match{});
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
