// Benchmarks of specdec::cpu::transformer::forward, and the goals of issue 5 measured as
// ratios in one process.
//
// 1. Google Benchmark: `forward/<model>/<format>/threads:<t>/k:<k>` for the three bundled
//    models, the four weight formats, 1 thread and all cores, and blocks k = 1..16. Each
//    iteration forwards k tokens after a 32-token prompt, then truncates back, so every
//    call runs at the same position; items_per_second counts tokens. Without a
//    --benchmark_filter only kjv-big fp32/q8_0, 1 thread, k = 1 and 5 run (short default);
//    e.g. --benchmark_filter='forward/kjv-big/.*/threads:1/k:([1-9]|1[0-6])$' picks more.
// 2. Summary (skip with --no-summary): a compute-peak probe (fp32 FMA, bf16 and int8 dot
//    products where the build has them; specdec/backend/cpu/roofline.hpp) and a
//    memory-bandwidth probe (streaming read of a 1 GiB buffer, >> the L3, best of several
//    passes), 1 thread and all threads; then for every model, format and thread count the
//    forward time of blocks of 1, 5, 8 and 16 tokens and of batches of 8 and 16 sequences
//    (measured interleaved, min over 31 short repetitions: the machine may be shared), the
//    weight bytes a forward streams, the achieved fraction (bytes / time) / bandwidth,
//    the same against the bandwidth of streaming a buffer of the weights' own size (which
//    partly fits the L3), each shape's fraction of its roofline min(peak, that
//    bandwidth x arithmetic intensity) of the weight products alone ("roof") and of the
//    per-part roofline ("parts": the products' bound plus the attention's, see
//    summary_row::bound_parts), and the goal ratios.
//    --summary-csv PATH writes the table as CSV; --cpu-time times the 1-thread forwards by
//    the thread's CPU clock (for a machine other processes keep busy; see `now`);
//    --summary-models=a,b, --summary-formats=a,b and --summary-threads=1 (or =all) limit
//    the summary's rows (the probes always run; the goals need kjv-big fp32 and q8_0).
// 3. `after_draft/kjv-big/fp32/k:5` (opt-in: --benchmark_filter=after_draft): what a
//    draft's forwards between two target forwards cost the target, as in speculative
//    decoding's loop. Steady runs of 24 rounds per condition (4 one-token forwards of
//    kjv-little in w8a8, bf16 or fp32, or none, then the timed 5-token kjv-big forward),
//    conditions in turn, the first 4 rounds of each run not counted (a run's first
//    forwards still carry the previous condition's effect); counters: the median target
//    forward after no draft (none_us) and each format's median over it (w8a8_x, ...), and
//    each draft's own 4 forwards (w8a8_draft_us, ...).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <functional>
#include <span>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "specdec/backend/cpu/batched_transformer.hpp"
#include "specdec/backend/cpu/roofline.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/telemetry.hpp"

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

void bm_after_draft(benchmark::State& state) {
  using clock = std::chrono::steady_clock;
  transformer target(load("kjv-big"), {.threads = 1, .format = weight_format::fp32});
  const weight_format draft_formats[] = {weight_format::w8a8, weight_format::bf16, weight_format::fp32};
  std::vector<std::unique_ptr<transformer>> drafts;
  for (weight_format f : draft_formats)
    drafts.push_back(
        std::make_unique<transformer>(load("kjv-little"), specdec::cpu::transformer_options{.threads = 1, .format = f}));
  prime(target);
  for (auto& d : drafts) prime(*d);
  const auto block = make_block(5, target.vocab_size(), 5), one = make_block(1, target.vocab_size(), 9);
  constexpr int run = 24, settle = 4, drafted = 4;
  std::vector<double> after[4], own[4];  // 0: no draft, 1 + i: draft_formats[i]
  const auto median = [](std::vector<double> v) {
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
    return v[v.size() / 2];
  };
  for (auto _ : state) {
    for (int c = 0; c < 4; ++c) {
      for (int r = 0; r < run; ++r) {
        const auto t0 = clock::now();
        if (c > 0) {
          for (int i = 0; i < drafted; ++i) benchmark::DoNotOptimize(drafts[c - 1]->forward(one).data);
          drafts[c - 1]->truncate(prompt_len);
        }
        const auto t1 = clock::now();
        benchmark::DoNotOptimize(target.forward(block).data);
        const auto t2 = clock::now();
        target.truncate(prompt_len);
        if (r < settle) continue;
        after[c].push_back(std::chrono::duration<double>(t2 - t1).count());
        own[c].push_back(std::chrono::duration<double>(t1 - t0).count());
      }
    }
  }
  const double none = median(after[0]);
  state.counters["none_us"] = none * 1e6;
  for (int i = 0; i < 3; ++i) {
    const std::string f(specdec::cpu::to_string(draft_formats[i]));
    state.counters[f + "_x"] = median(after[i + 1]) / none;
    state.counters[f + "_draft_us"] = median(own[i + 1]) * 1e6;
  }
}

