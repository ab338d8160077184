// Tests for include/specdec/batch_decoder.hpp: batched autoregressive and speculative
// decoding with continuous batching.
//
// - Greedy exactness: batched speculative decoding gives, for every sequence, exactly the
//   target's own greedy tokens (markov pair with several policies; kjv-little -> kjv-big),
//   with requests joining mid-run and leaving as they finish.
// - Per-sequence reproducibility: a request's sampled tokens are the same alone or in a
//   batch of 5, and equal the single-sequence decoder's with seed + id.
// - Preemption, errors, statistics, stop conditions.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <memory>
#include <string>
#include <vector>

#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/batch.hpp"
#include "specdec/batch_decoder.hpp"
#include "specdec/decoder.hpp"
#include "specdec/distance.hpp"
#include "specdec/fallback.hpp"
#include "specdec/rollback.hpp"
#include "specdec/testing/batch_archetypes.hpp"

namespace {
using specdec::batch_request;
using specdec::batch_result;
using specdec::generation_options;
using specdec::request_id;
using specdec::sampling_params;
using specdec::token_id;
using specdec::testing::markov_model;
using specdec::testing::markov_options;

constexpr markov_options target_opts{.vocab = 8, .order = 2, .seed = 11};
constexpr markov_options draft_opts{.vocab = 8, .order = 2, .seed = 11, .noise_seed = 111, .noise = 0.7f};

std::shared_ptr<const specdec::cpu::checkpoint> load(const char* name) {
  return std::make_shared<const specdec::cpu::checkpoint>(
      specdec::cpu::load_checkpoint(std::string(SPECDEC_MODELS_DIR) + "/" + name));
}
const std::shared_ptr<const specdec::cpu::checkpoint>& kjv_big() {
  static const auto ck = load("kjv-big.bin");
  return ck;
}
const std::shared_ptr<const specdec::cpu::checkpoint>& kjv_little() {
  static const auto ck = load("kjv-little.bin");
  return ck;
}
auto transformer_batch(const std::shared_ptr<const specdec::cpu::checkpoint>& ck) {
  return specdec::independent_batch<specdec::cpu::transformer>(
      [ck] { return std::make_unique<specdec::cpu::transformer>(ck); });
}

// Markov requests: varied prompts and lengths (EOS is an ordinary token of the chain).
std::vector<batch_request> markov_requests(std::size_t n, std::size_t first_id = 0) {
  std::vector<batch_request> v;
  for (std::size_t i = 0; i < n; ++i) {
    batch_request r;
    r.id = first_id + i;
    r.prompt = {1};
    for (std::size_t j = 0; j < i % 4; ++j) r.prompt.push_back(static_cast<token_id>((3 * i + j) % 8));
    r.options = {.max_new_tokens = (i % 2 == 0) ? 9 + i : 33 + 2 * i, .stop_at_eos = false};
    v.push_back(r);
  }
  return v;
}

std::map<request_id, batch_result> by_id(std::vector<batch_result> v) {
  std::map<request_id, batch_result> m;
  for (auto& r : v) m.emplace(r.id, std::move(r));
  return m;
}

/// Runs `dec` with continuous batching: the first half of the requests is submitted at
/// once, the others one per step while the batch runs.
template <class Dec>
std::map<request_id, batch_result> run_staggered(Dec& dec, const std::vector<batch_request>& reqs) {
  const std::size_t half = reqs.size() / 2;
  for (std::size_t i = 0; i < half; ++i) dec.submit(reqs[i]);
  for (std::size_t i = half; i < reqs.size(); ++i) {
    dec.step();
    dec.submit(reqs[i]);
  }
  return by_id(dec.run());
}

template <class M>
std::vector<token_id> target_greedy(M& m, const batch_request& r) {
  specdec::autoregressive_decoder ar(m);
  return ar.generate(r.prompt, r.options).tokens;
}

// ---------------------------------------------------------------------------------------
TEST(batched_autoregressive, greedy_and_sampled_equal_the_single_sequence_decoder_with_seed_plus_id) {
  const auto reqs = markov_requests(7);
  for (const sampling_params params : {sampling_params{}, sampling_params{.temperature = 1.0f, .top_p = 0.9f}}) {
    auto bm = specdec::testing::markov_batch(target_opts);
    specdec::batched_autoregressive_decoder dec(bm, params, /*seed=*/100);
    const auto got = run_staggered(dec, reqs);
    ASSERT_EQ(got.size(), reqs.size());
    for (const auto& r : reqs) {
      markov_model single(target_opts);
      specdec::autoregressive_decoder ar(single, params, 100 + r.id);
      const auto want = ar.generate(r.prompt, r.options);
      const auto& res = got.at(r.id);
      EXPECT_EQ(res.result.tokens, want.tokens) << "request " << r.id << ", T=" << params.temperature;
      EXPECT_EQ(res.result.stop_reason, want.stop_reason);
      EXPECT_EQ(res.result.stats.tokens_emitted, res.result.tokens.size());
      EXPECT_EQ(res.result.stats.target_calls, res.result.tokens.size());  // one token per step
      EXPECT_EQ(res.result.stats.first_step_tokens, res.result.tokens.empty() ? 0u : 1u);
      EXPECT_LE(res.result.stats.first_token_seconds, res.result.stats.total_seconds);
      EXPECT_EQ(res.timing.steps_in_batch, res.result.tokens.size());
      EXPECT_EQ(res.timing.finished_step, res.timing.admitted_step + res.timing.steps_in_batch);
    }
    EXPECT_EQ(bm.sequence_count(), 0u);  // every sequence left the model
    EXPECT_TRUE(dec.idle());
  }
}

// ---------------------------------------------------------------------------------------
// Greedy exactness of batched speculative decoding on the markov pair, several policies.
template <class Fallback, class Rollback>
void expect_markov_greedy_exact(Fallback fb, Rollback rb, const char* what) {
  const auto reqs = markov_requests(8);
  auto draft = specdec::testing::markov_batch(draft_opts);
  auto target = specdec::testing::markov_batch(target_opts);
  specdec::batched_speculative_decoder dec(draft, target, fb, rb);
  const auto got = run_staggered(dec, reqs);
  ASSERT_EQ(got.size(), reqs.size());
  std::size_t proposed = 0;
  for (const auto& r : reqs) {
    markov_model single(target_opts);
    const auto& res = got.at(r.id);
    EXPECT_EQ(res.result.tokens, target_greedy(single, r)) << what << ", request " << r.id;
    EXPECT_EQ(res.result.stop_reason, "max_tokens");
    EXPECT_EQ(res.result.stats.tokens_emitted, res.result.tokens.size());
    EXPECT_EQ(res.result.stats.target_calls, res.timing.steps_in_batch);
    EXPECT_LT(res.timing.steps_in_batch, res.result.tokens.size()) << what << ": no speculation happened";
    // The first step emitted the accepted drafts of the first verification plus one token.
    EXPECT_GE(res.result.stats.first_step_tokens, 1u) << what;
    EXPECT_LE(res.result.stats.first_step_tokens, res.result.tokens.size()) << what;
    EXPECT_GT(res.result.stats.first_token_seconds, 0.0) << what;
    EXPECT_LE(res.result.stats.first_token_seconds, res.result.stats.total_seconds) << what;
    proposed += res.result.stats.draft_tokens_proposed;
  }
  EXPECT_GT(proposed, 0u);
  EXPECT_EQ(draft.sequence_count(), 0u);
  EXPECT_EQ(target.sequence_count(), 0u);
}

TEST(batched_speculative, greedy_equals_target_greedy_for_every_sequence_markov) {
  expect_markov_greedy_exact(specdec::fixed_gamma{.gamma = 1}, specdec::rejection_sampling{}, "gamma 1");
  expect_markov_greedy_exact(specdec::fixed_gamma{.gamma = 4}, specdec::greedy_match{}, "gamma 4 greedy_match");
  expect_markov_greedy_exact(specdec::fixed_gamma{.gamma = 7}, specdec::rejection_sampling{}, "gamma 7");
  expect_markov_greedy_exact(specdec::adaptive_gamma{}, specdec::rejection_sampling{}, "adaptive_gamma");
  expect_markov_greedy_exact(specdec::max_prob_fallback{.alpha_fb = 0.5f, .max_draft = 6},
                             specdec::rejection_sampling{}, "max_prob_fallback (discards)");
}

TEST(batched_speculative, greedy_equals_target_greedy_for_every_sequence_kjv) {
  auto little = transformer_batch(kjv_little());
  auto big = transformer_batch(kjv_big());
  std::vector<batch_request> reqs{
      {.prompt = {1}, .options = {.max_new_tokens = 14}, .id = 0},
      {.prompt = {1, 450, 200}, .options = {.max_new_tokens = 6}, .id = 1},
      {.prompt = {1, 1043, 261}, .options = {.max_new_tokens = 16}, .id = 2},
      {.prompt = {1, 450, 200, 300, 17}, .options = {.max_new_tokens = 10}, .id = 3},
  };
  specdec::batched_speculative_decoder dec(little, big, specdec::fixed_gamma{.gamma = 4}, specdec::greedy_match{});
  const auto got = run_staggered(dec, reqs);
  specdec::cpu::transformer single(kjv_big());
  std::size_t accepted = 0;
  for (const auto& r : reqs) {
    EXPECT_EQ(got.at(r.id).result.tokens, target_greedy(single, r)) << "request " << r.id;
    accepted += got.at(r.id).result.stats.draft_tokens_accepted;
  }
  EXPECT_GT(accepted, 0u);
}

// ---------------------------------------------------------------------------------------
// Sampled: a request's tokens do not depend on the batch, and equal the single decoder's.
template <class Fallback, class Rollback>
void expect_sampled_batch_independent(Fallback fb, Rollback rb, const char* what) {
  const sampling_params params{.temperature = 1.0f};
  const std::uint64_t seed = 7;
  const auto reqs = markov_requests(5, /*first_id=*/40);
  // Alone.
  std::map<request_id, std::vector<token_id>> alone;
  for (const auto& r : reqs) {
    auto d = specdec::testing::markov_batch(draft_opts);
    auto t = specdec::testing::markov_batch(target_opts);
    specdec::batched_speculative_decoder dec(d, t, fb, rb, params, seed);
    dec.submit(r);
    auto res = dec.run();
    ASSERT_EQ(res.size(), 1u);
    alone[r.id] = res[0].result.tokens;
    // The single-sequence decoder with seed + id gives the same tokens.
    markov_model sd(draft_opts), st(target_opts);
    specdec::speculative_decoder single(sd, st, fb, rb, params, seed + r.id);
    EXPECT_EQ(single.generate(r.prompt, r.options).tokens, alone[r.id]) << what << ", request " << r.id;
  }
  // In a batch of 5, joining at different steps.
  auto d = specdec::testing::markov_batch(draft_opts);
  auto t = specdec::testing::markov_batch(target_opts);
  specdec::batched_speculative_decoder dec(d, t, fb, rb, params, seed);
  const auto got = run_staggered(dec, reqs);
  std::size_t max_batch = 0;
  for (const auto& r : reqs) {
    EXPECT_EQ(got.at(r.id).result.tokens, alone[r.id]) << what << ", request " << r.id;
    max_batch = std::max(max_batch, got.at(r.id).timing.max_batch_size);
  }
  EXPECT_GE(max_batch, 3u);
}

TEST(batched_speculative, sampled_output_is_independent_of_the_batch_markov) {
  expect_sampled_batch_independent(specdec::fixed_gamma{.gamma = 3}, specdec::rejection_sampling{}, "gamma 3");
  expect_sampled_batch_independent(specdec::adaptive_gamma{}, specdec::rejection_sampling{}, "adaptive");
  expect_sampled_batch_independent(specdec::max_prob_fallback{.alpha_fb = 0.4f, .max_draft = 5},
                                   specdec::distance_rollback<specdec::drafted_cross_entropy>{.alpha_rb = 2.0f},
                                   "BiLD (lossy)");
}

TEST(batched_speculative, sampled_output_is_independent_of_the_batch_kjv) {
  const sampling_params params{.temperature = 1.0f, .top_p = 0.95f};
  auto little = transformer_batch(kjv_little());
  auto big = transformer_batch(kjv_big());
  std::vector<batch_request> reqs;
  for (request_id i = 0; i < 5; ++i)
    reqs.push_back({.prompt = {1, static_cast<token_id>(400 + 37 * i)}, .options = {.max_new_tokens = 8}, .id = i});
  specdec::batched_speculative_decoder batch(little, big, specdec::fixed_gamma{.gamma = 3},
                                             specdec::rejection_sampling{}, params, 5);
  for (const auto& r : reqs) batch.submit(r);
  const auto got = by_id(batch.run());
  // Request 3 alone.
  specdec::batched_speculative_decoder alone(little, big, specdec::fixed_gamma{.gamma = 3},
                                             specdec::rejection_sampling{}, params, 5);
  alone.submit(reqs[3]);
  const auto a = alone.run();
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].result.tokens, got.at(3).result.tokens);
  EXPECT_EQ(got.at(3).timing.max_batch_size, 5u);
  EXPECT_EQ(a[0].timing.max_batch_size, 1u);
}

