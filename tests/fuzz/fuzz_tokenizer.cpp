// Fuzz harness: tokenizer bytes -> load -> encode / decode.
// Input: bytes 0..1 (little-endian) pick the vocabulary size, 259 + value % 1024; byte 2
// is the length of the text that follows; the rest is a llama2.c tokenizer.bin. A loaded
// tokenizer must give decode(encode(text)) == text for any text; anything but a
// specdec::error at load is a bug.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "specdec/backend/cpu/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using specdec::cpu::tokenizer;
  if (size < 3) return 0;
  const std::size_t vocab = tokenizer::min_vocab_size + (std::size_t{data[0]} | std::size_t{data[1]} << 8) % 1024;
  const std::size_t text_len = std::min<std::size_t>(data[2], size - 3);
  const std::string_view text(reinterpret_cast<const char*>(data) + 3, text_len);
  const std::string_view file(reinterpret_cast<const char*>(data) + 3 + text_len, size - 3 - text_len);
  try {
    const tokenizer t = tokenizer::from_bytes(file, vocab, "fuzz input");
    if (t.vocab_size() != vocab) __builtin_trap();
    const auto ids = t.encode(text);
    if (t.decode(ids) != text) __builtin_trap();
    std::string streamed;  // decode_piece over the sequence is decode
    specdec::token_id prev = -1;
    for (specdec::token_id id : ids) streamed += t.decode_piece(prev, id), prev = id;
    if (streamed != text) __builtin_trap();
  } catch (const specdec::error&) {
  }
  return 0;
}
