// Tests for include/specdec/decoder.hpp: speculative and autoregressive decoding.
//
// - Greedy exactness: at temperature 0, speculative decoding with an exact rollback
//   policy reproduces the target's own greedy tokens, on a Markov pair, on the KJV pair
//   and on stories260K paired with itself.
// - Sampled exactness: with rejection sampling the distribution of generated sequences
//   is the target's at every draft length and with every fallback policy (the harness of
//   specdec/testing/exactness.hpp; test_exactness.cpp has the battery, the negative
//   controls and the power), and a smoke test on the KJV pair.
// - BiLD limits, cache state after generate, errors, streaming, statistics.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/decoder.hpp"
#include "specdec/distance.hpp"
#include "specdec/fallback.hpp"
#include "specdec/rollback.hpp"
#include "specdec/telemetry.hpp"
#include "specdec/testing/archetypes.hpp"
#include "specdec/testing/contracts.hpp"
#include "specdec/testing/exactness.hpp"

namespace {
using specdec::generation_options;
using specdec::sampling_params;
using specdec::token_id;
using specdec::testing::markov_model;
using specdec::testing::markov_options;

// ---------------------------------------------------------------------------------------
// Policies under test (one place to adapt if a constructor changes).
specdec::fixed_gamma gamma_policy(std::size_t g) {
  specdec::fixed_gamma f{};
  f.gamma = g;
  return f;
}
specdec::max_prob_fallback max_prob(float alpha_fb, std::size_t max_draft) {
  specdec::max_prob_fallback f{};
  f.alpha_fb = alpha_fb;
  f.max_draft = max_draft;
  return f;
}
template <class Metric = specdec::drafted_cross_entropy>
specdec::distance_rollback<Metric> distance(float alpha_rb) {
  specdec::distance_rollback<Metric> r{};
  r.alpha_rb = alpha_rb;
  return r;
}

// Test-only policies.
/// Accepts every drafted token and draws the bonus from the target: NOT exact (it emits
/// the draft's distribution), but claims to be, so the decoder always verifies. Used as
/// the negative control of the statistical tests.
struct always_accept {
  static constexpr bool exact = true;
  specdec::verify_result verify(const specdec::verify_input& in) {
    return {in.k(), specdec::sample_from(in.p_row(in.k()), in.rng->uniform())};
  }
};
/// Never hands over before `n` tokens (so `n` large = no fallback at all).
struct never_fallback {
  specdec::draft_action decide(const specdec::draft_step&) { return specdec::draft_action::keep_and_continue; }
  void observe(const specdec::step_outcome&) {}
};

// ---------------------------------------------------------------------------------------
// Models.
std::string model_path(const char* name) { return std::string(SPECDEC_MODELS_DIR) + "/" + name; }
std::shared_ptr<const specdec::cpu::checkpoint> load(const char* name) {
  return std::make_shared<const specdec::cpu::checkpoint>(specdec::cpu::load_checkpoint(model_path(name)));
}
const std::shared_ptr<const specdec::cpu::checkpoint>& kjv_big() {
  static const auto ck = load("kjv-big.bin");
  return ck;
}
const std::shared_ptr<const specdec::cpu::checkpoint>& kjv_little() {
  static const auto ck = load("kjv-little.bin");
  return ck;
}
const std::shared_ptr<const specdec::cpu::checkpoint>& stories() {
  static const auto ck = load("stories260K.bin");
  return ck;
}

markov_options markov_target_opts(std::size_t vocab, int order, std::uint64_t seed) {
  return {.vocab = vocab, .order = order, .seed = seed};
}
markov_options markov_draft_opts(std::size_t vocab, int order, std::uint64_t seed, float noise = 0.7f) {
  return {.vocab = vocab, .order = order, .seed = seed, .noise_seed = seed + 100, .noise = noise};
}

struct markov_pair {
  markov_model draft{markov_draft_opts(8, 2, 11)};
  markov_model target{markov_target_opts(8, 2, 11)};
  static std::vector<std::vector<token_id>> prompts() { return {{1}, {3, 4}, {1, 5, 6, 7}}; }
  // EOS (id 2) is an ordinary token of the chain: don't stop on it, to get long outputs.
  static generation_options options() { return {.max_new_tokens = 40, .stop_at_eos = false}; }
  static std::vector<std::size_t> rejection_gammas() { return {1, 2, 4, 7}; }
};
struct kjv_pair {
  specdec::cpu::transformer draft{kjv_little()};
  specdec::cpu::transformer target{kjv_big()};
  static std::vector<std::vector<token_id>> prompts() { return {{1}, {1, 450, 200}}; }
  static generation_options options() { return {.max_new_tokens = 24}; }
  // kjv-big forwards cost milliseconds: rejection_sampling (identical to greedy_match at
  // temperature 0) runs on fewer gammas here; the Markov and stories pairs run all.
  static std::vector<std::size_t> rejection_gammas() { return {1, 4}; }
};
struct stories_pair {  // one checkpoint, two instances: draft == target
  specdec::cpu::transformer draft{stories()};
  specdec::cpu::transformer target{stories()};
  static std::vector<std::vector<token_id>> prompts() { return {{1}, {1, 400, 300}}; }
  static generation_options options() { return {.max_new_tokens = 32}; }
  static std::vector<std::size_t> rejection_gammas() { return {1, 2, 4, 7}; }
};

template <class M>
std::vector<token_id> autoregressive(M& model, std::span<const token_id> prompt, const generation_options& o,
                                     sampling_params params = {}, std::uint64_t seed = 0) {
  specdec::autoregressive_decoder ar(model, params, seed);
  return ar.generate(prompt, o).tokens;
}

// ---------------------------------------------------------------------------------------
// Typed over model pairs.
template <class Pair>
class decoder_pairs : public ::testing::Test {
 protected:
  Pair pair;
};
using pair_types = ::testing::Types<markov_pair, kjv_pair, stories_pair>;
TYPED_TEST_SUITE(decoder_pairs, pair_types);

/// The target's own greedy output for each of the pair's prompts (computed once).
template <class Pair>
const std::vector<std::vector<token_id>>& target_greedy_outputs(Pair& pair) {
  static const std::vector<std::vector<token_id>> out = [&] {
    std::vector<std::vector<token_id>> v;
    for (const auto& prompt : Pair::prompts()) v.push_back(autoregressive(pair.target, prompt, Pair::options()));
    return v;
  }();
  return out;
}

template <class Pair, class Fallback, class Rollback>
void expect_greedy_equals_target(Pair& pair, Fallback fb, Rollback rb, const std::string& what) {
  const auto opts = Pair::options();
  const auto prompts = Pair::prompts();
  const auto& expected = target_greedy_outputs(pair);
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    specdec::speculative_decoder dec(pair.draft, pair.target, fb, rb);
    const auto got = dec.generate(prompts[i], opts);
    EXPECT_EQ(got.tokens, expected[i]) << what << ", prompt " << i;
    EXPECT_EQ(got.stats.tokens_emitted, got.tokens.size());
  }
}