// ---------------------------------------------------------------------------------------
TEST(batched_speculative, lossy_bild_equals_the_single_sequence_bild_decoder) {
  const auto reqs = markov_requests(6);
  auto d = specdec::testing::markov_batch(draft_opts);
  auto t = specdec::testing::markov_batch(target_opts);
  const specdec::max_prob_fallback fb{.alpha_fb = 0.3f, .max_draft = 8};
  const specdec::distance_rollback<specdec::drafted_cross_entropy> rb{.alpha_rb = 3.0f};
  specdec::batched_speculative_decoder dec(d, t, fb, rb);
  const auto got = run_staggered(dec, reqs);
  for (const auto& r : reqs) {
    markov_model sd(draft_opts), st(target_opts);
    specdec::speculative_decoder single(sd, st, fb, rb, {}, r.id);
    const auto want = single.generate(r.prompt, r.options);
    EXPECT_EQ(got.at(r.id).result.tokens, want.tokens) << "request " << r.id;
    EXPECT_EQ(got.at(r.id).result.stats.target_calls, want.stats.target_calls);
    EXPECT_EQ(got.at(r.id).result.stats.draft_tokens_accepted, want.stats.draft_tokens_accepted);
  }
}

TEST(batched_speculative, stop_conditions_and_callbacks_are_per_request) {
  auto d = specdec::testing::markov_batch(draft_opts);
  auto t = specdec::testing::markov_batch(target_opts);
  specdec::batched_speculative_decoder dec(d, t, specdec::fixed_gamma{.gamma = 4}, specdec::rejection_sampling{});
  markov_model single(target_opts);
  batch_request plain{.prompt = {1, 3}, .options = {.max_new_tokens = 30, .stop_at_eos = false}, .id = 1};
  const auto full = target_greedy(single, plain);
  batch_request with_stop = plain;
  with_stop.id = 2;
  with_stop.options.stop_sequences = {{full[5], full[6]}};
  std::vector<token_id> seen;
  batch_request with_cb = plain;
  with_cb.id = 3;
  with_cb.on_token = [&](token_id x) {
    seen.push_back(x);
    return seen.size() < 4;
  };
  batch_request zero = plain;
  zero.id = 4;
  zero.options.max_new_tokens = 0;
  for (const auto& r : {plain, with_stop, with_cb, zero}) dec.submit(r);
  const auto got = by_id(dec.run());
  EXPECT_EQ(got.at(1).result.tokens, full);
  const auto& s = got.at(2).result;
  EXPECT_EQ(s.stop_reason, "stop_sequence");
  ASSERT_GE(s.tokens.size(), 2u);
  EXPECT_TRUE(std::equal(s.tokens.begin(), s.tokens.end(), full.begin()));
  EXPECT_LE(s.tokens.size(), 7u);
  EXPECT_EQ(got.at(3).result.stop_reason, "callback");
  EXPECT_EQ(got.at(3).result.tokens, seen);
  EXPECT_EQ(seen.size(), 4u);
  EXPECT_TRUE(got.at(4).result.tokens.empty());
  EXPECT_EQ(got.at(4).result.stop_reason, "max_tokens");
}

