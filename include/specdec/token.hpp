#pragma once
/// \file token.hpp
/// Token ids and the logits block a model hands to the policy layer.
#include <cassert>
#include <cstddef>
#include <span>
#include <string>

#include "specdec/error.hpp"
#include "specdec/fwd.hpp"

namespace specdec {

/// The special ids of llama2.c / SentencePiece vocabularies.
inline constexpr token_id unk_token = 0;
inline constexpr token_id bos_token = 1;
inline constexpr token_id eos_token = 2;

/// A read-only `rows x vocab` row-major block of next-token logits, owned by the model
/// that produced it and valid until that model's next non-const call. Row i holds the
/// logits after the i-th token of the block that was forwarded.
///
/// ```cpp
/// specdec::logits_block out = model.forward(tokens);
/// std::span<const float> last = out.row(out.rows - 1);
/// ```
struct logits_block {
  const float* data = nullptr;
  std::size_t rows = 0;
  std::size_t vocab = 0;

  [[nodiscard]] std::span<const float> row(std::size_t i) const noexcept {
    assert(i < rows);
    return {data + i * vocab, vocab};
  }
  [[nodiscard]] std::span<const float> flat() const noexcept { return {data, rows * vocab}; }
};

/// Throws `token_out_of_range` unless every id of `tokens` lies in [0, vocab).
/// `what` names the caller for the message (e.g. "transformer::forward").
inline void check_token_ids(std::span<const token_id> tokens, std::size_t vocab,
                            const char* what) {
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || static_cast<std::size_t>(tokens[i]) >= vocab) {
      throw token_out_of_range(std::string(what) + ": token id " + std::to_string(tokens[i]) +
                               " at position " + std::to_string(i) +
                               " is out of range; expected 0 <= id < vocab_size = " +
                               std::to_string(vocab));
    }
  }
}

/// Throws `context_overflow` if `cached + incoming` exceeds `context`.
inline void check_context(std::size_t cached, std::size_t incoming, std::size_t context,
                          const char* what) {
  if (cached + incoming > context) {
    throw context_overflow(std::string(what) + ": " + std::to_string(cached) +
                           " cached + " + std::to_string(incoming) +
                           " new tokens exceed the context length " + std::to_string(context));
  }
}

}  // namespace specdec
