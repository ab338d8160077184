// Fuzz harness: any bytes as text through the real KJV tokenizer. The fast encoder must
// equal the slow quadratic merge loop (reference_encode.hpp), and decoding must give the
// text back.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "reference_encode.hpp"
#include "specdec/backend/cpu/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const specdec::cpu::tokenizer kjv(SPECDEC_MODELS_DIR "/kjv2k-tokenizer.bin", 2048);
  if (size > 512) return 0;  // the reference is quadratic in the text length
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto ids = kjv.encode(text, /*add_bos=*/false);
  if (ids != specdec::testing::reference_encode(kjv, text, specdec::testing::utf8_char_length)) __builtin_trap();
  if (kjv.decode(kjv.encode(text)) != text) __builtin_trap();
  return 0;
}
