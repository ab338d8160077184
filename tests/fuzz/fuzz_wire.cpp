// libFuzzer harness for the verify protocol's decoder (include/specdec/hybrid/wire.hpp),
// which reads untrusted bytes on both sides of the split-decoding link. Properties:
// decoding never crashes, reads out of bounds or throws anything but protocol_error, and
// every accepted frame re-encodes to exactly the input bytes (the decoder accepts only
// the encoder's canonical form).
//
// Build and run (self-contained; no CMake target):
//   clang++-14 -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -Iinclude
//     tests/fuzz/fuzz_wire.cpp -o build/fuzz_wire   (one command)
//   build/fuzz_wire -max_total_time=60 tests/fuzz/corpus/wire
// (copy the corpus first if the fuzzer should not add files to the committed one).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

#include "specdec/hybrid/wire.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace wire = specdec::hybrid::wire;
  const wire::limits lim{.vocab_size = 2048, .max_tokens = 4096, .max_draft = 32, .max_support = 2048};
  const std::span<const std::uint8_t> in(data, size);
  try {
    if (const auto h = wire::peek_frame(in, lim); h && h->frame_bytes() > size) return 0;  // incomplete
    const wire::message m = wire::decode_frame(in, lim);
    const std::vector<std::uint8_t> again = wire::encode(m);
    if (again.size() != size || !std::equal(again.begin(), again.end(), data)) std::abort();
  } catch (const specdec::hybrid::protocol_error&) {
  }
  return 0;
}
