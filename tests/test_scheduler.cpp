// Tests for include/specdec/scheduler.hpp: FIFO vs length-aware scheduling of a batched
// decoder, memory budget, under-prediction (preempt and requeue, or continue).
//
// All simulations run batched decoders over markov models with `stop_at_eos = false`, so
// a request's response length is exactly its max_new_tokens and every count (steps,
// slot-steps, preemptions) is deterministic; the inequalities are asserted on counts,
// never on wall time.
#include <gtest/gtest.h>

#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "specdec/batch_decoder.hpp"
#include "specdec/decoder.hpp"
#include "specdec/scheduler.hpp"
#include "specdec/hybrid/scheduling.hpp"
#include "specdec/testing/batch_archetypes.hpp"

namespace {
using specdec::batching_mode;
using specdec::scheduled_request;
using specdec::scheduler_options;
using specdec::simulation_report;
using specdec::token_id;
using specdec::under_prediction_policy;
using specdec::testing::markov_model;
using specdec::testing::markov_options;

constexpr markov_options target_opts{.vocab = 8, .order = 2, .seed = 21};
constexpr markov_options draft_opts{.vocab = 8, .order = 2, .seed = 21, .noise_seed = 5, .noise = 0.6f};

/// n requests, half short (4..8 tokens) and half long (48..64), shuffled; the prediction
/// is the true length times a factor drawn from [1 - noise, 1 + noise] times `bias`.
std::vector<scheduled_request> bimodal(std::size_t n, double noise, double bias = 1.0, std::uint64_t seed = 3) {
  std::mt19937_64 rng(seed);
  std::vector<scheduled_request> v;
  for (std::size_t i = 0; i < n; ++i) {
    const bool long_one = (rng() % 2) == 1;
    const std::size_t len = long_one ? 48 + rng() % 17 : 4 + rng() % 5;
    const double f = 1.0 - noise + 2.0 * noise * static_cast<double>(rng() % 1001) / 1000.0;
    scheduled_request r;
    r.request.id = i;
    r.request.prompt = {1, static_cast<token_id>(rng() % 8), static_cast<token_id>(rng() % 8)};
    r.request.options = {.max_new_tokens = len, .stop_at_eos = false};
    r.predicted_length = static_cast<double>(len) * f * bias;
    v.push_back(r);
  }
  return v;
}

std::vector<token_id> greedy_reference(const scheduled_request& r) {
  markov_model m(target_opts);
  specdec::autoregressive_decoder ar(m);
  return ar.generate(r.request.prompt, r.request.options).tokens;
}

void expect_all_complete_and_exact(const simulation_report& rep, const std::vector<scheduled_request>& reqs,
                                   const std::string& what) {
  ASSERT_EQ(rep.results.size(), reqs.size()) << what;
  std::size_t tokens = 0;
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    const auto& res = rep.results[i];
    EXPECT_EQ(res.id, reqs[i].request.id) << what;
    EXPECT_EQ(res.result.stop_reason, "max_tokens") << what << ", request " << i;
    EXPECT_EQ(res.result.tokens, greedy_reference(reqs[i])) << what << ", request " << i;
    tokens += res.result.tokens.size();
  }
  EXPECT_EQ(rep.tokens, tokens) << what;
}

void print(const simulation_report& r) {
  std::printf("%-12s %-10s steps %4zu tokens %5zu tok/step %6.2f wasted %5zu preempt %3zu max_batch %2zu "
              "p50 %5.1f p95 %5.1f steps, peak reserved %.0f used %.0f\n",
              r.scheduler.c_str(), specdec::to_string(r.mode), r.steps, r.tokens, r.tokens_per_step,
              r.wasted_slot_steps, r.preemptions, r.max_batch_seen, r.p50_latency_steps, r.p95_latency_steps,
              r.peak_reserved_bytes, r.peak_used_bytes);
}

