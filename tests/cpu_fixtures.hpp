#pragma once
// Shared by the CPU backend's test files (test_transformer, test_kernels, test_weights,
// test_thread_pool): the bundled checkpoints, each loaded once per test binary, random
// token sequences, and copies of logits.
#include <algorithm>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "specdec/backend/cpu/checkpoint.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/model.hpp"

namespace cpu_fixtures {
using specdec::token_id;
using specdec::cpu::checkpoint;
using specdec::cpu::transformer;
using specdec::cpu::weight_format;

inline std::string model_path(const char* name) { return std::string(SPECDEC_MODELS_DIR) + "/" + name; }

// Each checkpoint is loaded once per test binary and shared by every model built on it.
inline std::shared_ptr<const checkpoint> shared_checkpoint(const char* name) {
  static std::vector<std::pair<std::string, std::shared_ptr<const checkpoint>>> loaded;
  for (auto& [n, ck] : loaded)
    if (n == name) return ck;
  auto ck = std::make_shared<const checkpoint>(specdec::cpu::load_checkpoint(model_path(name)));
  loaded.emplace_back(name, ck);
  return ck;
}

inline std::vector<token_id> random_tokens(std::size_t n, std::size_t vocab, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<token_id> d(0, static_cast<token_id>(vocab) - 1);
  std::vector<token_id> out(n);
  for (auto& t : out) t = d(rng);
  out[0] = specdec::bos_token < static_cast<token_id>(vocab) ? specdec::bos_token : 0;
  return out;
}

inline constexpr weight_format all_formats[] = {weight_format::fp32, weight_format::bf16, weight_format::fp16,
                                                weight_format::q8_0, weight_format::w8a8};

inline std::vector<float> flat_copy(const specdec::logits_block& b) { return {b.flat().begin(), b.flat().end()}; }

inline token_id argmax(std::span<const float> row) {
  return static_cast<token_id>(std::max_element(row.begin(), row.end()) - row.begin());
}

}  // namespace cpu_fixtures
