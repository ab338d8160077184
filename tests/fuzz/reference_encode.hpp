#pragma once
// A slow, obviously correct encoder for checking `cpu::tokenizer::encode` (its priority
// queue over a linked list of symbols): llama2.c's quadratic merge loop, which rescans
// every adjacent pair after each merge. Shared by tests/test_tokenizer.cpp and the
// round-trip fuzzer.
#include <cstddef>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "specdec/backend/cpu/tokenizer.hpp"

namespace specdec::testing {

/// llama2.c's characters: a lead byte plus up to 3 continuation bytes (10xxxxxx).
inline std::size_t llama2c_char_length(std::string_view s, std::size_t i) {
  std::size_t n = 1;
  while (n < 4 && i + n < s.size() && (static_cast<unsigned char>(s[i + n]) & 0xC0) == 0x80) ++n;
  return n;
}

/// The tokenizer's documented characters: the length its lead byte announces (2, 3 or 4
/// for 110xxxxx, 1110xxxx, 11110xxx) when that many bytes follow and all are continuation
/// bytes, else 1. Equal to llama2.c's on valid UTF-8; on invalid bytes it keeps a stray
/// byte alone.
inline std::size_t utf8_char_length(std::string_view s, std::size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  const std::size_t n = c >= 0xF8 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
  if (i + n > s.size()) return 1;
  for (std::size_t k = 1; k < n; ++k)
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 1;
  return n;
}

/// `t.encode(text, false)` computed the slow way, characters split by `char_length`:
/// a space in front, characters to their pieces (or byte-fallback ids), then merge the
/// best-scoring adjacent pair (leftmost on ties) until none merges.
template <class CharLength>
std::vector<token_id> reference_encode(const cpu::tokenizer& t, std::string_view text, CharLength char_length) {
  std::vector<token_id> ids;
  if (text.empty()) return ids;
  std::string s(1, ' ');  // the dummy prefix
  s += text;
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = char_length(std::string_view(s), i);
    if (auto id = t.find(std::string_view(s).substr(i, n))) {
      ids.push_back(*id);
    } else {
      for (std::size_t k = 0; k < n; ++k) ids.push_back(static_cast<unsigned char>(s[i + k]) + 3);
    }
    i += n;
  }
  std::string merged;
  for (;;) {
    float best = -std::numeric_limits<float>::infinity();
    int best_id = -1;
    std::size_t best_at = 0;
    for (std::size_t i = 0; i + 1 < ids.size(); ++i) {
      merged.assign(t.piece(ids[i])).append(t.piece(ids[i + 1]));
      if (auto id = t.find(merged); id && (best_id < 0 || t.score(*id) > best)) {
        best = t.score(*id);
        best_id = *id;
        best_at = i;
      }
    }
    if (best_id < 0) break;
    ids[best_at] = best_id;
    ids.erase(ids.begin() + static_cast<std::ptrdiff_t>(best_at) + 1);
  }
  return ids;
}

}  // namespace specdec::testing