TEST(batched_speculative, preempt_returns_the_partial_result_and_frees_the_sequence) {
  auto d = specdec::testing::markov_batch(draft_opts);
  auto t = specdec::testing::markov_batch(target_opts);
  specdec::batched_speculative_decoder dec(d, t, specdec::fixed_gamma{.gamma = 2}, specdec::rejection_sampling{});
  const auto reqs = markov_requests(3);
  for (const auto& r : reqs) dec.submit(r);
  dec.step();
  dec.step();
  const std::size_t n = dec.generated(1);
  EXPECT_GT(n, 0u);
  const batch_result p = dec.preempt(1);
  EXPECT_EQ(p.result.stop_reason, "preempted");
  EXPECT_EQ(p.result.tokens.size(), n);
  EXPECT_EQ(d.sequence_count(), 2u);
  EXPECT_EQ(t.sequence_count(), 2u);
  EXPECT_THROW(dec.preempt(1), specdec::invalid_argument);
  // Resuming: prompt + partial output with the remaining budget continues the greedy text.
  batch_request resumed = reqs[1];
  resumed.prompt.insert(resumed.prompt.end(), p.result.tokens.begin(), p.result.tokens.end());
  resumed.options.max_new_tokens -= n;
  dec.submit(resumed);
  auto got = by_id(dec.run());
  markov_model single(target_opts);
  std::vector<token_id> joined = p.result.tokens;
  joined.insert(joined.end(), got.at(1).result.tokens.begin(), got.at(1).result.tokens.end());
  EXPECT_EQ(joined, target_greedy(single, reqs[1]));
  // A pending request can be preempted too.
  dec.submit(reqs[0]);
  EXPECT_EQ(dec.preempt(0).result.tokens.size(), 0u);
  EXPECT_TRUE(dec.idle());
}