// ---------------------------------------------------------------------------------------
TEST(scheduler, length_aware_beats_fifo_on_wasted_slot_steps_under_static_batching) {
  const auto reqs = bimodal(48, /*noise=*/0.15);
  const scheduler_options o{.mode = batching_mode::static_batching, .max_batch = 8, .memory_budget_bytes = 1e9};
  auto bm = specdec::testing::markov_batch(target_opts);
  specdec::batched_autoregressive_decoder engine(bm);
  const auto fifo = specdec::simulate(engine, specdec::fifo_scheduler{}, reqs, o);
  const auto la = specdec::simulate(engine, specdec::length_aware_scheduler{}, reqs, o);
  print(fifo);
  print(la);
  expect_all_complete_and_exact(fifo, reqs, "fifo");
  expect_all_complete_and_exact(la, reqs, "length_aware");
  EXPECT_EQ(fifo.tokens, la.tokens);
  EXPECT_LT(la.wasted_slot_steps, fifo.wasted_slot_steps);
  EXPECT_LT(2 * la.wasted_slot_steps, fifo.wasted_slot_steps);  // a large effect, not noise
  EXPECT_LT(la.steps, fifo.steps);
  EXPECT_GE(la.tokens_per_step, 1.3 * fifo.tokens_per_step);
  EXPECT_LT(la.p50_latency_steps, fifo.p50_latency_steps);
  // Slot accounting: occupied + wasted = the batches' widths over their steps.
  EXPECT_EQ(fifo.occupied_slot_steps, fifo.tokens);  // one token per running slot per step
  // Under-predicted requests (noise 15%) are preempted and requeued under both.
  EXPECT_EQ(fifo.preemptions, la.preemptions);
}

TEST(scheduler, continuous_batching_wastes_less_than_static_fifo) {
  const auto reqs = bimodal(40, 0.15, 1.0, 9);
  auto bm = specdec::testing::markov_batch(target_opts);
  specdec::batched_autoregressive_decoder engine(bm);
  const scheduler_options st{.mode = batching_mode::static_batching, .max_batch = 8};
  const scheduler_options co{.mode = batching_mode::continuous, .max_batch = 8};
  const auto s = specdec::simulate(engine, specdec::fifo_scheduler{}, reqs, st);
  const auto c = specdec::simulate(engine, specdec::fifo_scheduler{}, reqs, co);
  const auto cla = specdec::simulate(engine, specdec::length_aware_scheduler{.bucket_width = 16}, reqs, co);
  print(s);
  print(c);
  print(cla);
  expect_all_complete_and_exact(c, reqs, "continuous fifo");
  expect_all_complete_and_exact(cla, reqs, "continuous length_aware");
  EXPECT_LT(c.steps, s.steps);
  EXPECT_GT(c.tokens_per_step, s.tokens_per_step);
  EXPECT_EQ(c.max_batch_seen, 8u);
  // Shortest-predicted-first lowers the median latency of continuous batching too.
  EXPECT_LE(cla.p50_latency_steps, c.p50_latency_steps);
}

// ---------------------------------------------------------------------------------------
// Memory budget, under-prediction, both policies and modes, AR and speculative engines.
template <class Engine>
void check_budget_and_under_prediction(Engine& engine, const char* what) {
  // Predictions are a third of the truth: every long request outruns its prediction.
  const auto reqs = bimodal(24, 0.1, /*bias=*/1.0 / 3.0, 17);
  for (const auto mode : {batching_mode::static_batching, batching_mode::continuous}) {
    for (const auto policy : {under_prediction_policy::preempt_and_requeue, under_prediction_policy::continue_running}) {
      const scheduler_options o{.mode = mode,
                                .max_batch = 8,
                                .memory_budget_bytes = 200.0 * 16.0,  // 200 tokens
                                .kv_bytes_per_token = 16.0,
                                .on_under_prediction = policy};
      for (int s = 0; s < 2; ++s) {
        const auto rep = s == 0 ? specdec::simulate(engine, specdec::fifo_scheduler{}, reqs, o)
                                : specdec::simulate(engine, specdec::length_aware_scheduler{}, reqs, o);
        const std::string tag = std::string(what) + " " + specdec::to_string(mode) + " " +
                                specdec::to_string(policy) + " " + rep.scheduler;
        print(rep);
        expect_all_complete_and_exact(rep, reqs, tag);
        EXPECT_LE(rep.peak_used_bytes, rep.peak_reserved_bytes) << tag;
        EXPECT_LE(rep.peak_reserved_bytes, o.memory_budget_bytes) << tag;
        EXPECT_GT(rep.peak_reserved_bytes, 0.5 * o.memory_budget_bytes) << tag;  // the budget binds
        if (policy == under_prediction_policy::preempt_and_requeue) {
          EXPECT_GT(rep.preemptions, 0u) << tag;
        }
        EXPECT_TRUE(engine.idle());
      }
    }
  }
}

TEST(scheduler, memory_budget_is_never_exceeded_and_preempted_requests_complete_autoregressive) {
  auto bm = specdec::testing::markov_batch(target_opts);
  specdec::batched_autoregressive_decoder engine(bm);
  check_budget_and_under_prediction(engine, "AR");
  EXPECT_EQ(bm.sequence_count(), 0u);
}