void register_after_draft_benchmark() {
  benchmark::RegisterBenchmark("after_draft/kjv-big/fp32/k:5", bm_after_draft)
      ->Iterations(8)
      ->Unit(benchmark::kMillisecond);
}

// --cpu-time: 1-thread forwards are timed by the calling thread's CPU clock, which stops
// while the thread is descheduled: on a machine whose cores other processes keep busy,
// wall-clock minima then still include their time slices, CPU time does not (it still
// includes their effect on the shared caches). Equal to wall time on an idle machine.
bool cpu_clock_for_one_thread = false;
bool use_cpu_clock = false;  // for the forwards being timed now

// --summary-models, --summary-formats, --summary-threads: comma-separated names the
// summary keeps (empty: all).
std::string only_models, only_formats, only_threads;
bool listed(const std::string& list, std::string_view name) {
  if (list.empty()) return true;
  for (std::size_t b = 0; b <= list.size();) {
    const std::size_t e = std::min(list.find(',', b), list.size());
    if (std::string_view(list).substr(b, e - b) == name) return true;
    b = e + 1;
  }
  return false;
}

double now() {
  if (use_cpu_clock) return specdec::thread_cpu_seconds();
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The blocks (tokens of one sequence) and batches (sequences of one token) the summary
// times at position 32: ratios against k = 1, and each one's roofline fraction.
const std::size_t summary_blocks[] = {1, 5, 8, 16};
const std::size_t summary_batches[] = {8, 16};
constexpr std::size_t n_blocks = std::size(summary_blocks), n_batches = std::size(summary_batches);
constexpr std::size_t n_shapes = n_blocks + n_batches;

// Per-call seconds of every block of summary_blocks on `m` and every batch of
// summary_batches on `bm` (all sequences primed to position 32), measured interleaved
// (so all see the same machine conditions): min over `reps` repetitions of the mean
// over a batch of calls lasting ~`rep_seconds`.
std::array<double, n_shapes> time_shapes(transformer& m, specdec::cpu::batched_transformer& bm, int reps,
                                         double rep_seconds) {
  std::vector<std::function<void()>> calls;
  m.reset();
  prime(m);
  for (std::size_t k : summary_blocks)
    calls.emplace_back([&m, b = make_block(k, m.vocab_size(), 5)] {
      m.forward(b);
      m.truncate(prompt_len);
    });
  std::vector<specdec::sequence_id> ids;
  const auto prompt = make_block(prompt_len, m.vocab_size(), 3);
  for (std::size_t i = 0; i < summary_batches[n_batches - 1]; ++i) {
    ids.push_back(bm.add_sequence());
    const specdec::sequence_block pb{ids.back(), prompt};
    bm.forward_batch(std::span(&pb, 1));
  }
  const auto next = make_block(summary_batches[n_batches - 1], m.vocab_size(), 5);
  for (std::size_t b : summary_batches)
    calls.emplace_back([&bm, &ids, &next, b] {
      std::vector<specdec::sequence_block> blocks;
      for (std::size_t i = 0; i < b; ++i) blocks.push_back({ids[i], std::span(&next[i], 1)});
      bm.forward_batch(blocks);
      for (std::size_t i = 0; i < b; ++i) bm.truncate(ids[i], prompt_len);
    });
  std::array<int, n_shapes> count{};
  for (std::size_t i = 0; i < n_shapes; ++i) {
    calls[i]();
    const double t0 = now();
    calls[i]();
    count[i] = std::max(3, static_cast<int>(rep_seconds / std::max(1e-7, now() - t0)));
  }
  std::array<double, n_shapes> best;
  best.fill(1e30);
  for (int r = 0; r < reps; ++r)
    for (std::size_t i = 0; i < n_shapes; ++i) {
      const double s = now();
      for (int c = 0; c < count[i]; ++c) calls[i]();
      best[i] = std::min(best[i], (now() - s) / count[i]);
    }
  for (auto id : ids) bm.remove_sequence(id);
  return best;
}

// Multiply-adds of one row through every weight product of the model.
double weight_macs(const specdec::cpu::model_config& c) {
  const double dim = c.dim, hid = c.hidden_dim, kvd = c.kv_dim();
  return c.n_layers * (2 * dim * dim + 2 * kvd * dim + 3 * dim * hid) + double(c.vocab_size) * dim;
}

// The attention of one row that attends to `positions` cached positions: multiply-adds
// (scores and weighted values, every layer and head) and the bytes of one sequence's
// fp32 keys and values it reads.
double attention_macs(const specdec::cpu::model_config& c, double positions) {
  return 2.0 * c.n_layers * c.n_heads * c.head_size() * positions;
}
double kv_bytes(const specdec::cpu::model_config& c, double positions) {
  return 2.0 * c.n_layers * c.kv_dim() * positions * sizeof(float);
}

struct summary_row {
  std::string model, format, tiles;  // tiles: the configuration the model resolved
  std::size_t threads;
  double bytes, macs, bw_ws, peak;  // peak: of the instruction kind the format computes in
  double fp32_peak;                 // the attention's instruction kind
  specdec::cpu::model_config config;
  std::array<double, n_shapes> t;   // summary_blocks, then summary_batches
  double t1() const { return t[0]; }
  double t5() const { return t[1]; }
  static double rows_of(std::size_t i) {
    return double(i < n_blocks ? summary_blocks[i] : summary_batches[i - n_blocks]);
  }
  // The roofline time of shape i's weight products (rows: tokens of the block or
  // sequences of the batch): the weights streamed once at the working-set bandwidth, or
  // 2 x rows x macs operations at the peak, whichever is longer.
  double bound(std::size_t i) const {
    const double ops = 2 * rows_of(i) * macs;
    return ops / specdec::cpu::roofline(peak, bw_ws, ops / bytes);
  }
  bool memory_bound(std::size_t i) const { return bytes / bw_ws >= bound(i) * (1 - 1e-9); }
  // The per-part roofline time of shape i: bound(i) plus the attention's own bound, its
  // operations at the fp32 peak or its key and value bytes at the working-set bandwidth,
  // whichever is longer. A block of k tokens at positions 32 .. 31 + k reads one cache
  // of 32 + k positions; a batch of b sequences of one token at position 32 reads b
  // caches of 33. Norms, RoPE, softmax, SwiGLU and the residual sums (elementwise, a few
  // operations per activation) are not counted.
  double bound_parts(std::size_t i) const {
    const double rows = rows_of(i), first = double(prompt_len) + 1;
    const bool block = i < n_blocks;
    const double positions = block ? rows * first + rows * (rows - 1) / 2 : rows * first;
    const double ops = 2 * attention_macs(config, positions);
    const double kv = block ? kv_bytes(config, double(prompt_len) + rows) : rows * kv_bytes(config, first);
    return bound(i) + std::max(ops / fp32_peak, kv / bw_ws);
  }
};

std::string shape_name(std::size_t i) {
  char name[32];
  std::snprintf(name, sizeof name, i < n_blocks ? "k%zu" : "b%zu",
                i < n_blocks ? summary_blocks[i] : summary_batches[i - n_blocks]);
  return name;
}

std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

const char* build_isa() {
#if defined(__AVX512F__)
  return SPECDEC_DETAIL_VNNI ? (SPECDEC_DETAIL_BF16_DOT ? "AVX-512F, VNNI, BF16" : "AVX-512F, VNNI")
                             : (SPECDEC_DETAIL_BF16_DOT ? "AVX-512F, BF16" : "AVX-512F");
#elif defined(__AVX2__) && defined(__FMA__)
  return "AVX2, FMA (x86-64-v3)";
#else
  return "scalar vector extensions";
#endif
}

void print_peak(const specdec::cpu::compute_peak& p) {
  std::printf("%zu thread%s: fp32 FMA %.1f GFLOP/s   bf16 dot %s   int8 dot %s\n", p.threads, p.threads == 1 ? "" : "s",
              p.fp32_flops / 1e9,
              p.bf16_flops > 0 ? (std::to_string(int(p.bf16_flops / 1e9 + 0.5)) + " GFLOP/s").c_str() : "n/a",
              p.int8_ops > 0 ? (std::to_string(int(p.int8_ops / 1e9 + 0.5)) + " GOP/s").c_str() : "n/a");
}

int summary(const std::string& csv_path) {
  const std::size_t all = std::max(1u, std::thread::hardware_concurrency());
  std::printf("\n== host: %s, %zu threads; this build's vector instructions: %s ==\n", cpu_model_name().c_str(), all,
              build_isa());
  std::printf("\n== compute-peak probe: %d independent vector chains per thread ==\n",
              specdec::cpu::detail::peak_chains);
  const specdec::cpu::compute_peak peak1 = specdec::cpu::measure_compute_peak(1, 0.1);
  const specdec::cpu::compute_peak peakall = specdec::cpu::measure_compute_peak(all, 0.1);
  print_peak(peak1);
  if (all > 1) print_peak(peakall);
  std::printf("\n== bandwidth probe: streaming read of a 1 GiB buffer, best of 5 passes ==\n");
  const double bw1 = specdec::cpu::measure_read_bandwidth(std::size_t{1} << 30, 1, 5);
  const double bwall = specdec::cpu::measure_read_bandwidth(std::size_t{1} << 30, all, 5);
  std::printf("1 thread: %.2f GB/s   %zu threads: %.2f GB/s\n", bw1 / 1e9, all, bwall / 1e9);

  std::printf("\n== forward at position 32, min over 31 repetitions of ~5 ms (%s) ==\n",
              cpu_clock_for_one_thread ? "1 thread: the thread's CPU time (--cpu-time); more threads: wall time"
                                       : "wall time");
  std::printf("%-12s %-5s %3s %10s %10s %10s %9s %9s %8s %8s %8s\n", "model", "fmt", "thr", "weight MB", "t(1) us",
              "t(5) us", "t5/t1", "GB/s", "frac_bw", "ws GB/s", "frac_ws");
  std::vector<summary_row> rows;
  for (const char* model : model_names) {
    for (weight_format f : formats) {
      for (std::size_t t : {std::size_t{1}, all}) {
        if (!listed(only_models, model) || !listed(only_formats, specdec::cpu::to_string(f)) ||
            !listed(only_threads, t == 1 ? "1" : "all"))
          continue;
        if (t == all && all == 1 && !rows.empty() && rows.back().threads == 1 && rows.back().model == model &&
            rows.back().format == specdec::cpu::to_string(f))
          continue;
        transformer m(load(model), {.threads = t, .format = f});
        specdec::cpu::batched_transformer bm(load(model), {.threads = t, .format = f});
        const auto& pk = t == 1 ? peak1 : peakall;
        summary_row r{model, std::string(specdec::cpu::to_string(f)), std::string(specdec::cpu::to_string(m.options().tiles)),
                      t, double(m.weight_bytes_per_forward()),
                      weight_macs(m.config()), 0, f == weight_format::w8a8 && pk.int8_ops > 0 ? pk.int8_ops : pk.fp32_flops,
                      pk.fp32_flops, m.config(), {}};
        use_cpu_clock = cpu_clock_for_one_thread && t == 1;
        r.t = time_shapes(m, bm, 31, 0.005);
        use_cpu_clock = false;
        // The bandwidth of streaming a buffer as large as the weights, over and over (as
        // decoding does): part of it may stay in the L3, so this bound is higher than
        // the DRAM bound for working sets near or below the L3 size.
        r.bw_ws = specdec::cpu::measure_read_bandwidth(static_cast<std::size_t>(r.bytes), t, 15);
        rows.push_back(r);
        const double gbs = r.bytes / r.t1();
        std::printf("%-12s %-5s %3zu %10.2f %10.1f %10.1f %9.2f %9.2f %8.2f %8.2f %8.2f\n", model, r.format.c_str(), t,
                    r.bytes / 1e6, r.t1() * 1e6, r.t5() * 1e6, r.t5() / r.t1(), gbs / 1e9, gbs / (t == 1 ? bw1 : bwall),
                    r.bw_ws / 1e9, gbs / r.bw_ws);
      }
    }
  }

  std::printf("\n== roofline: time and achieved fraction of min(peak, ws bandwidth x intensity) ==\n");
  std::printf("k<n>: a block of n tokens of one sequence; b<n>: n sequences of one token (batched_transformer).\n");
  std::printf("Peak: the fp32 FMA probe (int8 dot probe for w8a8). M/C: memory- or compute-bound roofline.\n");
  std::printf("roof: the weight products' roofline alone (the attention not counted). parts: the per-part\n"
              "roofline, the products' bound plus the attention's (its multiply-adds at the fp32 peak or its\n"
              "keys and values at the ws bandwidth, whichever is longer); elementwise work not counted.\n");
  std::printf("tiles: the tile configuration in effect (SPECDEC_TILES, else timed at the first load of the format).\n");
  std::printf("%-12s %-5s %3s %5s", "model", "fmt", "thr", "tiles");
  for (std::size_t i = 0; i < n_shapes; ++i) std::printf(" %8s us  roof parts", shape_name(i).c_str());
  std::printf("\n");
  for (const auto& r : rows) {
    std::printf("%-12s %-5s %3zu %5s", r.model.c_str(), r.format.c_str(), r.threads,
                r.format == "w8a8" ? "i8" : r.tiles.c_str());
    for (std::size_t i = 0; i < n_shapes; ++i)
      std::printf(" %11.1f %3.0f%%%c %4.0f%%", r.t[i] * 1e6, 100 * r.bound(i) / r.t[i], r.memory_bound(i) ? 'M' : 'C',
                  100 * r.bound_parts(i) / r.t[i]);
    std::printf("\n");
  }

  auto find = [&](const std::string& model, const std::string& fmt, std::size_t t) -> const summary_row* {
    for (const auto& r : rows)
      if (r.model == model && r.format == fmt && r.threads == t) return &r;
    return nullptr;
  };
  if (!csv_path.empty()) {
    std::ofstream csv(csv_path);
    csv << "model,format,threads,weight_bytes,t1_seconds,t5_seconds,block5_ratio,gbytes_per_s,bandwidth_1thread,"
           "bandwidth_all,fraction_of_bandwidth,working_set_bandwidth,fraction_of_working_set_bandwidth,"
           "compute_peak_gops,tiles";
    for (std::size_t i = 0; i < n_shapes; ++i)
      csv << ',' << shape_name(i) << "_seconds," << shape_name(i) << "_roofline," << shape_name(i) << "_roofline_parts";
    csv << '\n';
    for (const auto& r : rows) {
      csv << r.model << ',' << r.format << ',' << r.threads << ',' << r.bytes << ',' << r.t1() << ',' << r.t5() << ','
          << r.t5() / r.t1() << ',' << r.bytes / r.t1() / 1e9 << ',' << bw1 / 1e9 << ',' << bwall / 1e9 << ','
          << r.bytes / r.t1() / (r.threads == 1 ? bw1 : bwall) << ',' << r.bw_ws / 1e9 << ','
          << r.bytes / r.t1() / r.bw_ws << ',' << r.peak / 1e9 << ',' << (r.format == "w8a8" ? "i8" : r.tiles);
      for (std::size_t i = 0; i < n_shapes; ++i)
        csv << ',' << r.t[i] << ',' << r.bound(i) / r.t[i] << ',' << r.bound_parts(i) / r.t[i];
      csv << '\n';
    }
    std::printf("wrote %s\n", csv_path.c_str());
  }
  if (!find("kjv-big", "fp32", 1) || !find("kjv-big", "q8_0", 1) || !find("kjv-big", "fp32", all) ||
      !find("kjv-big", "q8_0", all)) {
    std::printf("\n(goals: not evaluated, the summary's rows leave out kjv-big fp32 or q8_0)\n");
    return 0;
  }
  const summary_row& big32 = *find("kjv-big", "fp32", 1);
  const summary_row& big8 = *find("kjv-big", "q8_0", 1);
  const double frac = big32.bytes / big32.t1() / bw1;
  std::printf("\n== goals (kjv-big, 1 thread) ==\n");
  std::printf("fp32 single token at %.0f%% of the 1-thread bandwidth bound (goal >= 60%%): %s\n", 100 * frac,
              frac >= 0.6 ? "met" : "MISSED");
  const double frac_ws = big32.bytes / big32.t1() / big32.bw_ws;
  std::printf("  (and at %.0f%% of the bandwidth of streaming a buffer of the weights' size, %.1f GB/s: %s)\n",
              100 * frac_ws, big32.bw_ws / 1e9, frac_ws >= 0.6 ? "met" : "MISSED");
  std::printf("q8_0 single token %.2fx faster than fp32 (goal >= 1.7x): %s\n", big32.t1() / big8.t1(),
              big32.t1() / big8.t1() >= 1.7 ? "met" : "MISSED");
  std::printf("fp32 block of 5 = %.2fx one token (goal <= 1.3x): %s\n", big32.t5() / big32.t1(),
              big32.t5() / big32.t1() <= 1.3 ? "met" : "MISSED");
  int below = 0, below_parts = 0, counted = 0;
  for (const auto& r : rows)
    for (std::size_t i = 0; i < n_shapes; ++i)
      if (shape_name(i) != "k1" && shape_name(i) != "k5" && r.model == "kjv-big") {
        ++counted;
        if (r.bound(i) / r.t[i] < 0.7) ++below;
        if (r.bound_parts(i) / r.t[i] < 0.7) ++below_parts;
      }
  std::printf("kjv-big blocks of k >= 8 and batches of >= 8 at >= 70%% of their roofline: %d of %d (%s); "
              "of the per-part roofline: %d of %d (%s)\n",
              counted - below, counted, below == 0 ? "met" : "MISSED", counted - below_parts, counted,
              below_parts == 0 ? "met" : "MISSED");
  const summary_row& big32a = *find("kjv-big", "fp32", all);
  const summary_row& big8a = *find("kjv-big", "q8_0", all);
  std::printf("(%zu threads: fp32 %.1f us, q8_0 %.1f us, ratio %.2fx; block of 5 %.2fx)\n", all, big32a.t1() * 1e6,
              big8a.t1() * 1e6, big32a.t1() / big8a.t1(), big32a.t5() / big32a.t1());
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
    else if (a == "--cpu-time") cpu_clock_for_one_thread = true;
    else if (a.rfind("--summary-csv=", 0) == 0) csv = a.substr(14);
    else if (a.rfind("--summary-models=", 0) == 0) only_models = a.substr(17);
    else if (a.rfind("--summary-formats=", 0) == 0) only_formats = a.substr(18);
    else if (a.rfind("--summary-threads=", 0) == 0) only_threads = a.substr(18);
    else {
      if (a.rfind("--benchmark_filter", 0) == 0) has_filter = true;
      args.push_back(argv[i]);
    }
  }
  std::string default_filter = "--benchmark_filter=^forward/kjv-big/(fp32|q8_0)/threads:1/k:(1|5)$";
  if (!has_filter) args.push_back(default_filter.data());
  int n = static_cast<int>(args.size());
  register_forward_benchmarks();
  register_after_draft_benchmark();
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return run_summary ? summary(csv) : 0;
}
