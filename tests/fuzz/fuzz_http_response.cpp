// libFuzzer harness for the device's HTTP/1.1 response parser
// (include/specdec/hybrid/completion_client.hpp, http_response_parser), which reads what a
// server - untrusted - sends back. The first input byte picks small limits and a split
// point; the rest is the response, fed in two pieces and then closed. Properties: the
// parser never crashes, reads out of bounds or throws anything but protocol_error; the
// body it delivers never exceeds the body limit; a response that completes with a
// Content-Length delivers exactly that many body bytes; and feeding the same bytes whole
// gives the same status, completion and body as feeding them split (a response rejected
// part way: the same failure, and body prefixes that agree).
// Run: scripts/fuzz.sh 60 http_response (seeds in tests/fuzz/corpus/http_response/).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include "specdec/hybrid/completion_client.hpp"

namespace {

struct outcome {
  bool failed = false, complete = false;
  int status = 0;
  std::string body, framing, length;  ///< framing: "length" when Content-Length alone delimits the body
  bool operator==(const outcome&) const = default;
};

outcome parse(std::string_view in, std::size_t split, const specdec::hybrid::http_limits& lim) {
  outcome o;
  specdec::hybrid::http_response_parser p([&](std::string_view piece) { o.body += piece; }, lim);
  try {
    p.feed(in.substr(0, split));
    p.feed(in.substr(split));
    p.finish();
  } catch (const specdec::hybrid::protocol_error&) {
    o.failed = true;
  }
  o.complete = p.complete();
  o.status = p.status();
  const std::string te = p.header("Transfer-Encoding"), cl = p.header("Content-Length");
  if (te.empty() && !cl.empty()) {
    o.framing = "length";
    const auto nz = cl.find_first_not_of('0');
    o.length = nz == std::string::npos ? "0" : cl.substr(nz);
  }
  if (o.body.size() > lim.max_body_bytes) std::abort();
  return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::uint8_t knob = data[0];
  const std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  const specdec::hybrid::http_limits lim{.max_line = 64u + (knob & 0x3u) * 64u,
                                         .max_header_bytes = 256u + (knob & 0xcu) * 64u,
                                         .max_body_bytes = 16u + (knob & 0x30u) * 8u};
  const std::size_t split = in.empty() ? 0 : (static_cast<std::size_t>(knob) * 7919u) % (in.size() + 1);
  const outcome a = parse(in, split, lim);
  const outcome b = parse(in, in.size(), lim);
  // The split must not change what is parsed. A response rejected part way may have
  // delivered a different prefix of its body first (pieces are checked as they arrive).
  if (a.failed != b.failed) std::abort();
  if (!a.failed && !(a == b)) std::abort();
  if (a.failed) {
    const std::string& shorter = a.body.size() <= b.body.size() ? a.body : b.body;
    const std::string& longer = a.body.size() <= b.body.size() ? b.body : a.body;
    if (longer.compare(0, shorter.size(), shorter) != 0 || a.status != b.status) std::abort();
  }
  // A whole response framed by Content-Length delivers exactly that many body bytes.
  if (a.complete && !a.failed && a.framing == "length" && std::to_string(a.body.size()) != a.length) std::abort();
  return 0;
}
