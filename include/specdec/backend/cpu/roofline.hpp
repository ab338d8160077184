#pragma once
/// \file backend/cpu/roofline.hpp
/// This host's roofline, measured: the compute peak of the instructions the backend's
/// kernels are made of (fp32 FMA; bf16 pair dot products where the build has
/// AVX512_BF16; int8 dot products where it has AVX512-VNNI) and the read bandwidth of a
/// stream, each on a given number of threads, and the bound
/// min(peak, bandwidth x arithmetic intensity) that a product is held to. A kernel far
/// below its bound is limited by something else than the machine (loads, shuffles,
/// latency); one near it can only get faster by moving fewer bytes or fewer operations.
///
/// The peak loops run `peak_chains` independent accumulator chains through the vector
/// layer's operations (arch/vector.hpp), enough to cover the FMA latency of every
/// supported core with two FMA pipes, so they measure throughput, not latency.
///
/// ```cpp
/// const specdec::cpu::compute_peak peak = specdec::cpu::measure_compute_peak(/*threads*/ 1, /*seconds*/ 0.01);
/// const double bw = specdec::cpu::measure_read_bandwidth(std::size_t{8} << 20, /*threads*/ 1, /*passes*/ 2);
/// // An fp32 weight product of a block of 8 tokens: 2 x 8 flops per 4-byte weight.
/// const double bound = specdec::cpu::roofline(peak.fp32_flops, bw, 2.0 * 8 / 4);  // flop/s
/// ```
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "specdec/backend/cpu/detail/aligned.hpp"
#include "specdec/backend/cpu/detail/arch/vector.hpp"
#include "specdec/backend/cpu/detail/thread_pool.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace specdec::cpu {

/// Measured operations per second of one instruction kind, on `threads` threads.
struct compute_peak {
  std::size_t threads = 1;
  double fp32_flops = 0;  ///< fp32 FMAs x 2 per second (every format but w8a8 computes in these)
  double bf16_flops = 0;  ///< vdpbf16ps flops (2 pairs x 2 per fp32 lane) per second; 0: not in this build
  double int8_ops = 0;    ///< vpdpbusd multiply-adds x 2 per second (w8a8's products); 0: not in this build
};

/// min(peak, bandwidth x intensity): the operations per second a kernel doing
/// `intensity` operations per byte it streams can reach (peak in operations/s,
/// bandwidth in bytes/s).
[[nodiscard]] inline double roofline(double peak, double bandwidth, double intensity) noexcept {
  return std::min(peak, bandwidth * intensity);
}

