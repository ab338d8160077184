// Tests for include/specdec/backend/cpu/roofline.hpp: the roofline bound, the peak loops'
// arithmetic (they must do the operations they are counted for), and the probes'
// results being measurements of this build's instruction kinds. No speed is asserted.
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstring>
#include <vector>

#include "specdec/backend/cpu/detail/float16.hpp"
#include "specdec/backend/cpu/roofline.hpp"

namespace {
namespace cpu = specdec::cpu;
namespace d = specdec::cpu::detail;

TEST(roofline, is_the_lesser_of_the_peak_and_the_bandwidth_times_the_intensity) {
  EXPECT_DOUBLE_EQ(cpu::roofline(100e9, 20e9, 2.0), 40e9);   // memory-bound
  EXPECT_DOUBLE_EQ(cpu::roofline(100e9, 20e9, 8.0), 100e9);  // compute-bound
  EXPECT_DOUBLE_EQ(cpu::roofline(100e9, 20e9, 5.0), 100e9);  // the ridge point
}

TEST(roofline, fma_loop_runs_every_chain_for_every_step) {
  // Every accumulator register is a chain of its own, started at a distinct value (equal
  // ones could be merged into fewer FMAs than counted): with AVX-512 chain c is one v16
  // starting at c 2^-10 in every lane; without it two 8-lane registers 2c and 2c + 1
  // (lanes 0-7 and 8-15 of v16 chain c), register r starting at r 2^-10. Each adds
  // fma(1e-3, 1e-3, .) once per step; the loop sums the chains lane-wise, then the lanes
  // by hsum16's tree.
  const std::size_t steps = 37;
  const auto chain = [&](int r) {
    float x = static_cast<float>(r) * 0x1p-10f;
    for (std::size_t s = 0; s < steps; ++s) x = d::fmadd(1.0e-3f, 1.0e-3f, x);
    return x;
  };
  float lanes[16] = {};
  for (int c = 0; c < d::peak_chains; ++c)
    for (int l = 0; l < 16; ++l) lanes[l] += chain(d::fma_peak_halves ? 2 * c + l / 8 : c);
  d::v16 v;
  std::memcpy(&v, lanes, sizeof v);
  EXPECT_EQ(d::fma_peak_loop(steps), d::hsum16(v));
  EXPECT_NE(d::fma_peak_loop(steps), d::fma_peak_loop(steps - 1));
}

#if SPECDEC_DETAIL_VNNI
TEST(roofline, int8_loop_adds_four_products_per_lane_per_step) {
  // Chain c: c + 4 x steps in lane 0; the loop returns lane 0 of the sum of the chains.
  const int steps = 25;
  int expect = 0;
  for (int c = 0; c < d::peak_chains; ++c) expect += c + 4 * steps;
  EXPECT_EQ(d::int8_peak_loop(steps), static_cast<float>(expect));
}
#endif

#if SPECDEC_DETAIL_BF16_DOT
TEST(roofline, bf16_loop_adds_two_products_per_lane_per_step) {
  const float x = specdec::cpu::detail::bf16_to_float(0x3a83);
  const float grown = d::bf16_peak_loop(100) - d::bf16_peak_loop(0);
  EXPECT_NEAR(grown, 16.0f * d::peak_chains * 100 * 2 * x * x, 1e-2f * 16 * d::peak_chains * 100 * 2 * x * x);
}
#endif

TEST(roofline, stream_read_sums_every_element) {
  std::vector<float> x(64 * 5);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 7);
  float expect = 0;
  for (float v : x) expect += v;
  EXPECT_EQ(d::stream_read(x.data(), x.size()), expect);  // small integers: exact in any order
}

TEST(roofline, probes_measure_the_instruction_kinds_of_this_build) {
  const cpu::compute_peak p = cpu::measure_compute_peak(1, 0.002);
  EXPECT_EQ(p.threads, 1u);
  EXPECT_GT(p.fp32_flops, 0.0);
  EXPECT_TRUE(std::isfinite(p.fp32_flops));
  EXPECT_EQ(p.bf16_flops > 0.0, SPECDEC_DETAIL_BF16_DOT == 1);
  EXPECT_EQ(p.int8_ops > 0.0, SPECDEC_DETAIL_VNNI == 1);
  const cpu::compute_peak two = cpu::measure_compute_peak(2, 0.002);
  EXPECT_EQ(two.threads, 2u);
  const double bw = cpu::measure_read_bandwidth(std::size_t{1} << 20, 1, 2);
  EXPECT_GT(bw, 0.0);
  EXPECT_TRUE(std::isfinite(bw));
}

}  // namespace