TYPED_TEST(decoder_pairs, greedy_output_equals_target_autoregressive) {
  for (std::size_t g : {1u, 2u, 4u, 7u}) {
    expect_greedy_equals_target(this->pair, gamma_policy(g), specdec::greedy_match{},
                                "greedy_match, gamma " + std::to_string(g));
  }
  for (std::size_t g : TypeParam::rejection_gammas()) {
    expect_greedy_equals_target(this->pair, gamma_policy(g), specdec::rejection_sampling{},
                                "rejection_sampling, gamma " + std::to_string(g));
  }
  expect_greedy_equals_target(this->pair, max_prob(0.6f, 8), specdec::greedy_match{}, "max_prob + greedy_match");
  expect_greedy_equals_target(this->pair, max_prob(0.9f, 16), specdec::rejection_sampling{},
                              "max_prob + rejection_sampling");
  expect_greedy_equals_target(this->pair, specdec::confidence_stop{.min_confidence = 0.5f, .max_draft = 6},
                              specdec::greedy_match{}, "confidence_stop + greedy_match");
}

TYPED_TEST(decoder_pairs, bild_limits) {
  auto& p = this->pair;
  const auto opts = TypeParam::options();
  const auto prompts = TypeParam::prompts();
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const auto& prompt = prompts[i];
    // alpha_rb = 0: every draft token that the target would not pick greedily is rolled
    // back, so the output is the target's greedy output.
    const auto& target_greedy = target_greedy_outputs(p)[i];
    specdec::speculative_decoder strict(p.draft, p.target, max_prob(0.6f, 6), distance(0.0f));
    EXPECT_EQ(strict.generate(prompt, opts).tokens, target_greedy);
    // alpha_fb = 0 and no cap: the draft never falls back, the target never runs, and the
    // output is the draft's own greedy output.
    const auto draft_greedy = autoregressive(p.draft, prompt, opts);
    specdec::speculative_decoder loose(p.draft, p.target, max_prob(0.0f, specdec::no_cap), distance(1.0f));
    const auto r = loose.generate(prompt, opts);
    EXPECT_EQ(r.tokens, draft_greedy);
    EXPECT_EQ(r.stats.target_calls, 0u);
    EXPECT_EQ(r.stats.fallbacks, 0u);
  }
}

template <class M>
void expect_cache_is_fresh(M& model, const std::shared_ptr<const specdec::cpu::checkpoint>* ck,
                           const std::vector<token_id>& seq, const char* who) {
  ASSERT_EQ(model.cache_length(), seq.size() - 1) << who;
  std::vector<float> next;
  {
    auto l = specdec::forward_one(model, seq.back());
    next.assign(l.row(0).begin(), l.row(0).end());
  }
  auto fresh = [&] {
    if constexpr (std::is_same_v<M, markov_model>) return model;  // copy; reset below
    else return specdec::cpu::transformer(*ck);
  }();
  fresh.truncate(0);
  auto l = fresh.forward(seq);
  ASSERT_EQ(l.rows, seq.size());
  const auto row = l.row(seq.size() - 1);
  for (std::size_t j = 0; j < next.size(); ++j) ASSERT_EQ(next[j], row[j]) << who << ", logit " << j;
}

TYPED_TEST(decoder_pairs, caches_equal_a_fresh_model_after_generate) {
  auto& p = this->pair;
  const auto prompt = TypeParam::prompts().back();
  struct run {
    sampling_params params;
    std::size_t gamma;
  };
  for (const run r : {run{{}, 3}, run{{.temperature = 1.0f}, 4}, run{{.temperature = 0.8f, .top_p = 0.9f}, 2}}) {
    specdec::speculative_decoder dec(p.draft, p.target, gamma_policy(r.gamma), specdec::rejection_sampling{},
                                     r.params, 5);
    const auto res = dec.generate(prompt, TypeParam::options());
    std::vector<token_id> seq(prompt);
    seq.insert(seq.end(), res.tokens.begin(), res.tokens.end());
    const std::shared_ptr<const specdec::cpu::checkpoint>* dck = nullptr;
    const std::shared_ptr<const specdec::cpu::checkpoint>* tck = nullptr;
    if constexpr (!std::is_same_v<TypeParam, markov_pair>) {
      dck = &p.draft.weights();
      tck = &p.target.weights();
    }
    expect_cache_is_fresh(p.draft, dck, seq, "draft");
    expect_cache_is_fresh(p.target, tck, seq, "target");
    // And generate is repeatable: same seed, same tokens, from whatever cache state.
    EXPECT_EQ(dec.generate(prompt, TypeParam::options()).tokens, res.tokens);
  }
}

