// libFuzzer harness for specdec-serve's parsing of POST /v1/completions bodies
// (server/specdec_serve/http_api.hpp, request_parser): JSON from an untrusted client into a
// validated request. Properties: parsing never crashes, reads out of bounds or throws
// anything but api_error (a 4xx for the client, or 404 for another model), and every
// request it accepts is within the server's bounds: a non-empty prompt of ids in
// [0, vocab), prompt + max_tokens within the context, at most 4 stop strings of 1-256
// bytes, sampling knobs in range, logprobs <= 20.
// Needs the server's headers (include dir server/) and cpp-httplib's header, nothing built.
// Run: scripts/fuzz.sh 60 completion_request (seeds in tests/fuzz/corpus/completion_request/).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "specdec_serve/http_api.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace serve = specdec::serve;
  static const serve::model_info model{.id = "stories", .vocab_size = 512, .context_length = 256};
  // A byte-level codec: BOS, then one id per byte (ids 3..258), as a real tokenizer's
  // byte fallback would; a prompt of text can then be as long as the body.
  static const serve::text_codec codec{[](std::string_view s) {
                                         std::vector<specdec::token_id> ids{1};
                                         for (unsigned char c : s) ids.push_back(static_cast<specdec::token_id>(3 + c));
                                         return ids;
                                       },
                                       [](specdec::token_id, specdec::token_id t) { return std::string(1, char(t)); }};
  static const serve::http_options options{};
  static const serve::request_parser parser(model, codec, options);
  const std::string body(reinterpret_cast<const char*>(data), size);
  try {
    const serve::completion_request r = parser.parse(body);
    const auto& p = r.params;
    bool ok = !p.prompt.empty() && p.prompt.size() + p.max_tokens <= model.context_length && r.stop.size() <= 4;
    for (auto id : p.prompt) ok = ok && id >= 0 && static_cast<std::size_t>(id) < model.vocab_size;
    for (const auto& s : r.stop) ok = ok && !s.empty() && s.size() <= options.max_stop_bytes;
    ok = ok && p.sampling.temperature >= 0.0f && p.sampling.temperature <= 2.0f && p.sampling.top_p > 0.0f &&
         p.sampling.top_p <= 1.0f && p.sampling.top_k >= 0 && static_cast<std::size_t>(p.sampling.top_k) <= model.vocab_size;
    ok = ok && (!p.logprobs || *p.logprobs <= options.max_logprobs);
    if (!ok) std::abort();
  } catch (const serve::api_error& e) {
    if (e.status < 400 || e.status >= 500) std::abort();  // a client's bytes never make a 5xx
  }
  return 0;
}