TEST(scheduler, memory_budget_is_never_exceeded_and_preempted_requests_complete_speculative) {
  auto d = specdec::testing::markov_batch(draft_opts);
  auto t = specdec::testing::markov_batch(target_opts);
  specdec::batched_speculative_decoder engine(d, t, specdec::fixed_gamma{.gamma = 3}, specdec::rejection_sampling{},
                                              {}, 0, {.max_draft_per_step = 3});
  EXPECT_EQ(engine.max_step_growth(), 4u);
  check_budget_and_under_prediction(engine, "SD");
}

TEST(scheduler, accurate_predictions_need_no_preemption) {
  const auto reqs = bimodal(16, 0.0);
  auto bm = specdec::testing::markov_batch(target_opts);
  specdec::batched_autoregressive_decoder engine(bm);
  const scheduler_options o{.max_batch = 4, .memory_budget_bytes = 150, .kv_bytes_per_token = 1};
  const auto rep = specdec::simulate(engine, specdec::length_aware_scheduler{}, reqs, o);
  expect_all_complete_and_exact(rep, reqs, "exact predictions");
  EXPECT_EQ(rep.preemptions, 0u);
  EXPECT_LE(rep.peak_reserved_bytes, 150.0);
}

TEST(scheduler, late_arrivals_wait_for_their_step_and_latency_counts_from_arrival) {
  auto reqs = bimodal(6, 0.0);
  for (std::size_t i = 0; i < reqs.size(); ++i) reqs[i].arrival_step = 10 * i;
  auto bm = specdec::testing::markov_batch(target_opts);
  specdec::batched_autoregressive_decoder engine(bm);
  const auto rep = specdec::simulate(engine, specdec::fifo_scheduler{}, reqs, {.max_batch = 8});
  expect_all_complete_and_exact(rep, reqs, "arrivals");
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_GE(rep.results[i].timing.finished_step, reqs[i].arrival_step + reqs[i].request.options.max_new_tokens);
    EXPECT_EQ(rep.results[i].timing.submitted_step, reqs[i].arrival_step);
  }
}

TEST(scheduler, predicted_lengths_from_a_hybrid_predictor) {
  std::vector<specdec::batch_request> rs(3);
  std::vector<specdec::hybrid::request_features> fs(3);
  for (std::size_t i = 0; i < 3; ++i) rs[i].id = i;
  const auto out = specdec::with_predicted_lengths(rs, fs, specdec::hybrid::constant_length_predictor{.length = 12});
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[2].predicted_length, 12.0);
  EXPECT_THROW((void)specdec::with_predicted_lengths(rs, {}, specdec::hybrid::constant_length_predictor{}),
               specdec::invalid_argument);
}

TEST(scheduler, errors_name_the_parameter) {
  auto bm = specdec::testing::markov_batch(target_opts);
  specdec::batched_autoregressive_decoder engine(bm);
  const auto reqs = bimodal(4, 0.0);
  auto expect_message = [&](const scheduler_options& o, const char* knob) {
    try {
      (void)specdec::simulate(engine, specdec::fifo_scheduler{}, reqs, o);
      ADD_FAILURE() << "expected invalid_argument for " << knob;
    } catch (const specdec::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(knob), std::string::npos) << e.what();
    }
  };
  expect_message({.max_batch = 0}, "max_batch");
  expect_message({.memory_budget_bytes = -1}, "memory_budget_bytes");
  expect_message({.kv_bytes_per_token = 0}, "kv_bytes_per_token");
  expect_message({.repredict_factor = 1.0}, "repredict_factor");
  expect_message({.memory_budget_bytes = 10, .kv_bytes_per_token = 1}, "memory_budget_bytes");  // cannot fit alone
  EXPECT_THROW(specdec::length_aware_scheduler{.bucket_width = -1}.validate(), specdec::invalid_argument);
  auto dup = reqs;
  dup[1].request.id = dup[0].request.id;
  EXPECT_THROW((void)specdec::simulate(engine, specdec::fifo_scheduler{}, dup, {}), specdec::invalid_argument);
  auto unordered = reqs;
  unordered[0].arrival_step = 5;
  EXPECT_THROW((void)specdec::simulate(engine, specdec::fifo_scheduler{}, unordered, {}), specdec::invalid_argument);
  engine.submit(reqs[0].request);
  EXPECT_THROW((void)specdec::simulate(engine, specdec::fifo_scheduler{}, reqs, {}), specdec::invalid_argument);
}

}  // namespace