TEST(batched_decoders, errors_are_clear) {
  auto d = specdec::testing::markov_batch(draft_opts);
  auto t = specdec::testing::markov_batch(target_opts);
  auto other = specdec::testing::markov_batch({.vocab = 9});
  EXPECT_THROW(specdec::batched_speculative_decoder(d, d, specdec::fixed_gamma{}, specdec::rejection_sampling{}),
               specdec::invalid_argument);
  EXPECT_THROW(specdec::batched_speculative_decoder(d, other, specdec::fixed_gamma{}, specdec::rejection_sampling{}),
               specdec::vocabulary_mismatch);
  EXPECT_THROW(specdec::batched_speculative_decoder(d, t, specdec::fixed_gamma{.gamma = 0},
                                                    specdec::rejection_sampling{}),
               specdec::invalid_argument);
  try {
    specdec::batched_speculative_decoder(d, t, specdec::fixed_gamma{}, specdec::rejection_sampling{}, {}, 0,
                                         {.max_draft_per_step = 0});
    FAIL() << "expected invalid_argument";
  } catch (const specdec::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("max_draft_per_step"), std::string::npos);
  }
  specdec::batched_speculative_decoder dec(d, t, specdec::fixed_gamma{}, specdec::rejection_sampling{});
  EXPECT_THROW(dec.submit({.prompt = {}, .id = 1}), specdec::invalid_argument);
  EXPECT_THROW(dec.submit({.prompt = {1, 99}, .id = 1}), specdec::token_out_of_range);
  dec.submit({.prompt = {1}, .id = 1});
  EXPECT_THROW(dec.submit({.prompt = {1}, .id = 1}), specdec::invalid_argument);  // duplicate id
  EXPECT_EQ(dec.pending_count(), 1u);
  EXPECT_THROW((void)dec.generated(5), specdec::invalid_argument);
  auto small = specdec::testing::markov_batch({.vocab = 8, .context = 4});
  specdec::batched_autoregressive_decoder ar(small);
  EXPECT_THROW(ar.submit({.prompt = {1, 1, 1, 1}, .id = 0}), specdec::context_overflow);
  ar.submit({.prompt = {1, 1}, .options = {.max_new_tokens = 10, .stop_at_eos = false}, .id = 0});
  const auto r = ar.run();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].result.stop_reason, "context");
  EXPECT_EQ(r[0].result.tokens.size(), 2u);
}

