// Benchmarks for include/specdec/distance.hpp and sampling.hpp: each metric over random
// softmaxed distributions, softmax, and sampling (greedy, temperature 1, top-p 0.9) from
// logits, over vocabularies of 512, 2048 and 32000 (llama2 vocabulary size).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "specdec/distance.hpp"
#include "specdec/sampling.hpp"

namespace {

std::vector<float> random_softmax(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(n), p(n);
  for (auto& x : logits) x = normal(rng);
  float mx = logits[0];
  for (float x : logits) mx = std::max(mx, x);
  double z = 0;
  for (std::size_t i = 0; i < n; ++i) z += (p[i] = std::exp(logits[i] - mx));
  for (auto& x : p) x = static_cast<float>(x / z);
  return p;
}

template <class Metric>
void bm_distance(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto p_draft = random_softmax(n, 1);
  const auto p_target = random_softmax(n, 2);
  const Metric metric{};
  const auto drafted = static_cast<specdec::token_id>(n / 3);
  for (auto _ : state) {
    float d = metric(p_draft, p_target, drafted);
    benchmark::DoNotOptimize(d);
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(n));
  state.SetLabel(std::string(Metric::name));
}

#define SPECDEC_BENCH_DISTANCE(metric) \
  BENCHMARK_TEMPLATE(bm_distance, specdec::metric)->Arg(512)->Arg(2048)->Arg(32000)

SPECDEC_BENCH_DISTANCE(drafted_cross_entropy);
SPECDEC_BENCH_DISTANCE(kl_target_draft);
SPECDEC_BENCH_DISTANCE(kl_draft_target);
SPECDEC_BENCH_DISTANCE(jensen_shannon);
SPECDEC_BENCH_DISTANCE(total_variation);
SPECDEC_BENCH_DISTANCE(hellinger);

std::vector<float> random_logits(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(n);
  for (auto& x : logits) x = normal(rng);
  return logits;
}

void bm_softmax(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto logits = random_logits(n, 3);
  std::vector<float> p(n);
  for (auto _ : state) {
    specdec::softmax(logits, p);
    benchmark::DoNotOptimize(p.data());
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(n));
}
BENCHMARK(bm_softmax)->Arg(512)->Arg(2048)->Arg(32000);

// One sampler::next per iteration: the distribution the token is drawn from, then the draw.
void bm_sample(benchmark::State& state, specdec::sampling_params params) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto logits = random_logits(n, 4);
  std::vector<float> p(n);
  specdec::sampler s(params, 7);
  for (auto _ : state) {
    specdec::token_id t = s.next(logits, p);
    benchmark::DoNotOptimize(t);
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(n));
}
BENCHMARK_CAPTURE(bm_sample, greedy, specdec::sampling_params{})->Arg(512)->Arg(2048)->Arg(32000);
BENCHMARK_CAPTURE(bm_sample, temperature_1, specdec::sampling_params{.temperature = 1.0f})
    ->Arg(512)->Arg(2048)->Arg(32000);
BENCHMARK_CAPTURE(bm_sample, top_p_0_9, specdec::sampling_params{.temperature = 1.0f, .top_p = 0.9f})
    ->Arg(512)->Arg(2048)->Arg(32000);

}  // namespace

BENCHMARK_MAIN();
