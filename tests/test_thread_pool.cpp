// Tests for include/specdec/backend/cpu/detail/thread_pool.hpp under concurrency: one pool
// shared by several callers (as `shared_pool` shares it between every model asking for
// the same thread count), and two speculative decoders on CPU-backend models sharing that
// pool and the converted weights, run from two threads at once. Their outputs must be the
// serial runs' outputs, token for token.
//
// These are the threaded tests `scripts/bootstrap.sh test` also builds and runs under
// ThreadSanitizer (SPECDEC_TSAN); keep them quick (they run at TSan's 5-15x slowdown).
#include <gtest/gtest.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "specdec/backend/cpu/checkpoint.hpp"
#include "specdec/backend/cpu/detail/thread_pool.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/decoder.hpp"

namespace {
using specdec::token_id;
using specdec::cpu::transformer;

// Several threads call run() on one pool at once, many times: every call runs every part
// exactly once, on its own data, and returns only when all its parts are done.
TEST(thread_pool, concurrent_callers_each_get_every_part_exactly_once) {
  const auto pool = specdec::cpu::detail::shared_pool(2);
  ASSERT_EQ(pool->size(), 2u);
  constexpr int callers = 3, rounds = 300;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < callers; ++c) {
    threads.emplace_back([&, c] {
      for (int r = 0; r < rounds; ++r) {
        std::vector<int> hits(pool->size(), 0);  // plain ints: each part writes its own
        std::vector<std::size_t> seen_parts(pool->size(), 0);
        pool->run([&](std::size_t part, std::size_t parts) {
          hits[part] += 1 + c;
          seen_parts[part] = parts;
        });
        for (std::size_t p = 0; p < hits.size(); ++p)
          if (hits[p] != 1 + c || seen_parts[p] != pool->size()) failures.fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
}

std::shared_ptr<const specdec::cpu::checkpoint> load(const char* name) {
  return std::make_shared<const specdec::cpu::checkpoint>(
      specdec::cpu::load_checkpoint(std::string(SPECDEC_MODELS_DIR) + "/" + name));
}

/// A draft and a target over one checkpoint (each its own instance and cache), 2 threads:
/// every model of this file shares the one 2-thread pool and the converted weights.
struct model_pair {
  transformer draft, target;
  model_pair(const std::shared_ptr<const specdec::cpu::checkpoint>& ck, specdec::cpu::weight_format draft_format)
      : draft(ck, {.threads = 2, .format = draft_format}), target(ck, {.threads = 2}) {}
};

/// One decoder's work: greedy and sampled speculative generations on its pair.
std::vector<std::vector<token_id>> decode(model_pair& m, const std::vector<token_id>& prompt) {
  std::vector<std::vector<token_id>> out;
  for (float temperature : {0.0f, 0.8f}) {
    specdec::speculative_decoder dec(m.draft, m.target, specdec::fixed_gamma{.gamma = 4}, specdec::rejection_sampling{},
                                     {.temperature = temperature, .top_p = 0.95f}, /*seed=*/11);
    out.push_back(dec.generate(prompt, {.max_new_tokens = 24}).tokens);
  }
  specdec::autoregressive_decoder ar(m.target);
  out.push_back(ar.generate(prompt, {.max_new_tokens = 12}).tokens);
  return out;
}

TEST(thread_pool, two_decoders_sharing_the_pool_from_two_threads_match_serial_runs) {
  model_pair kjv(load("kjv-little.bin"), specdec::cpu::weight_format::w8a8);
  model_pair stories(load("stories260K.bin"), specdec::cpu::weight_format::bf16);
  ASSERT_EQ(kjv.target.options().threads, 2u);
  const std::vector<token_id> kjv_prompt{1, 450, 200}, stories_prompt{1, 400, 300};
  const auto kjv_serial = decode(kjv, kjv_prompt);
  const auto stories_serial = decode(stories, stories_prompt);
  ASSERT_FALSE(kjv_serial[0].empty());
  for (int round = 0; round < 3; ++round) {
    std::vector<std::vector<token_id>> kjv_out, stories_out;
    std::thread a([&] { kjv_out = decode(kjv, kjv_prompt); });
    std::thread b([&] { stories_out = decode(stories, stories_prompt); });
    a.join();
    b.join();
    EXPECT_EQ(kjv_out, kjv_serial) << "round " << round;
    EXPECT_EQ(stories_out, stories_serial) << "round " << round;
  }
}

// Models built from two threads at once get the one shared pool and the one copy of the
// converted weights (`shared_instance`), and compute what a model built alone computes.
TEST(thread_pool, models_built_concurrently_share_pool_and_weights) {
  const auto ck = load("stories260K.bin");
  const std::vector<token_id> prompt{1, 400, 300, 7};
  transformer alone(ck, {.threads = 2});
  const auto l = alone.forward(prompt);
  const std::vector<float> want(l.data, l.data + l.rows * l.vocab);
  std::unique_ptr<transformer> made[2];
  std::vector<float> got[2];
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i)
    threads.emplace_back([&, i] {
      made[i] = std::make_unique<transformer>(ck, specdec::cpu::transformer_options{.threads = 2});
      const auto r = made[i]->forward(prompt);
      got[i].assign(r.data, r.data + r.rows * r.vocab);
    });
  for (auto& t : threads) t.join();
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(got[i], want) << "model " << i;
    EXPECT_EQ(made[i]->converted_weights(), alone.converted_weights());
  }
}

}  // namespace
