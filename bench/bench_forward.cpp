// Benchmarks of specdec::cpu::transformer::forward, and the goals of issue 5 measured as
// ratios in one process.
//
// 1. Google Benchmark: `forward/<model>/<format>/threads:<t>/k:<k>` for the three bundled
//    models, the four weight formats, 1 thread and all cores, and blocks k = 1..16. Each
//    iteration forwards k tokens after a 32-token prompt, then truncates back, so every
//    call runs at the same position; items_per_second counts tokens. Without a
//    --benchmark_filter only kjv-big fp32/q8_0, 1 thread, k = 1 and 5 run (short default);
//    e.g. --benchmark_filter='forward/kjv-big/.*/threads:1/k:([1-9]|1[0-6])$' picks more.
// 2. Summary (skip with --no-summary): a memory-bandwidth probe (streaming read of a
//    1 GiB buffer, >> the L3, best of several passes, 1 thread and all threads), then for
//    every model, format and thread count the single-token and 5-token forward time
//    (measured interleaved, min over 15 repetitions: the machine may be shared), the
//    weight bytes a forward streams, the achieved fraction (bytes / time) / bandwidth,
//    the same against the bandwidth of streaming a buffer of the weights' own size (which
//    partly fits the L3), and the goal ratios.
//    --summary-csv PATH writes the table as CSV.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "specdec/backend/cpu/detail/thread_pool.hpp"
#include "specdec/backend/cpu/transformer.hpp"