TYPED_TEST(decoder_pairs, statistics_are_consistent) {
  auto& p = this->pair;
  const auto opts = TypeParam::options();
  for (const auto& prompt : TypeParam::prompts()) {
    specdec::speculative_decoder dec(p.draft, p.target, gamma_policy(3), specdec::greedy_match{});
    const auto r = dec.generate(prompt, opts);
    const auto& s = r.stats;
    EXPECT_EQ(s.tokens_emitted, r.tokens.size());
    EXPECT_LE(s.draft_tokens_accepted, s.draft_tokens_proposed);
    EXPECT_GE(s.target_calls, 1u);
    EXPECT_EQ(s.prompt_tokens, prompt.size());
    EXPECT_EQ(s.method, "speculative");
    ASSERT_EQ(s.per_position_proposed.size(), s.per_position_accepted.size());
    for (std::size_t i = 0; i < s.per_position_proposed.size(); ++i)
      EXPECT_LE(s.per_position_accepted[i], s.per_position_proposed[i]);
    EXPECT_GE(s.total_seconds, 0.0);
    EXPECT_NEAR(s.draft_seconds + s.target_seconds + s.policy_seconds, s.total_seconds, 1e-9 + 1e-6 * s.total_seconds);
    // Each target call yields the accepted drafts plus one token, except that the last
    // call's output may be cut by the token budget.
    if (r.stop_reason == "max_tokens") {
      EXPECT_LE(s.tokens_emitted, s.draft_tokens_accepted + s.target_calls);
    } else {
      EXPECT_EQ(s.tokens_emitted, s.draft_tokens_accepted + s.target_calls);
    }
    if (std::is_same_v<TypeParam, stories_pair>) {  // draft == target: everything accepted
      EXPECT_EQ(s.draft_tokens_accepted, s.draft_tokens_proposed);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Typed over the exact rollback policies.
template <class Rollback>
class exact_rollback : public ::testing::Test {};
using exact_types = ::testing::Types<specdec::greedy_match, specdec::rejection_sampling>;
TYPED_TEST_SUITE(exact_rollback, exact_types);

TYPED_TEST(exact_rollback, greedy_equals_target_on_markov_chains) {
  for (int order : {1, 2}) {
    for (std::uint64_t seed : {3u, 17u}) {
      markov_model target(markov_target_opts(6, order, seed));
      markov_model draft(markov_draft_opts(6, order, seed, 1.0f));
      const generation_options opts{.max_new_tokens = 50, .stop_at_eos = false};
      for (const std::vector<token_id>& prompt : {std::vector<token_id>{0}, {5, 1}, {2, 3, 4}}) {
        const auto expected = autoregressive(target, prompt, opts);
        ASSERT_EQ(expected.size(), 50u);
        for (std::size_t g : {1u, 2u, 4u, 7u}) {
          specdec::speculative_decoder dec(draft, target, gamma_policy(g), TypeParam{});
          EXPECT_EQ(dec.generate(prompt, opts).tokens, expected) << "order " << order << " gamma " << g;
        }
        specdec::speculative_decoder mp(draft, target, max_prob(0.7f, 5), TypeParam{});
        EXPECT_EQ(mp.generate(prompt, opts).tokens, expected) << "max_prob, order " << order;
        // Stopping at EOS: both stop at the same place, EOS included.
        generation_options eos_opts = opts;
        eos_opts.stop_at_eos = true;
        const auto ar = autoregressive(target, prompt, eos_opts);
        specdec::speculative_decoder dec(draft, target, gamma_policy(4), TypeParam{});
        const auto r = dec.generate(prompt, eos_opts);
        EXPECT_EQ(r.tokens, ar);
        if (!ar.empty() && ar.back() == specdec::eos_token) {
          EXPECT_EQ(r.stop_reason, "eos");
        }
      }
    }
  }
}

TYPED_TEST(exact_rollback, telemetry_relation_on_markov_pair) {
  markov_model target(markov_target_opts(8, 2, 4));
  markov_model draft(markov_draft_opts(8, 2, 4, 1.0f));
  const std::vector<token_id> prompt{1};
  for (float temperature : {0.0f, 1.0f}) {
    specdec::speculative_decoder dec(draft, target, gamma_policy(4), TypeParam{}, {.temperature = temperature}, 7);
    std::size_t proposed = 0, accepted = 0;
    for (std::size_t m : {1u, 2u, 5u, 17u, 60u}) {
      const auto r = dec.generate(prompt, {.max_new_tokens = m, .stop_at_eos = false});
      const auto& s = r.stats;
      ASSERT_EQ(r.tokens.size(), m);
      // Each target call yields its accepted drafts plus one token; exact policies never
      // draft past the budget (k <= remaining - 1), so not even the last call is cut.
      EXPECT_EQ(s.tokens_emitted, s.draft_tokens_accepted + s.target_calls) << "budget " << m;
      EXPECT_LE(s.draft_tokens_accepted, s.draft_tokens_proposed);
      proposed += s.draft_tokens_proposed;
      accepted += s.draft_tokens_accepted;
    }
    if (temperature > 0) {
      EXPECT_GT(accepted, 0u);
      EXPECT_LT(accepted, proposed);
    }
    // A stop sequence or EOS may cut a call's output short: then only <= holds.
    const auto full = dec.generate(prompt, {.max_new_tokens = 60, .stop_at_eos = false}).tokens;
    const generation_options so{.max_new_tokens = 60, .stop_at_eos = true, .stop_sequences = {{full[30], full[31]}}};
    const auto r2 = dec.generate(prompt, so);
    EXPECT_LE(r2.stats.tokens_emitted, r2.stats.draft_tokens_accepted + r2.stats.target_calls);
    EXPECT_NE(r2.stop_reason, "max_tokens");
  }
}

// ---------------------------------------------------------------------------------------
// Sampled exactness on Markov chains, with the harness of specdec/testing/exactness.hpp
// (the joint law of all emitted tokens, each token's and each adjacent pair's law;
// chi-square at significance 1e-6 per law, a TV bound, and any sample the target can
// never emit failing outright). test_exactness.cpp runs the full battery with the
// negative controls and states the power; here: every draft length, and the fallback
// policies that change it.

// Sanitizer builds (5-10x slower) sample fewer runs here: 10,000 per check instead of
// 40,000 (the negative controls below fail by orders of magnitude either way), and 250
// instead of 1000 in the KJV smoke test. test_exactness.cpp keeps the full count.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr std::size_t markov_runs = 10000, kjv_runs = 250;
#else
constexpr std::size_t markov_runs = 40000, kjv_runs = 1000;
#endif

/// A generator factory for `specdec::testing::check_case`: speculative decoding of
/// `c.length` tokens with `fallback` and `rollback`; `*fallbacks` counts the discards.
template <class Fallback, class Rollback>
auto speculative_generator(const specdec::testing::exactness_case& c, Fallback fallback, Rollback rollback,
                           std::size_t* fallbacks = nullptr) {
  return [=, opts = generation_options{.max_new_tokens = c.length, .stop_at_eos = false}](
             markov_model& draft, markov_model& target, const sampling_params& params) {
    return [dec = specdec::speculative_decoder(draft, target, fallback, rollback, params), opts, prompt = c.prompt,
            fallbacks](std::uint64_t seed) mutable {
      dec.set_seed(seed);
      auto r = dec.generate(prompt, opts);
      if (fallbacks != nullptr) *fallbacks += r.stats.fallbacks;
      return r.tokens;
    };
  };
}

/// The same for one model decoding alone: the draft's (`draft_alone`) or the target's.
auto autoregressive_generator(const specdec::testing::exactness_case& c, bool draft_alone) {
  return [=, opts = generation_options{.max_new_tokens = c.length, .stop_at_eos = false}](
             markov_model& draft, markov_model& target, const sampling_params& params) {
    return [dec = specdec::autoregressive_decoder(draft_alone ? draft : target, params), opts,
            prompt = c.prompt](std::uint64_t seed) mutable {
      dec.set_seed(seed);
      return dec.generate(prompt, opts).tokens;
    };
  };
}

// Every draft length from 1 to beyond the generation (7 > 6 tokens: capped by the budget),
// on a case with top-p (so zero-probability tokens exist): exact. The target's own
// samples pass the same check; the draft's own samples and a policy that accepts every
// draft fail it.
TEST(sampled_exactness, rejection_sampling_is_exact_at_every_draft_length) {
  const auto c = specdec::testing::standard_exactness_cases(markov_runs)[2];  // T 1.3, top-p 0.8
  ASSERT_LT(c.params.top_p, 1.0f);
  for (std::size_t g : {1u, 2u, 3u, 7u}) {
    SCOPED_TRACE("gamma " + std::to_string(g));
    SPECDEC_EXPECT_EXACT(
        specdec::testing::check_case(c, speculative_generator(c, gamma_policy(g), specdec::rejection_sampling{})));
  }
  SPECDEC_EXPECT_EXACT(specdec::testing::check_case(c, autoregressive_generator(c, false)));
  SPECDEC_EXPECT_NOT_EXACT(specdec::testing::check_case(c, autoregressive_generator(c, true)));
  SPECDEC_EXPECT_NOT_EXACT(specdec::testing::check_case(c, speculative_generator(c, gamma_policy(3), always_accept{})));
}

// Exactness does not depend on the fallback policy: BiLD's max-prob fallback discards
// unconfident drafts (so some steps have k = 0 and the target samples alone) and
// adaptive_gamma changes the draft length from step to step.
TEST(sampled_exactness, exact_with_discarding_and_adaptive_fallbacks) {
  const auto c = specdec::testing::standard_exactness_cases(markov_runs)[0];  // T 1, no truncation
  const auto check = [&](auto fallback, const char* what, bool discards) {
    std::size_t fallbacks = 0;
    SPECDEC_EXPECT_EXACT(
        specdec::testing::check_case(c, speculative_generator(c, fallback, specdec::rejection_sampling{}, &fallbacks)));
    if (discards) {
      EXPECT_GT(fallbacks, c.runs / 10) << what;  // the k = 0 path is exercised
    } else {
      EXPECT_EQ(fallbacks, 0u) << what;
    }
  };
  check(max_prob(0.5f, 3), "max_prob_fallback", true);
  check(specdec::confidence_stop{.min_confidence = 0.5f, .max_draft = 3}, "confidence_stop", false);
  check(specdec::adaptive_gamma{.initial = 1, .min_gamma = 1, .max_gamma = 4}, "adaptive_gamma", false);
}

// Sampled exactness on the real KJV pair: the first two tokens after BOS at temperature 1.
// A SMOKE TEST, not a proof: each run costs a kjv-big forward (milliseconds), so a unit
// test affords N = 1000 runs (250 in sanitizer builds), and at that size the check sees only gross errors: it is
// rejected by kjv-little's own law but is nearly blind to a joint law moved by TV 0.02
// towards kjv-little's (both powers are computed and printed below). The statistical
// evidence is the Markov battery of test_exactness.cpp; this test shows that the real
// backend goes through the same harness and is not grossly wrong.
TEST(sampled_exactness, kjv_first_two_tokens_smoke_test) {
  specdec::cpu::transformer big(kjv_big());
  // The draft's numerics change its proposals only, never the law: w8a8 is the cheapest.
  specdec::cpu::transformer little(kjv_little(), {.format = specdec::cpu::weight_format::w8a8});
  const std::vector<token_id> prompt{1};
  const sampling_params params{.temperature = 1.0f};
  const std::size_t vocab = big.vocab_size();

  // The bins: the pair (x1, x2) for every x1 with target probability >= 0.005 and every
  // x2, and one bin for all the other x1 (the harness pools the small bins).
  std::vector<token_id> firsts;
  {
    std::vector<float> p1(vocab);
    specdec::softmax(big.forward(prompt).row(0), p1);
    for (std::size_t x1 = 0; x1 < vocab; ++x1)
      if (p1[x1] >= 0.005f) firsts.push_back(static_cast<token_id>(x1));
  }
  ASSERT_GE(firsts.size(), 6u) << "prompt too predictable for a useful test";
  const std::size_t other = firsts.size() * vocab;
  const auto bin_of = [&](token_id x1, token_id x2) {
    const auto it = std::find(firsts.begin(), firsts.end(), x1);
    return it == firsts.end() ? other : static_cast<std::size_t>(it - firsts.begin()) * vocab + static_cast<std::size_t>(x2);
  };
  // A model's exact law over those bins: p(x1) p(x2 | x1), in double.
  const auto law_of = [&](specdec::cpu::transformer& m) {
    std::vector<double> law(other + 1, 0.0);
    m.truncate(0);
    const auto p1 = specdec::testing::processed_distribution(m.forward(prompt).row(0), params);
    double covered = 0.0;
    for (std::size_t f = 0; f < firsts.size(); ++f) {
      m.truncate(prompt.size());
      const auto p2 = specdec::testing::processed_distribution(specdec::forward_one(m, firsts[f]).row(0), params);
      const double px1 = p1[static_cast<std::size_t>(firsts[f])];
      for (std::size_t x2 = 0; x2 < vocab; ++x2) law[f * vocab + x2] = px1 * p2[x2];
      covered += px1;
    }
    law[other] = 1.0 - covered;
    return law;
  };
  const std::vector<double> target_law = law_of(big), draft_law = law_of(little);

  constexpr std::size_t runs = kjv_runs;
  const auto sample = [&](auto&& generate) {
    std::vector<std::uint64_t> counts(target_law.size(), 0);
    for (std::size_t run = 0; run < runs; ++run) {
      const auto t = generate(run);
      ++counts[bin_of(t[0], t[1])];
    }
    return counts;
  };
  specdec::speculative_decoder dec(little, big, gamma_policy(3), specdec::rejection_sampling{}, params);
  std::size_t rejected_runs = 0;
  const auto counts = sample([&](std::size_t run) {
    dec.set_seed(run);
    auto r = dec.generate(prompt, {.max_new_tokens = 2, .stop_at_eos = false, .sync_caches = false});
    rejected_runs += r.stats.rollbacks > 0;
    return r.tokens;
  });
  EXPECT_GT(rejected_runs, runs / 20) << "the draft is rejected sometimes, so rejection sampling is exercised";
  const specdec::testing::fit_result f = specdec::testing::goodness_of_fit(target_law, counts);
  EXPECT_TRUE(f.passed()) << f.describe();

  // Negative control, sampled: kjv-little decoding alone fails the same check.
  specdec::autoregressive_decoder alone(little, params);
  const auto draft_counts = sample([&](std::size_t run) {
    alone.set_seed(run);
    return alone.generate(prompt, {.max_new_tokens = 2, .stop_at_eos = false, .sync_caches = false}).tokens;
  });
  const specdec::testing::fit_result fd = specdec::testing::goodness_of_fit(target_law, draft_counts);
  EXPECT_FALSE(fd.passed()) << "kjv-little's own samples passed: " << fd.describe();

  // The power of this check at this N, by simulation (200 samples each).
  const double power_draft = specdec::testing::rejection_rate(target_law, draft_law, runs, 200);
  const double power_tv002 =
      specdec::testing::rejection_rate(target_law, specdec::testing::biased_law(target_law, draft_law, 0.02), runs, 200);
  std::printf("kjv smoke test: %zu bins, %s; kjv-little alone: %s; power against kjv-little's law %.2f, against TV "
              "0.02 towards it %.2f; runs with a rejection %zu/%zu\n",
              target_law.size(), f.describe().c_str(), fd.describe().c_str(), power_draft, power_tv002, rejected_runs,
              runs);
  EXPECT_GE(power_draft, 0.9);
}

// ---------------------------------------------------------------------------------------
// Errors.
template <class F>
std::string thrown_message(F&& f) {
  try {
    f();
  } catch (const specdec::error& e) {
    return e.what();
  }
  return "<nothing thrown>";
}

TEST(decoder_errors, bad_parameters_throw_clear_messages) {
  markov_model t(markov_target_opts(6, 1, 1)), d(markov_draft_opts(6, 1, 1)), d5(markov_target_opts(5, 1, 1));
  using specdec::speculative_decoder;
  EXPECT_THROW(speculative_decoder(d, t, gamma_policy(0), specdec::greedy_match{}), specdec::invalid_argument);
  EXPECT_THROW(speculative_decoder(d, t, max_prob(1.5f, 4), specdec::greedy_match{}), specdec::invalid_argument);
  EXPECT_THROW(speculative_decoder(d, t, max_prob(-0.1f, 4), specdec::greedy_match{}), specdec::invalid_argument);
  EXPECT_THROW(speculative_decoder(d, t, max_prob(std::nanf(""), 4), specdec::greedy_match{}),
               specdec::invalid_argument);
  EXPECT_THROW(speculative_decoder(d, t, gamma_policy(2), distance(std::nanf(""))), specdec::invalid_argument);
  EXPECT_THROW(speculative_decoder(d, t, gamma_policy(2), distance(-1.0f)), specdec::invalid_argument);
  EXPECT_THROW(speculative_decoder(d, t, gamma_policy(2), specdec::greedy_match{}, {.temperature = -1.0f}),
               specdec::invalid_argument);
  EXPECT_THROW(specdec::autoregressive_decoder(t, {.temperature = -1.0f}), specdec::invalid_argument);
  EXPECT_THROW(speculative_decoder(d, d, gamma_policy(2), specdec::greedy_match{}), specdec::invalid_argument);
  // The messages name the knob and the value seen.
  const auto msg_of = [&](auto fb, auto rb, sampling_params sp = {}) {
    return thrown_message([&] { speculative_decoder(d, t, fb, rb, sp); });
  };
  const std::string g0 = msg_of(gamma_policy(0), specdec::greedy_match{});
  EXPECT_NE(g0.find("gamma"), std::string::npos) << g0;
  const std::string a15 = msg_of(max_prob(1.5f, 4), specdec::greedy_match{});
  EXPECT_NE(a15.find("alpha_fb"), std::string::npos) << a15;
  EXPECT_NE(a15.find("1.5"), std::string::npos) << a15;
  const std::string rnan = msg_of(gamma_policy(2), distance(std::nanf("")));
  EXPECT_NE(rnan.find("alpha_rb"), std::string::npos) << rnan;
  EXPECT_NE(rnan.find("nan"), std::string::npos) << rnan;
  const std::string tneg = msg_of(gamma_policy(2), specdec::greedy_match{}, {.temperature = -1.0f});
  EXPECT_NE(tneg.find("temperature"), std::string::npos) << tneg;
  const std::string same = thrown_message([&] { speculative_decoder(d, d, gamma_policy(2), specdec::greedy_match{}); });
  EXPECT_NE(same.find("same object"), std::string::npos) << same;

  const std::string vm = thrown_message([&] { speculative_decoder(d5, t, gamma_policy(2), specdec::greedy_match{}); });
  EXPECT_NE(vm.find("5"), std::string::npos) << vm;
  EXPECT_NE(vm.find("6"), std::string::npos) << vm;
  EXPECT_THROW(speculative_decoder(d5, t, gamma_policy(2), specdec::greedy_match{}), specdec::vocabulary_mismatch);

  speculative_decoder dec(d, t, gamma_policy(2), specdec::greedy_match{});
  const std::vector<token_id> bad{1, 6};
  EXPECT_THROW(dec.generate(bad, {}), specdec::token_out_of_range);
  const std::string oor = thrown_message([&] { dec.generate(bad, {}); });
  EXPECT_NE(oor.find("token id 6"), std::string::npos) << oor;
  EXPECT_THROW(dec.generate(std::vector<token_id>{}, {}), specdec::invalid_argument);
  EXPECT_THROW(dec.generate(std::vector<token_id>{1}, {.stop_sequences = {{}}}), specdec::invalid_argument);
  specdec::autoregressive_decoder ar(t);
  EXPECT_THROW(ar.generate(std::vector<token_id>{}, {}), specdec::invalid_argument);
  EXPECT_THROW(ar.generate(bad, {}), specdec::token_out_of_range);
}

// A model that answers a block with one row too few: the decoder must refuse the answer.
struct short_answer_model : markov_model {
  using markov_model::markov_model;
  specdec::logits_block forward(std::span<const token_id> tokens) {
    specdec::logits_block l = markov_model::forward(tokens);
    if (l.rows > 0) --l.rows;
    return l;
  }
};
static_assert(specdec::language_model<short_answer_model>);

TEST(decoder_errors, a_model_answering_with_the_wrong_number_of_rows_is_an_error) {
  short_answer_model bad_target(markov_target_opts(6, 1, 1));
  markov_model draft(markov_draft_opts(6, 1, 1));
  specdec::speculative_decoder dec(draft, bad_target, gamma_policy(3), specdec::greedy_match{});
  const std::vector<token_id> prompt{1, 2};
  const std::string msg = thrown_message([&] { (void)dec.generate(prompt, {.max_new_tokens = 8}); });
  EXPECT_NE(msg.find("speculative_decoder: the target's forward returned"), std::string::npos) << msg;
  EXPECT_NE(msg.find("rows of 6"), std::string::npos) << msg;
}

// The same for the draft: every answer one row short (the single-token forwards then
// answer with no row at all), or one row long.
// DISABLED until the decoder checks the draft's answers as it checks the target's: today
// it accepts any draft block answer with at least one row and does not check the
// single-token answers at all, so one row too many goes unnoticed and an empty answer is
// read at row -1 (an out-of-bounds read; ASan reports it). The fix belongs to
// decoder.hpp / batch_decoder.hpp (check_logits_shape with the exact row count after
// every draft forward); enable this test with it.
struct miscounting_draft : markov_model {
  using markov_model::markov_model;
  long extra = 0;  ///< rows added to (or, negative, removed from) every answer
  specdec::logits_block forward(std::span<const token_id> tokens) {
    specdec::logits_block l = markov_model::forward(tokens);
    const long rows = static_cast<long>(l.rows) + extra;
    if (rows > static_cast<long>(l.rows)) {  // room for the extra rows: repeat the last one
      pad.assign(l.data, l.data + l.rows * l.vocab);
      for (long i = static_cast<long>(l.rows); i < rows; ++i) pad.insert(pad.end(), l.data + (l.rows - 1) * l.vocab, l.data + l.rows * l.vocab);
      l.data = pad.data();
    }
    l.rows = static_cast<std::size_t>(std::max(0L, rows));
    return l;
  }
  std::vector<float> pad;
};
static_assert(specdec::language_model<miscounting_draft>);

TEST(decoder_errors, a_draft_answering_with_the_wrong_number_of_rows_is_an_error) {
  markov_model target(markov_target_opts(6, 1, 1));
  for (long extra : {-1L, 1L}) {
    SCOPED_TRACE("extra rows " + std::to_string(extra));
    miscounting_draft draft(markov_draft_opts(6, 1, 1));
    draft.extra = extra;
    specdec::speculative_decoder dec(draft, target, gamma_policy(3), specdec::greedy_match{});
    const std::vector<token_id> prompt{1, 2, 3};
    const std::string msg = thrown_message([&] { (void)dec.generate(prompt, {.max_new_tokens = 8}); });
    EXPECT_NE(msg.find("draft"), std::string::npos) << msg;
    EXPECT_NE(msg.find("rows"), std::string::npos) << msg;
  }
}

// A rollback policy that breaks its contract (accepted > k, next out of range) is an error
// naming the policy's verdict and what was expected, never an out-of-range read.
struct lying_rollback {
  static constexpr bool exact = true;
  long accepted_offset = 0;  ///< accepted = k + this
  token_id next = 0;
  specdec::verify_result verify(const specdec::verify_input& in) const {
    return {static_cast<std::size_t>(static_cast<long>(in.k()) + accepted_offset), next};
  }
};

TEST(decoder_errors, a_rollback_verdict_breaking_its_contract_is_an_error) {
  markov_model target(markov_target_opts(6, 1, 1)), draft(markov_draft_opts(6, 1, 1));
  const std::vector<token_id> prompt{1, 2};
  struct bad_verdict {
    long accepted_offset;
    token_id next;
    std::string value;  // as the message must show it
  };
  for (const bad_verdict& b : {bad_verdict{1, 0, "accepted = 4"}, bad_verdict{0, 6, "next = 6"},
                               bad_verdict{0, -1, "next = -1"}, bad_verdict{7, 2, "accepted = 10"}}) {
    SCOPED_TRACE(b.value);
    specdec::speculative_decoder dec(draft, target, gamma_policy(3), lying_rollback{b.accepted_offset, b.next},
                                     {.temperature = 1.0f});
    EXPECT_THROW((void)dec.generate(prompt, {.max_new_tokens = 8, .stop_at_eos = false}), specdec::error);
    const std::string msg = thrown_message([&] { (void)dec.generate(prompt, {.max_new_tokens = 8, .stop_at_eos = false}); });
    EXPECT_NE(msg.find("rollback"), std::string::npos) << msg;
    EXPECT_NE(msg.find(b.value), std::string::npos) << msg;
    EXPECT_NE(msg.find("expected"), std::string::npos) << msg;
  }
}

// A model that throws from its forward on one chosen call (after its cache has grown, the
// worst case): the decoder is used again afterwards.
struct failing_model : markov_model {
  using markov_model::markov_model;
  long fail_on_call = -1;  ///< the 0-based forward call that throws; -1 = never
  long calls = 0;
  specdec::logits_block forward(std::span<const token_id> tokens) {
    specdec::logits_block l = markov_model::forward(tokens);
    if (calls++ == fail_on_call) throw std::runtime_error("failing_model: injected failure");
    return l;
  }
};

// After an exception mid-generation (from the draft, the target or the token callback),
// the same decoder gives exactly what a fresh one gives: generate resets the caches, the
// random source and the policies.
TEST(decoder_errors, a_decoder_reused_after_an_exception_gives_a_fresh_decoders_output) {
  const std::vector<token_id> prompt{1, 4};
  const generation_options opts{.max_new_tokens = 40, .stop_at_eos = false};
  for (const sampling_params& params : {sampling_params{}, sampling_params{.temperature = 1.0f, .top_k = 4}}) {
    SCOPED_TRACE("temperature " + std::to_string(params.temperature));
    const auto fresh_output = [&] {
      markov_model d(markov_draft_opts(6, 2, 4)), t(markov_target_opts(6, 2, 4));
      specdec::speculative_decoder fresh(d, t, specdec::adaptive_gamma{}, specdec::rejection_sampling{}, params, 9);
      return fresh.generate(prompt, opts).tokens;
    }();
    ASSERT_EQ(fresh_output.size(), 40u);
    for (int who = 0; who < 3; ++who) {  // 0: draft, 1: target, 2: callback
      SCOPED_TRACE("failure in " + std::string(who == 0 ? "the draft" : who == 1 ? "the target" : "the callback"));
      failing_model d(markov_draft_opts(6, 2, 4)), t(markov_target_opts(6, 2, 4));
      specdec::speculative_decoder dec(d, t, specdec::adaptive_gamma{}, specdec::rejection_sampling{}, params, 9);
      if (who == 0) d.fail_on_call = 9;
      if (who == 1) t.fail_on_call = 4;
      std::size_t seen = 0;
      const auto throwing_callback = [&](token_id) {
        if (who == 2 && ++seen == 17) throw std::runtime_error("callback: injected failure");
      };
      EXPECT_THROW((void)dec.generate(prompt, opts, throwing_callback), std::runtime_error);
      d.fail_on_call = t.fail_on_call = -1;
      EXPECT_EQ(dec.generate(prompt, opts).tokens, fresh_output);
      EXPECT_EQ(dec.generate(prompt, opts).tokens, fresh_output);  // and again
    }
    // The autoregressive decoder too.
    failing_model m(markov_target_opts(6, 2, 4));
    specdec::autoregressive_decoder ar(m, params, 9);
    const auto ar_fresh = ar.generate(prompt, opts).tokens;
    m.fail_on_call = m.calls + 12;
    EXPECT_THROW((void)ar.generate(prompt, opts), std::runtime_error);
    EXPECT_EQ(ar.generate(prompt, opts).tokens, ar_fresh);
  }
}

TEST(decoder_errors, context_edge) {
  markov_model t({.vocab = 6, .seed = 1, .context = 10});
  markov_model d({.vocab = 6, .seed = 1, .noise_seed = 2, .noise = 0.7f, .context = 12});
  specdec::speculative_decoder dec(d, t, gamma_policy(4), specdec::rejection_sampling{});
  EXPECT_EQ(dec.context_length(), 10u);
  const std::vector<token_id> long_prompt(10, 1);
  const std::string msg = thrown_message([&] { dec.generate(long_prompt, {}); });
  EXPECT_NE(msg.find("10"), std::string::npos) << msg;
  EXPECT_THROW(dec.generate(long_prompt, {}), specdec::context_overflow);
  const std::vector<token_id> prompt(4, 1);
  for (float temp : {0.0f, 1.0f}) {
    dec.set_params({.temperature = temp});
    const auto r = dec.generate(prompt, {.max_new_tokens = 100, .stop_at_eos = false});
    EXPECT_EQ(r.stop_reason, "context");
    EXPECT_EQ(r.tokens.size(), 6u);  // prompt + tokens fill the 10-token context
    if (temp == 0.0f) {
      EXPECT_EQ(r.tokens, autoregressive(t, prompt, {.max_new_tokens = 100, .stop_at_eos = false}));
    }
  }
}

/// A local verifier that records the decoder's `expect_length` calls.
struct length_recording_verifier : specdec::local_verifier<markov_model, specdec::greedy_match> {
  using local_verifier::local_verifier;
  std::vector<std::size_t> told;
  void expect_length(std::size_t n) { told.push_back(n); }
};
static_assert(specdec::length_aware_verifier<length_recording_verifier>);

TEST(decoder_verifiers, a_length_aware_verifier_is_told_where_each_generation_ends) {
  markov_model t({.vocab = 6, .seed = 1, .context = 10});
  markov_model d({.vocab = 6, .seed = 1, .noise_seed = 2, .noise = 0.7f, .context = 12});
  specdec::basic_speculative_decoder dec(d, gamma_policy(3), length_recording_verifier(t, specdec::greedy_match{}));
  const std::vector<token_id> prompt(4, 1);
  (void)dec.generate(prompt, {.max_new_tokens = 3, .stop_at_eos = false});
  (void)dec.generate(prompt, {.max_new_tokens = 100, .stop_at_eos = false});  // the context ends it first
  (void)dec.generate(std::vector<token_id>(2, 1), {.max_new_tokens = 0});
  EXPECT_EQ(dec.verifier().told, (std::vector<std::size_t>{7, 10, 2}));
}

// ---------------------------------------------------------------------------------------
// Streaming and stopping.
TEST(decoder_streaming, callback_sees_the_result_tokens_in_order_and_can_stop) {
  markov_model t(markov_target_opts(8, 2, 9)), d(markov_draft_opts(8, 2, 9));
  specdec::speculative_decoder dec(d, t, gamma_policy(4), specdec::rejection_sampling{}, {.temperature = 1.0f}, 3);
  const std::vector<token_id> prompt{1, 4};
  std::vector<token_id> seen;
  const auto r = dec.generate(prompt, {.max_new_tokens = 37, .stop_at_eos = false},
                              [&](token_id x) { seen.push_back(x); });
  EXPECT_EQ(r.tokens.size(), 37u);
  EXPECT_EQ(r.stop_reason, "max_tokens");
  EXPECT_EQ(seen, r.tokens);

  // Returning false stops right after that token.
  std::vector<token_id> seen2;
  const auto r2 = dec.generate(prompt, {.max_new_tokens = 37, .stop_at_eos = false}, [&](token_id x) {
    seen2.push_back(x);
    return seen2.size() < 5;
  });
  EXPECT_EQ(seen2.size(), 5u);
  EXPECT_EQ(r2.tokens, seen2);
  EXPECT_EQ(r2.stop_reason, "callback");
  EXPECT_EQ(r2.tokens, std::vector<token_id>(r.tokens.begin(), r.tokens.begin() + 5));  // same seed

  // A stop sequence taken from the full output: generation ends right after its first
  // occurrence, which is kept.
  const std::vector<token_id> stop{r.tokens[20], r.tokens[21], r.tokens[22]};
  const auto r3 = dec.generate(prompt, {.max_new_tokens = 37, .stop_at_eos = false, .stop_sequences = {{7, 7, 7, 7, 7, 7}, stop}});
  EXPECT_EQ(r3.stop_reason, "stop_sequence");
  ASSERT_GE(r3.tokens.size(), 3u);
  EXPECT_TRUE(std::equal(stop.begin(), stop.end(), r3.tokens.end() - 3));
  EXPECT_LE(r3.tokens.size(), 23u);
  EXPECT_EQ(r3.tokens, std::vector<token_id>(r.tokens.begin(), r.tokens.begin() + static_cast<std::ptrdiff_t>(r3.tokens.size())));

  // EOS stops generation and is kept; the markov chain reaches id 2 quickly.
  for (std::uint64_t seed : {3u, 4u, 5u}) {
    dec.set_seed(seed);
    std::vector<token_id> streamed;
    const auto r4 = dec.generate(prompt, {.max_new_tokens = 200}, [&](token_id x) { streamed.push_back(x); });
    ASSERT_EQ(r4.stop_reason, "eos") << "seed " << seed;
    EXPECT_EQ(r4.tokens.back(), specdec::eos_token);
    EXPECT_EQ(std::count(r4.tokens.begin(), r4.tokens.end(), specdec::eos_token), 1);
    EXPECT_EQ(streamed, r4.tokens);
  }
  dec.set_seed(3);

  // max_new_tokens for every budget, greedy and sampled.
  for (std::size_t m : {0u, 1u, 2u, 3u, 5u, 8u}) {
    std::size_t calls = 0;
    const auto rm = dec.generate(prompt, {.max_new_tokens = m, .stop_at_eos = false}, [&](token_id) { ++calls; });
    EXPECT_EQ(rm.tokens.size(), m);
    EXPECT_EQ(calls, m);
    EXPECT_EQ(rm.stop_reason, "max_tokens");
  }
}

TEST(decoder_streaming, autoregressive_respects_the_same_options) {
  markov_model t(markov_target_opts(8, 1, 12));
  specdec::autoregressive_decoder ar(t, {.temperature = 1.0f}, 8);
  const std::vector<token_id> prompt{1};
  std::vector<token_id> seen;
  const auto r = ar.generate(prompt, {.max_new_tokens = 25, .stop_at_eos = false}, [&](token_id x) { seen.push_back(x); });
  EXPECT_EQ(r.tokens, seen);
  EXPECT_EQ(r.tokens.size(), 25u);
  EXPECT_EQ(r.stats.target_calls, 25u);
  EXPECT_EQ(r.stats.method, "autoregressive");
  EXPECT_EQ(ar.generate(prompt, {.max_new_tokens = 25, .stop_at_eos = false}).tokens, r.tokens);
  EXPECT_EQ(t.cache_length(), prompt.size() + 24);
  const auto r2 = ar.generate(prompt, {.max_new_tokens = 25, .stop_at_eos = false}, [&](token_id) { return false; });
  EXPECT_EQ(r2.tokens.size(), 1u);
  EXPECT_EQ(r2.stop_reason, "callback");
}

// A model that counts its forward calls (to tell which call a streamed token came from).
template <class M>
struct counting_model {
  M& inner;
  std::size_t forwards = 0;
  std::size_t vocab_size() const { return inner.vocab_size(); }
  std::size_t context_length() const { return inner.context_length(); }
  std::size_t cache_length() const { return inner.cache_length(); }
  specdec::logits_block forward(std::span<const token_id> t) {
    ++forwards;
    return inner.forward(t);
  }
  void truncate(std::size_t n) { inner.truncate(n); }
};

// Time to first token and the decode-phase rate: the first step is the first target
// call's commit, whatever it emitted; the rest of the generation is the decode phase.
TEST(decoder_telemetry, first_step_is_what_the_first_target_call_emitted) {
  markov_model t(markov_target_opts(8, 2, 9)), d(markov_draft_opts(8, 2, 9));
  counting_model<markov_model> target{t};
  const std::vector<token_id> prompt{1, 4};
  for (std::size_t gamma : {1u, 3u, 6u}) {
    for (std::uint64_t seed : {1u, 2u, 3u}) {
      specdec::speculative_decoder dec(d, target, gamma_policy(gamma), specdec::rejection_sampling{},
                                       {.temperature = 1.0f}, seed);
      std::vector<std::size_t> call_of_token;  // the target call that preceded each token
      target.forwards = 0;
      const auto r = dec.generate(prompt, {.max_new_tokens = 30, .stop_at_eos = false},
                                  [&](token_id) { call_of_token.push_back(target.forwards); });
      const auto& s = r.stats;
      const auto first_call = static_cast<std::size_t>(std::count(call_of_token.begin(), call_of_token.end(), 1u));
      EXPECT_EQ(s.first_step_tokens, first_call) << "gamma " << gamma << ", seed " << seed;
      EXPECT_GE(s.first_step_tokens, 1u);
      EXPECT_LE(s.first_step_tokens, gamma + 1);
      EXPECT_GT(s.first_token_seconds, 0.0);
      EXPECT_LE(s.first_token_seconds, s.total_seconds);
      EXPECT_GT(s.decode_tokens_per_second(), 0.0);
    }
  }
  specdec::autoregressive_decoder ar(target);
  const auto r = ar.generate(prompt, {.max_new_tokens = 12, .stop_at_eos = false});
  EXPECT_EQ(r.stats.first_step_tokens, 1u);
  EXPECT_GT(r.stats.first_token_seconds, 0.0);
  EXPECT_LE(r.stats.first_token_seconds, r.stats.total_seconds);
  const auto none = ar.generate(prompt, {.max_new_tokens = 0});
  EXPECT_EQ(none.stats.first_step_tokens, 0u);
  EXPECT_EQ(none.stats.first_token_seconds, 0.0);
}

// Lossy (BiLD) decoding with a budget emits unverified drafts but never more than asked.
TEST(decoder_bild, lossy_policy_respects_budget_and_eos) {
  markov_model t(markov_target_opts(8, 2, 9)), d(markov_draft_opts(8, 2, 9));
  specdec::speculative_decoder dec(d, t, never_fallback{}, distance(0.5f));
  const std::vector<token_id> prompt{1};
  for (std::size_t m : {1u, 4u, 19u}) {
    const auto r = dec.generate(prompt, {.max_new_tokens = m, .stop_at_eos = false});
    EXPECT_EQ(r.tokens.size(), m);
    EXPECT_EQ(r.stats.target_calls, 0u);
    EXPECT_EQ(r.tokens, autoregressive(d, prompt, {.max_new_tokens = m, .stop_at_eos = false}));
  }
}

// Policies are reset at the start of every generate: an adaptive policy does not carry
// what it learnt into the next call, so the same seed gives the same tokens.
TEST(decoder_policies, adaptive_policy_is_reset_and_output_repeatable) {
  markov_model t(markov_target_opts(8, 2, 9)), d(markov_draft_opts(8, 2, 9));
  auto dec = specdec::make_speculative_decoder(d, t, specdec::adaptive_gamma{.initial = 2}, specdec::rejection_sampling{},
                                               {.temperature = 1.0f}, 11);
  const std::vector<token_id> prompt{1};
  const generation_options o{.max_new_tokens = 50, .stop_at_eos = false};
  const auto a = dec.generate(prompt, o);
  EXPECT_NE(dec.fallback().current_gamma(), 2u);  // it learnt something...
  const auto b = dec.generate(prompt, o);         // ...and forgot it
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.stats.draft_tokens_proposed, b.stats.draft_tokens_proposed);
  dec.set_seed(12);
  EXPECT_NE(dec.generate(prompt, o).tokens, a.tokens);
}

// Under greedy decoding a policy is shown the draft's plain softmax (it carries the
// confidence the one-hot q lacks), unless it declares `reads_confidence = false`: then
// the decoder skips that softmax and shows the one-hot q. Both see the same tokens.
template <bool Reads>
struct q_recorder {
  static constexpr bool reads_confidence = Reads;
  std::vector<float>* max_q;  // max_y q(y) of every decision
  specdec::draft_action decide(const specdec::draft_step& s) {
    max_q->push_back(*std::ranges::max_element(s.q));
    return s.position + 1 >= 3 ? specdec::draft_action::keep_and_stop : specdec::draft_action::keep_and_continue;
  }
  void observe(const specdec::step_outcome&) {}
};
static_assert(!specdec::reads_confidence_v<q_recorder<false>> && specdec::reads_confidence_v<q_recorder<true>>);

// The decoder resets its policies before every generation; expected_speedup_gamma with
// carry_over keeps what it learnt across them (and the greedy output stays the target's).
TEST(decoder_policies, carry_over_survives_the_reset_of_each_generation) {
  markov_model t(markov_target_opts(8, 2, 9)), d(markov_draft_opts(8, 2, 9));
  const std::vector<token_id> prompt{1, 4};
  const generation_options o{.max_new_tokens = 40, .stop_at_eos = false};
  const auto want = autoregressive(t, prompt, o);
  for (const bool carry : {false, true}) {
    auto dec = specdec::make_speculative_decoder(
        d, t, specdec::expected_speedup_gamma{.decay = 1.0, .cost_ratio = 0.1, .carry_over = carry},
        specdec::greedy_match{});
    EXPECT_EQ(dec.generate(prompt, o).tokens, want);
    const double after_one = dec.fallback().state_.successes + dec.fallback().state_.failures;
    EXPECT_EQ(dec.generate(prompt, o).tokens, want);
    const double after_two = dec.fallback().state_.successes + dec.fallback().state_.failures;
    if (carry) {
      EXPECT_GT(after_two, after_one + 1.0);  // the second generation's trials add to the first's
    } else {
      EXPECT_DOUBLE_EQ(after_two, after_one);
    }
  }
}

TEST(decoder_policies, greedy_policies_see_the_softmax_unless_they_declare_they_never_read_it) {
  markov_model t(markov_target_opts(8, 2, 9)), d(markov_draft_opts(8, 2, 9));
  const std::vector<token_id> prompt{1};
  const generation_options o{.max_new_tokens = 30, .stop_at_eos = false};
  std::vector<float> soft, hard;
  specdec::speculative_decoder reads(d, t, q_recorder<true>{&soft}, specdec::greedy_match{});
  specdec::speculative_decoder blind(d, t, q_recorder<false>{&hard}, specdec::greedy_match{});
  const auto a = reads.generate(prompt, o);
  const auto b = blind.generate(prompt, o);
  EXPECT_EQ(a.tokens, b.tokens);
  ASSERT_EQ(soft.size(), hard.size());
  ASSERT_FALSE(soft.empty());
  for (float m : hard) EXPECT_EQ(m, 1.0f);  // one-hot
  EXPECT_LT(*std::ranges::min_element(soft), 1.0f);  // a real distribution somewhere
}

TEST(decoder_policies, lossy_policies_run_sampled) {
  markov_model t(markov_target_opts(8, 2, 9)), d(markov_draft_opts(8, 2, 9));
  const std::vector<token_id> prompt{1};
  specdec::speculative_decoder bild(d, t, max_prob(0.5f, 6), distance(1.0f), {.temperature = 1.0f}, 3);
  specdec::speculative_decoder typical(d, t, gamma_policy(3), specdec::typical_acceptance{}, {.temperature = 0.7f}, 3);
  for (std::size_t m : {1u, 7u, 40u}) {
    const auto r = bild.generate(prompt, {.max_new_tokens = m, .stop_at_eos = false});
    EXPECT_EQ(r.tokens.size(), m);
    EXPECT_EQ(r.stats.tokens_emitted, m);
    const auto r2 = typical.generate(prompt, {.max_new_tokens = m, .stop_at_eos = false});
    EXPECT_EQ(r2.tokens.size(), m);
  }
}

// Concept checks: a type missing a member is rejected at the class template.
struct no_truncate_model {
  std::size_t vocab_size() const { return 2; }
  std::size_t context_length() const { return 2; }
  std::size_t cache_length() const { return 0; }
  specdec::logits_block forward(std::span<const token_id>) { return {}; }
};
template <class D, class F, class R>
concept decoder_instantiable = requires { typename specdec::speculative_decoder<D, markov_model, F, R>; };
static_assert(decoder_instantiable<markov_model, never_fallback, specdec::greedy_match>);
static_assert(!decoder_instantiable<no_truncate_model, never_fallback, specdec::greedy_match>);
static_assert(!decoder_instantiable<markov_model, specdec::greedy_match, specdec::greedy_match>);

}  // namespace