namespace detail {

/// Independent chains per peak loop: 16 512-bit accumulators with AVX-512 (half the
/// registers), 6 v16 (12 ymm of 16) otherwise.
#if defined(__AVX512F__)
inline constexpr int peak_chains = 16;
#else
inline constexpr int peak_chains = 6;
#endif

/// Runs `steps` rounds of step(acc[c]) over peak_chains independent accumulators, chain c
/// starting at c x `start` in every lane (distinct, so that no two chains can be merged),
/// and returns their lane-wise sum.
template <class Acc, class Elem, class Step>
inline Acc run_chains(std::size_t steps, Elem start, Step&& step) noexcept {
  Acc acc[peak_chains];
#pragma GCC unroll 16
  for (int c = 0; c < peak_chains; ++c) acc[c] = Acc{} + start * static_cast<Elem>(c);
  for (std::size_t s = 0; s < steps; ++s) {
#pragma GCC unroll 16
    for (int c = 0; c < peak_chains; ++c) step(acc[c]);
  }
  Acc sum{};
#pragma GCC unroll 16
  for (int c = 0; c < peak_chains; ++c) sum += acc[c];
  return sum;
}

/// `steps` x peak_chains fp32 vector FMAs (16 lanes each); returns a value depending on
/// all of them.
#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
// Without AVX-512 GCC keeps a 64-byte vector in memory between operations, so chains of
// v16 would time the stack: the same FMAs as 2 x peak_chains chains of 256-bit halves,
// register r starting at r 2^-10 (lanes 0-7 of v16 chain c: register 2c, lanes 8-15:
// 2c + 1). Two halves that started equal would stay equal, and GCC would compute one and
// copy it: half the FMAs counted, at the chains' latency, not the pipes' throughput.
inline constexpr bool fma_peak_halves = true;
inline float fma_peak_loop(std::size_t steps) noexcept {
  const __m256 a = _mm256_set1_ps(1.0e-3f);
  __m256 acc[2 * peak_chains];
#pragma GCC unroll 16
  for (int c = 0; c < 2 * peak_chains; ++c) acc[c] = _mm256_set1_ps(static_cast<float>(c) * 0x1p-10f);
  for (std::size_t s = 0; s < steps; ++s) {
#pragma GCC unroll 16
    for (int c = 0; c < 2 * peak_chains; ++c) acc[c] = _mm256_fmadd_ps(a, a, acc[c]);
  }
  v16 sum{};
#pragma GCC unroll 16
  for (int c = 0; c < peak_chains; ++c) {
    v16 chain;
    __builtin_memcpy(&chain, &acc[2 * c], sizeof(chain));
    sum += chain;
  }
  return hsum16(sum);
}
#else
inline constexpr bool fma_peak_halves = false;  ///< chain c: one v16, c 2^-10 in every lane
inline float fma_peak_loop(std::size_t steps) noexcept {
  v16 a, b;
  splat(a, 1.0e-3f);
  splat(b, 1.0e-3f);
  return hsum16(run_chains<v16>(steps, 0x1p-10f, [&](v16& acc) { fmadd_lanes(acc, a, b); }));
}
#endif

#if SPECDEC_DETAIL_BF16_DOT
/// `steps` x peak_chains vdpbf16ps.
inline float bf16_peak_loop(std::size_t steps) noexcept {
  const vi16 pairs = vi16{} + 0x3a833a83;  // two bf16 values near 1e-3 per lane
  return hsum16(run_chains<v16>(steps, 0x1p-10f, [&](v16& acc) { dpbf16_lanes(acc, pairs, pairs); }));
}
#endif

#if SPECDEC_DETAIL_VNNI
/// `steps` x peak_chains vpdpbusd.
inline float int8_peak_loop(std::size_t steps) noexcept {
  const vi16 ones = vi16{} + 0x01010101;
  return static_cast<float>(run_chains<vi16>(steps, 1, [&](vi16& acc) { dpbusd_lanes(acc, ones, ones); })[0]);
}
#endif

inline double seconds_now() noexcept {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// Best rate (operations/s) of `loop(steps)` run on every thread of `pool` at once, each
/// step doing `ops_per_step` operations per thread: the step count grows until one run
/// lasts a millisecond, then runs repeat for about `seconds` and the fastest counts. Many
/// short runs, not a few long ones: on a shared machine a short run has a fair chance of
/// running undisturbed, a long one hardly any.
template <class Loop>
inline double best_rate(thread_pool& pool, double ops_per_step, double seconds, Loop&& loop) {
  std::vector<float> sink(pool.size());
  const auto timed = [&](std::size_t steps) {
    const double t0 = seconds_now();
    pool.run([&](std::size_t part, std::size_t) { sink[part] = loop(steps); });
    return seconds_now() - t0;
  };
  std::size_t steps = 256;
  while (timed(steps) < 1e-3 && steps < (std::size_t{1} << 40)) steps *= 2;
  double best = 0;
  for (const double end = seconds_now() + seconds; best == 0 || seconds_now() < end;)
    best = std::max(best, ops_per_step * double(steps) * double(pool.size()) / timed(steps));
  volatile float keep = sink[0];
  (void)keep;
  return best;
}

/// Sum of n floats (n a multiple of 64), 64 floats a step through four accumulators of
/// the widest vector the target keeps in registers (16 lanes with AVX-512, 8 otherwise:
/// without AVX-512 GCC keeps a 64-byte vector in memory): a read stream.
inline float stream_read(const float* p, std::size_t n) noexcept {
#if defined(__AVX512F__)
  using vec = v16;
#else
  using vec = v8;
#endif
  typedef float vec_unaligned __attribute__((vector_size(sizeof(vec)), aligned(4), may_alias));
  constexpr std::size_t w = sizeof(vec) / sizeof(float);
  vec acc[4] = {};
  for (std::size_t i = 0; i + 64 <= n; i += 64) {
#pragma GCC unroll 16
    for (std::size_t j = 0; j < 64 / w; ++j) acc[j % 4] += *reinterpret_cast<const vec_unaligned*>(p + i + j * w);
  }
  const vec sum = acc[0] + acc[1] + acc[2] + acc[3];
  float total = 0;
  for (std::size_t l = 0; l < w; ++l) total += sum[l];
  return total;
}

}  // namespace detail

/// The compute peaks of this build's instructions on `threads` threads (0 = all cores),
/// each timed for about `seconds`. The instruction kinds the build lacks read 0.
[[nodiscard]] inline compute_peak measure_compute_peak(std::size_t threads = 1, double seconds = 0.05) {
  auto pool = detail::shared_pool(threads);
  compute_peak p;
  p.threads = pool->size();
  constexpr double chains = detail::peak_chains;
  p.fp32_flops = detail::best_rate(*pool, chains * 16 * 2, seconds, detail::fma_peak_loop);
#if SPECDEC_DETAIL_BF16_DOT
  p.bf16_flops = detail::best_rate(*pool, chains * 16 * 4, seconds, detail::bf16_peak_loop);
#endif
#if SPECDEC_DETAIL_VNNI
  p.int8_ops = detail::best_rate(*pool, chains * 64 * 2, seconds, detail::int8_peak_loop);
#endif
  return p;
}

/// Read bandwidth (bytes/s) of streaming a buffer of `bytes` (rounded up to 256) on
/// `threads` threads (0 = all cores), each reading a contiguous share: the best of
/// `passes` passes. Buffers well beyond the last-level cache measure DRAM; a buffer of a
/// model's weight size measures what its decoding can stream (partly from the cache).
[[nodiscard]] inline double measure_read_bandwidth(std::size_t bytes, std::size_t threads = 1, int passes = 5) {
  auto pool = detail::shared_pool(threads);
  detail::aligned_vector<float> buf((bytes + 255) / 256 * 64);
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<float>(i & 1023);
  std::vector<float> sink(pool->size());
  double best = 0;
  for (int p = 0; p < std::max(1, passes); ++p) {
    const double t0 = detail::seconds_now();
    pool->run([&](std::size_t part, std::size_t parts) {
      std::size_t b, e;
      detail::split_range(buf.size(), part, parts, 64, b, e);
      sink[part] = detail::stream_read(buf.data() + b, e - b);
    });
    best = std::max(best, double(buf.size()) * sizeof(float) / (detail::seconds_now() - t0));
  }
  volatile float keep = sink[0];
  (void)keep;
  return best;
}

}  // namespace specdec::cpu
