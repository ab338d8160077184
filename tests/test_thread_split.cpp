// Tests for include/specdec/backend/cpu/detail/thread_pool.hpp's work split (static
// slices, and balanced chunks that take over a stalled part), the shared pools, and the
// transformer's results on any thread count, bit for bit. The pool under concurrency
// (and ThreadSanitizer) is tests/test_thread_pool.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cpu_fixtures.hpp"
#include "specdec/backend/cpu/detail/thread_pool.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/model.hpp"

namespace {
using namespace cpu_fixtures;

TEST(transformer_threads, results_do_not_depend_on_the_thread_count_bit_for_bit) {
  // The same block and single-token forwards on 1, 2 and 3 threads, every format (of the
  // weights and of the KV cache), on a
  // model where every product is threaded (kjv-big) and one where most are below the
  // threading threshold (kjv-little).
  for (const char* name : {"kjv-little.bin", "kjv-big.bin"}) {
    auto ck = shared_checkpoint(name);
    // Every weight format with an fp32 cache, then fp32 weights with each 16-bit cache.
    const std::pair<weight_format, weight_format> configs[] = {
        {weight_format::fp32, weight_format::fp32}, {weight_format::bf16, weight_format::fp32},
        {weight_format::fp16, weight_format::fp32}, {weight_format::q8_0, weight_format::fp32},
        {weight_format::w8a8, weight_format::fp32}, {weight_format::fp32, weight_format::fp16},
        {weight_format::fp32, weight_format::bf16}};
    for (auto [f, kv] : configs) {
      SCOPED_TRACE(std::string(name) + " " + std::string(specdec::cpu::to_string(f)) + ", kv " +
                   std::string(specdec::cpu::to_string(kv)));
      auto seq = random_tokens(24, std::size_t(ck->config.vocab_size), 77);
      std::vector<float> ref_block, ref_single;
      for (std::size_t threads : {1u, 2u, 3u}) {
        transformer m(ck, {.threads = threads, .format = f, .kv_format = kv});
        EXPECT_EQ(m.options().threads, threads);
        EXPECT_EQ(m.options().format, f);
        auto block = flat_copy(m.forward(std::span(seq).first(17)));
        auto single = flat_copy(specdec::forward_one(m, seq[17]));
        if (threads == 1) {
          ref_block = block, ref_single = single;
          continue;
        }
        std::size_t mismatches = 0;
        for (std::size_t j = 0; j < block.size(); ++j) mismatches += block[j] != ref_block[j];
        for (std::size_t j = 0; j < single.size(); ++j) mismatches += single[j] != ref_single[j];
        EXPECT_EQ(mismatches, 0u) << threads << " threads vs 1";
      }
    }
  }
}

TEST(work_split, static_parts_compute_their_slice_and_balanced_parts_take_over_a_stalled_one) {
  using specdec::cpu::detail::split_range;
  using specdec::cpu::detail::work_split;
  for (std::size_t parts : {1u, 2u, 3u, 4u})
    for (std::size_t n : {0u, 1u, 5u, 40u, 64u, 1001u})
      for (std::size_t chunk : {0u, 1u, 3u, 7u}) {
        SCOPED_TRACE(std::to_string(parts) + " parts, " + std::to_string(n) + " units, chunk " + std::to_string(chunk));
        work_split split;
        split.reset(n, parts, chunk);
        EXPECT_EQ(split.chunked(), chunk != 0);
        // Part 0 stalls until every other part has returned (a descheduled thread). The
        // others run concurrently.
        std::vector<std::atomic<int>> hits(n);
        std::vector<std::vector<std::pair<std::size_t, std::size_t>>> got(parts);
        const auto work = [&](std::size_t p) {
          split.run(p, [&](std::size_t b, std::size_t e) {
            got[p].emplace_back(b, e);
            for (std::size_t u = b; u < e; ++u) hits[u].fetch_add(1);
          });
        };
        std::vector<std::thread> others;
        for (std::size_t p = 1; p < parts; ++p) others.emplace_back(work, p);
        for (auto& t : others) t.join();
        work(0);
        for (std::size_t u = 0; u < n; ++u) ASSERT_EQ(hits[u].load(), 1) << "unit " << u;
        std::size_t b0, e0;
        split_range(n, 0, parts, 1, b0, e0);
        std::size_t by_part0 = 0;
        for (auto [b, e] : got[0]) by_part0 += e - b;
        if (chunk == 0 || parts == 1) {
          EXPECT_EQ(by_part0, e0 - b0);  // its own slice, all of it and nothing else
          for (auto [b, e] : got[0]) EXPECT_TRUE(b0 <= b && e <= e0);
        } else {
          EXPECT_EQ(by_part0, 0u);  // the others took over the stalled part's slice
        }
        // Every chunk is at most `chunk` units, and a part's own slice comes front to back.
        for (std::size_t p = 0; p < parts; ++p) {
          std::size_t bp, ep, next;
          split_range(n, p, parts, 1, bp, ep);
          next = bp;
          for (auto [b, e] : got[p]) {
            if (chunk != 0) {
              EXPECT_LE(e - b, chunk);
            }
            if (b >= bp && e <= ep && b >= next) {
              EXPECT_EQ(b, next) << "part " << p << " skipped part of its own slice";
              next = e;
            }
          }
        }
      }
}

TEST(transformer_threads, default_uses_all_cores_and_models_share_one_pool) {
  auto ck = shared_checkpoint("stories260K.bin");
  transformer a(ck), b(ck, {.threads = 1});
  EXPECT_EQ(a.options().threads, std::max(1u, std::thread::hardware_concurrency()));
  EXPECT_EQ(b.options().threads, 1u);
  EXPECT_EQ(a.options().format, weight_format::fp32);
}

}  // namespace
