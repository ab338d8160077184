// The verify-cost curve of token trees (issue 22): what one forward of n chain tokens or
// n tree nodes costs against one token, for n = 1..32.
//
// 1. Google Benchmark: `verify/<model>/<format>/threads:<t>/<shape>/n:<n>` for kjv-big in
//    fp32 and bf16, 1 thread, shape `chain` (forward of an n-token block) or `tree`
//    (forward_tree of an n-node binary tree: node i's parent is (i - 1) / 2), n = 1..32.
//    Each iteration runs after a 32-token prompt and truncates back, so every call runs
//    at the same position. Without a --benchmark_filter only n = 1, 8 and 32 of kjv-big
//    fp32 run.
// 2. Curve (skip with --no-curve): specdec::measure_verify_cost for each of those models
//    and formats, i.e. chain and tree interleaved in one run, every size once per round,
//    min over --repeats=R rounds (default 9) after a warm-up round. Printed as a table of
//    microseconds and of ratios t(n) / t(1 token); --curve-csv=PATH also writes CSV.
//    --curve-only skips part 1.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/tree.hpp"

namespace {

using specdec::cpu::transformer;
using specdec::cpu::weight_format;

constexpr std::size_t prompt_len = 32;
constexpr std::size_t max_nodes = 32;
const weight_format formats[] = {weight_format::fp32, weight_format::bf16};

std::shared_ptr<const specdec::cpu::checkpoint> kjv_big() {
  static const auto ck = std::make_shared<const specdec::cpu::checkpoint>(
      specdec::cpu::load_checkpoint(std::string(SPECDEC_MODELS_DIR) + "/kjv-big.bin"));
  return ck;
}

void bm_verify(benchmark::State& state, weight_format f, bool tree) {
  transformer m(kjv_big(), {.threads = 1, .format = f});
  const std::size_t n = static_cast<std::size_t>(state.range(0));
  std::vector<specdec::token_id> tokens(n), prompt(prompt_len);
  std::vector<std::int32_t> parents(n);
  for (std::size_t i = 0; i < n; ++i) {
    tokens[i] = static_cast<specdec::token_id>((i * 101 + 7) % m.vocab_size());
    parents[i] = i == 0 ? specdec::no_parent : static_cast<std::int32_t>((i - 1) / 2);
  }
  for (std::size_t i = 0; i < prompt_len; ++i) prompt[i] = static_cast<specdec::token_id>((i * 37 + 5) % m.vocab_size());
  m.forward(prompt);
  for (auto _ : state) {
    auto out = tree ? m.forward_tree(tokens, parents) : m.forward(tokens);
    benchmark::DoNotOptimize(out.data);
    benchmark::ClobberMemory();
    m.truncate(prompt_len);
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(n));
}

void register_benchmarks() {
  for (weight_format f : formats)
    for (bool tree : {false, true}) {
      const std::string name = "verify/kjv-big/" + std::string(specdec::cpu::to_string(f)) + "/threads:1/" +
                               (tree ? "tree" : "chain");
      benchmark::RegisterBenchmark(name.c_str(), bm_verify, f, tree)
          ->ArgName("n")
          ->DenseRange(1, static_cast<int>(max_nodes))
          ->Unit(benchmark::kMicrosecond);
    }
}

int curve(std::size_t repeats, const std::string& csv_path) {
  std::ofstream csv;
  if (!csv_path.empty()) {
    csv.open(csv_path);
    csv << "model,format,threads,n,chain_us,tree_us,chain_ratio,tree_ratio\n";
  }
  for (weight_format f : formats) {
    transformer m(kjv_big(), {.threads = 1, .format = f});
    const specdec::verify_cost_curve c =
        specdec::measure_verify_cost(m, max_nodes, {.position = prompt_len, .repeats = repeats});
    const std::string fmt(specdec::cpu::to_string(f));
    std::printf("\nverify cost, kjv-big %s, 1 thread, at position %zu (min of %zu rounds)\n", fmt.c_str(), prompt_len,
                repeats);
    std::printf("%4s %10s %10s %8s %8s\n", "n", "chain_us", "tree_us", "chain_x", "tree_x");
    for (std::size_t n = 1; n <= max_nodes; ++n) {
      std::printf("%4zu %10.1f %10.1f %8.3f %8.3f\n", n, c.chain[n - 1] * 1e6, c.tree[n - 1] * 1e6, c.chain_ratio(n),
                  c.tree_ratio(n));
      if (csv.is_open())
        csv << "kjv-big," << fmt << ",1," << n << ',' << c.chain[n - 1] * 1e6 << ',' << c.tree[n - 1] * 1e6 << ','
            << c.chain_ratio(n) << ',' << c.tree_ratio(n) << '\n';
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  bool run_curve = true, run_benchmarks = true, has_filter = false;
  std::size_t repeats = 9;
  std::string csv;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--no-curve") run_curve = false;
    else if (a == "--curve-only") run_benchmarks = false;
    else if (a.rfind("--curve-csv=", 0) == 0) csv = a.substr(12);
    else if (a.rfind("--repeats=", 0) == 0) repeats = std::stoul(a.substr(10));
    else {
      if (a.rfind("--benchmark_filter", 0) == 0) has_filter = true;
      args.push_back(argv[i]);
    }
  }
  std::string default_filter = "--benchmark_filter=^verify/kjv-big/fp32/threads:1/(chain|tree)/n:(1|8|32)$";
  if (!has_filter) args.push_back(default_filter.data());
  int n = static_cast<int>(args.size());
  register_benchmarks();
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  if (run_benchmarks) benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return run_curve ? curve(repeats, csv) : 0;
}
