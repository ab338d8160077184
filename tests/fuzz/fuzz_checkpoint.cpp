// Fuzz harness: checkpoint bytes -> load -> one forward -> truncate -> forward.
// Input: byte 0 picks the weight format (% 5) and the KV cache format (/ 5 % 3), bytes
// 1..3 are the tokens fed (modulo the vocabulary), the rest is a llama2.c checkpoint.
// Anything but a specdec::error (a crash, a sanitizer report, another exception) is a bug.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "specdec/backend/cpu/checkpoint.hpp"
#include "specdec/backend/cpu/transformer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace specdec::cpu;
  if (size < 4) return 0;
  constexpr weight_format formats[] = {weight_format::fp32, weight_format::bf16, weight_format::fp16,
                                       weight_format::q8_0, weight_format::w8a8};
  constexpr weight_format kv_formats[] = {weight_format::fp32, weight_format::bf16, weight_format::fp16};
  try {
    auto ck = std::make_shared<const checkpoint>(parse_checkpoint(std::span(data + 4, size - 4), "fuzz input"));
    // 64 MiB: a header implying more cache or scratch must be refused, not allocated.
    transformer m(ck, {.threads = 1, .format = formats[data[0] % 5], .kv_format = kv_formats[data[0] / 5 % 3],
                       .memory_limit = std::size_t{64} << 20});
    const std::size_t vocab = m.vocab_size(), n = std::min<std::size_t>(3, m.context_length());
    std::vector<specdec::token_id> tokens;
    for (std::size_t i = 0; i < n; ++i) tokens.push_back(static_cast<specdec::token_id>(data[1 + i] % vocab));
    const specdec::logits_block first = m.forward(tokens);
    if (first.rows != n || m.cache_length() != n) __builtin_trap();
    m.truncate(1);
    (void)m.forward(std::span(tokens).subspan(1, n - 1));
    if (m.cache_length() != n) __builtin_trap();
  } catch (const specdec::error&) {
    // Rejected with a specdec error: the expected outcome for most inputs.
  }
  return 0;
}