namespace {

using specdec::cpu::transformer;
using specdec::cpu::weight_format;

const char* const model_names[] = {"stories260K", "kjv-little", "kjv-big"};
const weight_format formats[] = {weight_format::fp32, weight_format::bf16, weight_format::fp16, weight_format::q8_0,
                                 weight_format::w8a8};

std::shared_ptr<const specdec::cpu::checkpoint> load(const std::string& name) {
  static std::vector<std::pair<std::string, std::shared_ptr<const specdec::cpu::checkpoint>>> cache;
  for (auto& [n, c] : cache)
    if (n == name) return c;
  auto ck = std::make_shared<const specdec::cpu::checkpoint>(
      specdec::cpu::load_checkpoint(std::string(SPECDEC_MODELS_DIR) + "/" + name + ".bin"));
  cache.emplace_back(name, ck);
  return ck;
}

constexpr std::size_t prompt_len = 32;

std::vector<specdec::token_id> make_block(std::size_t k, std::size_t vocab, std::size_t salt) {
  std::vector<specdec::token_id> b(k);
  for (std::size_t i = 0; i < k; ++i) b[i] = static_cast<specdec::token_id>((i * 101 + 7 * salt + 1) % vocab);
  return b;
}

void prime(transformer& m) { m.forward(make_block(prompt_len, m.vocab_size(), 3)); }

double min_of(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

void bm_forward(benchmark::State& state, std::string model, weight_format f, std::size_t threads) {
  transformer m(load(model), {.threads = threads, .format = f});
  const std::size_t k = static_cast<std::size_t>(state.range(0));
  const auto block = make_block(k, m.vocab_size(), 5);
  prime(m);
  for (auto _ : state) {
    auto out = m.forward(block);
    benchmark::DoNotOptimize(out.data);
    benchmark::ClobberMemory();
    m.truncate(prompt_len);
  }
  state.counters["k"] = static_cast<double>(k);
  state.counters["weight_MB"] = static_cast<double>(m.weight_bytes_per_forward()) / 1e6;
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(k));
}

void register_forward_benchmarks() {
  const std::size_t all = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::size_t> thread_counts{1};
  if (all > 1) thread_counts.push_back(all);
  for (const char* model : model_names) {
    for (weight_format f : formats) {
      for (std::size_t t : thread_counts) {
        const std::string name = std::string("forward/") + model + "/" + std::string(specdec::cpu::to_string(f)) +
                                 "/threads:" + std::to_string(t);
        auto* b = benchmark::RegisterBenchmark(name.c_str(), bm_forward, std::string(model), f, t);
        b->ArgName("k")->DenseRange(1, 16)->Unit(benchmark::kMicrosecond)->ComputeStatistics("min", min_of);
      }
    }
  }
}

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// ---- memory-bandwidth probe ----
typedef float v16 __attribute__((vector_size(64)));

float stream_sum(const float* p, std::size_t n) {
  v16 a0{}, a1{}, a2{}, a3{};
  for (std::size_t i = 0; i + 64 <= n; i += 64) {
    v16 x0, x1, x2, x3;
    std::memcpy(&x0, p + i, 64);
    std::memcpy(&x1, p + i + 16, 64);
    std::memcpy(&x2, p + i + 32, 64);
    std::memcpy(&x3, p + i + 48, 64);
    a0 += x0, a1 += x1, a2 += x2, a3 += x3;
  }
  v16 s = a0 + a1 + a2 + a3;
  float r = 0;
  for (int i = 0; i < 16; ++i) r += s[i];
  return r;
}

// Best-of-`passes` read bandwidth (bytes/s) over `bytes`, split across `threads`.
double bandwidth(std::vector<float>& buf, std::size_t threads, int passes) {
  auto pool = specdec::cpu::detail::shared_pool(threads);
  double best = 0;
  std::vector<float> sink(pool->size());
  for (int p = 0; p < passes; ++p) {
    const double t0 = now();
    pool->run([&](std::size_t part, std::size_t parts) {
      std::size_t b, e;
      specdec::cpu::detail::split_range(buf.size(), part, parts, 64, b, e);
      sink[part] = stream_sum(buf.data() + b, e - b);
    });
    const double dt = now() - t0;
    best = std::max(best, double(buf.size()) * 4.0 / dt);
  }
  benchmark::DoNotOptimize(sink.data());
  return best;
}

// Per-call seconds of a 1-token and a 5-token forward at position 32, measured
// interleaved (so both see the same machine conditions): min over `reps` repetitions of
// the mean over a batch of calls lasting ~`rep_seconds`.
void time_forward_1_5(transformer& m, int reps, double rep_seconds, double& t1, double& t5) {
  const auto b1 = make_block(1, m.vocab_size(), 5), b5 = make_block(5, m.vocab_size(), 5);
  m.reset();
  prime(m);
  auto once = [&](const std::vector<specdec::token_id>& b) {
    m.forward(b);
    m.truncate(prompt_len);
  };
  once(b1), once(b5);
  double t0 = now();
  once(b1);
  const int calls1 = std::max(3, static_cast<int>(rep_seconds / std::max(1e-7, now() - t0)));
  t0 = now();
  once(b5);
  const int calls5 = std::max(3, static_cast<int>(rep_seconds / std::max(1e-7, now() - t0)));
  t1 = t5 = 1e30;
  for (int r = 0; r < reps; ++r) {
    double s = now();
    for (int i = 0; i < calls1; ++i) once(b1);
    t1 = std::min(t1, (now() - s) / calls1);
    s = now();
    for (int i = 0; i < calls5; ++i) once(b5);
    t5 = std::min(t5, (now() - s) / calls5);
  }
}

struct summary_row {
  std::string model, format;
  std::size_t threads;
  double bytes, t1, t5, bw_ws;
};

int summary(const std::string& csv_path) {
  const std::size_t all = std::max(1u, std::thread::hardware_concurrency());
  std::printf("\n== bandwidth probe: streaming read of a 1 GiB buffer, best of 5 passes ==\n");
  std::vector<float> buf((std::size_t{1} << 30) / 4);
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = float(i & 1023);
  const double bw1 = bandwidth(buf, 1, 5);
  const double bwall = bandwidth(buf, all, 5);
  std::vector<float>().swap(buf);
  std::printf("1 thread: %.2f GB/s   %zu threads: %.2f GB/s\n", bw1 / 1e9, all, bwall / 1e9);

  std::printf("\n== forward at position 32, min over 7 repetitions ==\n");
  std::printf("%-12s %-5s %3s %10s %10s %10s %9s %9s %8s %8s %8s\n", "model", "fmt", "thr", "weight MB", "t(1) us",
              "t(5) us", "t5/t1", "GB/s", "frac_bw", "ws GB/s", "frac_ws");
  std::vector<summary_row> rows;
  for (const char* model : model_names) {
    for (weight_format f : formats) {
      for (std::size_t t : {std::size_t{1}, all}) {
        if (t == all && all == 1 && !rows.empty() && rows.back().threads == 1 && rows.back().model == model &&
            rows.back().format == specdec::cpu::to_string(f))
          continue;
        transformer m(load(model), {.threads = t, .format = f});
        summary_row r{model, std::string(specdec::cpu::to_string(f)), t, double(m.weight_bytes_per_forward()), 0, 0, 0};
        time_forward_1_5(m, 15, 0.02, r.t1, r.t5);
        // The bandwidth of streaming a buffer as large as the weights, over and over (as
        // decoding does): part of it may stay in the L3, so this bound is higher than
        // the DRAM bound for working sets near or below the L3 size.
        std::vector<float> ws(static_cast<std::size_t>(r.bytes / 4) / 64 * 64 + 64, 1.0f);
        r.bw_ws = bandwidth(ws, t, 15);
        rows.push_back(r);
        const double gbs = r.bytes / r.t1;
        std::printf("%-12s %-5s %3zu %10.2f %10.1f %10.1f %9.2f %9.2f %8.2f %8.2f %8.2f\n", model, r.format.c_str(), t,
                    r.bytes / 1e6, r.t1 * 1e6, r.t5 * 1e6, r.t5 / r.t1, gbs / 1e9, gbs / (t == 1 ? bw1 : bwall),
                    r.bw_ws / 1e9, gbs / r.bw_ws);
      }
    }
  }
  auto find = [&](const std::string& model, const std::string& fmt, std::size_t t) -> const summary_row& {
    for (const auto& r : rows)
      if (r.model == model && r.format == fmt && r.threads == t) return r;
    return rows.front();
  };
  const summary_row& big32 = find("kjv-big", "fp32", 1);
  const summary_row& big8 = find("kjv-big", "q8_0", 1);
  const double frac = big32.bytes / big32.t1 / bw1;
  std::printf("\n== goals (kjv-big, 1 thread) ==\n");
  std::printf("fp32 single token at %.0f%% of the 1-thread bandwidth bound (goal >= 60%%): %s\n", 100 * frac,
              frac >= 0.6 ? "met" : "MISSED");
  const double frac_ws = big32.bytes / big32.t1 / big32.bw_ws;
  std::printf("  (and at %.0f%% of the bandwidth of streaming a buffer of the weights' size, %.1f GB/s: %s)\n",
              100 * frac_ws, big32.bw_ws / 1e9, frac_ws >= 0.6 ? "met" : "MISSED");
  std::printf("q8_0 single token %.2fx faster than fp32 (goal >= 1.7x): %s\n", big32.t1 / big8.t1,
              big32.t1 / big8.t1 >= 1.7 ? "met" : "MISSED");
  std::printf("fp32 block of 5 = %.2fx one token (goal <= 1.5x): %s\n", big32.t5 / big32.t1,
              big32.t5 / big32.t1 <= 1.5 ? "met" : "MISSED");
  const summary_row& big32a = find("kjv-big", "fp32", all);
  const summary_row& big8a = find("kjv-big", "q8_0", all);
  std::printf("(%zu threads: fp32 %.1f us, q8_0 %.1f us, ratio %.2fx; block of 5 %.2fx)\n", all, big32a.t1 * 1e6,
              big8a.t1 * 1e6, big32a.t1 / big8a.t1, big32a.t5 / big32a.t1);
  if (!csv_path.empty()) {
    std::ofstream csv(csv_path);
    csv << "model,format,threads,weight_bytes,t1_seconds,t5_seconds,block5_ratio,gbytes_per_s,bandwidth_1thread,"
           "bandwidth_all,fraction_of_bandwidth,working_set_bandwidth,fraction_of_working_set_bandwidth\n";
    for (const auto& r : rows)
      csv << r.model << ',' << r.format << ',' << r.threads << ',' << r.bytes << ',' << r.t1 << ',' << r.t5 << ','
          << r.t5 / r.t1 << ',' << r.bytes / r.t1 / 1e9 << ',' << bw1 / 1e9 << ',' << bwall / 1e9 << ','
          << r.bytes / r.t1 / (r.threads == 1 ? bw1 : bwall) << ',' << r.bw_ws / 1e9 << ','
          << r.bytes / r.t1 / r.bw_ws << '\n';
    std::printf("wrote %s\n", csv_path.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  bool run_summary = true, has_filter = false;
  std::string csv;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--no-summary") run_summary = false;
    else if (a.rfind("--summary-csv=", 0) == 0) csv = a.substr(14);
    else {
      if (a.rfind("--benchmark_filter", 0) == 0) has_filter = true;
      args.push_back(argv[i]);
    }
  }
  std::string default_filter = "--benchmark_filter=^forward/kjv-big/(fp32|q8_0)/threads:1/k:(1|5)$";
  if (!has_filter) args.push_back(default_filter.data());
  int n = static_cast<int>(args.size());
  register_forward_benchmarks();
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return run_summary ? summary(csv) : 0;
}
