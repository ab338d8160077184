// Benchmarks of specdec::cpu::transformer::forward: the cost of a k-token block versus a
// single token at a fixed cache position (the quantity speculative decoding lives on).
//
// Each iteration forwards k tokens after a 32-token prompt, then truncates back to the
// prompt so that every call runs at the same position. `items_per_second` counts tokens;
// the block ratio is Time(k) / Time(1), e.g. bm_kjv_big/5 over bm_kjv_big/1. The machine
// may be shared: use --benchmark_repetitions=N and read the minimum.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "specdec/backend/cpu/transformer.hpp"

namespace {

std::shared_ptr<const specdec::cpu::checkpoint> load(const char* name) {
  return std::make_shared<const specdec::cpu::checkpoint>(
      specdec::cpu::load_checkpoint(std::string(SPECDEC_MODELS_DIR) + "/" + name));
}

void forward_block(benchmark::State& state, const char* name) {
  static std::vector<std::pair<std::string, std::shared_ptr<const specdec::cpu::checkpoint>>> cache;
  std::shared_ptr<const specdec::cpu::checkpoint> ck;
  for (auto& [n, c] : cache)
    if (n == name) ck = c;
  if (!ck) cache.emplace_back(name, ck = load(name));

  specdec::cpu::transformer m(ck);
  const std::size_t k = static_cast<std::size_t>(state.range(0));
  const std::size_t prompt_len = 32;
  std::vector<specdec::token_id> prompt(prompt_len), block(k);
  for (std::size_t i = 0; i < prompt_len; ++i)
    prompt[i] = static_cast<specdec::token_id>((i * 37 + 1) % m.vocab_size());
  for (std::size_t i = 0; i < k; ++i)
    block[i] = static_cast<specdec::token_id>((i * 101 + 7) % m.vocab_size());
  m.forward(prompt);
  for (auto _ : state) {
    auto out = m.forward(block);
    benchmark::DoNotOptimize(out.data);
    benchmark::ClobberMemory();
    m.truncate(prompt_len);
  }
  state.counters["k"] = static_cast<double>(k);
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(k));
}

void bm_kjv_big(benchmark::State& s) { forward_block(s, "kjv-big.bin"); }
void bm_kjv_little(benchmark::State& s) { forward_block(s, "kjv-little.bin"); }
void bm_stories260K(benchmark::State& s) { forward_block(s, "stories260K.bin"); }

double min_of(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

BENCHMARK(bm_kjv_big)->Arg(1)->Arg(2)->Arg(4)->Arg(5)->Arg(8)->Unit(benchmark::kMicrosecond)->ComputeStatistics("min", min_of);
BENCHMARK(bm_kjv_little)->Arg(1)->Arg(5)->Unit(benchmark::kMicrosecond)->ComputeStatistics("min", min_of);
BENCHMARK(bm_stories260K)->Arg(1)->Arg(5)->Unit(benchmark::kMicrosecond)->ComputeStatistics("min", min_of);

}  // namespace

BENCHMARK_MAIN();
