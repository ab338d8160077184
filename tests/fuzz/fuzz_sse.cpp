// libFuzzer harness for the device's server-sent-events parser
// (include/specdec/hybrid/completion_client.hpp, sse_parser), which reads the event stream
// of an untrusted server. The first input byte picks a small line bound and a chunk size;
// the rest is the stream. Properties: the parser never crashes, reads out of bounds or
// throws anything but protocol_error; no event's data exceeds the bound; and feeding the
// stream in chunks of any size delivers exactly the events (and the same failure) as
// feeding it whole.
// Run: scripts/fuzz.sh 60 sse (seeds in tests/fuzz/corpus/sse/).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "specdec/hybrid/completion_client.hpp"

namespace {

struct outcome {
  std::vector<std::string> events;
  bool failed = false;
  bool operator==(const outcome&) const = default;
};

outcome parse(std::string_view in, std::size_t chunk, std::size_t max_line) {
  outcome o;
  specdec::hybrid::sse_parser p(
      [&](std::string_view data) {
        if (data.size() > max_line) std::abort();
        o.events.emplace_back(data);
      },
      max_line);
  try {
    for (std::size_t i = 0; i < in.size(); i += chunk) p.feed(in.substr(i, chunk));
  } catch (const specdec::hybrid::protocol_error&) {
    o.failed = true;
  }
  return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::uint8_t knob = data[0];
  const std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  const std::size_t max_line = 8u + (knob & 0x0fu) * 8u;
  const std::size_t chunk = 1u + (knob >> 4);
  const outcome whole = parse(in, in.size() + 1, max_line);
  const outcome split = parse(in, chunk, max_line);
  if (!(whole == split)) std::abort();
  return 0;
}