// Random requests (EOS on, stop sequences, top-k/top-p), joining at random steps: every
// request's result equals the single-sequence decoder's with seed + id, token for token,
// with the same stop reason and verification counts.
TEST(batched_speculative, random_mixes_equal_the_single_sequence_decoder) {
  std::mt19937_64 rng(99);
  for (int round = 0; round < 6; ++round) {
    const sampling_params params = round % 3 == 0 ? sampling_params{}
                                   : round % 3 == 1 ? sampling_params{.temperature = 0.9f, .top_k = 5}
                                                    : sampling_params{.temperature = 1.2f, .top_p = 0.8f};
    const specdec::adaptive_gamma fb{};
    const specdec::rejection_sampling rb{};
    auto d = specdec::testing::markov_batch(draft_opts);
    auto t = specdec::testing::markov_batch(target_opts);
    specdec::batched_speculative_decoder dec(d, t, fb, rb, params, 1000 + round);
    std::vector<batch_request> reqs;
    for (request_id i = 0; i < 9; ++i) {
      batch_request r;
      r.id = 17 * i + static_cast<request_id>(round);
      r.prompt.push_back(1);
      for (std::size_t j = rng() % 5; j > 0; --j) r.prompt.push_back(static_cast<token_id>(rng() % 8));
      r.options.max_new_tokens = rng() % 40;
      r.options.stop_at_eos = rng() % 2 == 0;
      if (rng() % 3 == 0) r.options.stop_sequences = {{static_cast<token_id>(rng() % 8), static_cast<token_id>(rng() % 8)}};
      reqs.push_back(r);
    }
    std::size_t next = 0;
    std::vector<batch_result> got;
    while (next < reqs.size() || !dec.idle()) {
      for (std::size_t n = rng() % 3; n > 0 && next < reqs.size(); --n) dec.submit(reqs[next++]);
      dec.step();
      for (auto& r : dec.take_results()) got.push_back(std::move(r));
    }
    const auto m = by_id(std::move(got));
    ASSERT_EQ(m.size(), reqs.size());
    for (const auto& r : reqs) {
      markov_model sd(draft_opts), st(target_opts);
      specdec::speculative_decoder single(sd, st, fb, rb, params, 1000 + round + r.id);
      const auto want = single.generate(r.prompt, r.options);
      const auto& res = m.at(r.id).result;
      EXPECT_EQ(res.tokens, want.tokens) << "round " << round << ", request " << r.id;
      EXPECT_EQ(res.stop_reason, want.stop_reason) << "round " << round << ", request " << r.id;
      EXPECT_EQ(res.stats.target_calls, want.stats.target_calls);
      EXPECT_EQ(res.stats.draft_calls, want.stats.draft_calls);
      EXPECT_EQ(res.stats.draft_tokens_accepted, want.stats.draft_tokens_accepted);
      EXPECT_EQ(res.stats.fallbacks, want.stats.fallbacks);
    }
  }
}

TEST(batched_speculative, max_draft_per_step_bounds_the_growth_of_a_step) {
  auto d = specdec::testing::markov_batch(draft_opts);
  auto t = specdec::testing::markov_batch(target_opts);
  struct never_stop {
    specdec::draft_action decide(const specdec::draft_step&) { return specdec::draft_action::keep_and_continue; }
    void observe(const specdec::step_outcome&) {}
  };
  specdec::batched_speculative_decoder dec(d, t, never_stop{}, specdec::rejection_sampling{}, {}, 0,
                                           {.max_draft_per_step = 3});
  EXPECT_EQ(dec.max_step_growth(), 4u);
  const auto reqs = markov_requests(4);
  for (const auto& r : reqs) dec.submit(r);
  std::map<request_id, std::size_t> last;
  while (!dec.idle()) {
    dec.step();
    for (request_id id : dec.active_ids()) {
      EXPECT_LE(dec.generated(id) - last[id], 4u);
      last[id] = dec.generated(id);
    }
  }
  const auto got = by_id(dec.take_results());
  markov_model single(target_opts);
  for (const auto& r : reqs) EXPECT_EQ(got.at(r.id).result.tokens, target_greedy(single, r));
}

}  // namespace
