// hybrid_edge_cloud: a small model on the "device", a big one in the "cloud", a simulated
// network between them and an arbiter that decides, per request, where to generate.
//
//   hybrid_edge_cloud [--link lan|wan|lte|degraded] [--tokens 32]
//
// Everything runs on this machine; the link and the two sides' speeds are simulated on a
// virtual clock (the device counts as 3x slower than this machine, the cloud as 2x faster),
// so the latencies printed are what the route would have cost on that network.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "specdec/backend/cpu/tokenizer.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/hybrid/session.hpp"

int main(int argc, char** argv) try {
  namespace hy = specdec::hybrid;
  std::string preset = "lte";
  std::size_t tokens = 32;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--link") preset = argv[i + 1];
    else if (a == "--tokens") tokens = std::stoul(argv[i + 1]);
  }

  // 1. The two models (they share a tokenizer) and the text codec.
  const std::string dir = SPECDEC_MODELS_DIR;
  specdec::cpu::transformer device(dir + "/kjv-little.bin");  // lives on the phone
  specdec::cpu::transformer cloud(dir + "/kjv-big.bin");      // lives in the data centre
  const specdec::cpu::tokenizer tok(dir + "/kjv2k-tokenizer.bin", device.vocab_size());

  // 2. The network: a preset with its RTT, bandwidths, jitter and loss; seeded.
  hy::simulated_link link(hy::link_config::preset(preset), /*seed=*/1);

  // 3. The arbiter: answer on the device when the small model is confident about its own
  //    first tokens (mean entropy below 3.8 nats over its 8-token look-ahead, which the
  //    session probes because the rule `reads_lookahead`); otherwise draft on the device
  //    and let the cloud verify (exact: the text is the cloud's). Every 8 device tokens the
  //    arbiter looks again and hands an unconfident generation to the cloud.
  struct confident_or_speculate {
    hy::confidence_arbiter rule{.min_max_prob = 0.0f, .max_entropy = 3.8f};
    hy::route decide(const hy::request_features& f, const hy::link_estimate& l, const hy::budget& b) const {
      return rule.decide(f, l, b).uses_cloud() ? hy::route::speculative(4) : hy::route::on_device();
    }
    hy::route on_segment(const hy::segment_state& s) const { return rule.on_segment(s); }
    bool reads_lookahead() const { return rule.reads_lookahead(); }
    void validate() const { rule.validate(); }
  };

  // 4. The session: device scale 3 (a phone), cloud scale 0.5 (a server), greedy decoding.
  hy::session s(device, cloud, confident_or_speculate{}, link,
                {.compute = {.device_scale = 3.0, .cloud_scale = 0.5}, .segment_tokens = 8});

  const std::vector<std::string> prompts{"And the LORD said unto Noah, Come thou", "I cried unto God with my voice,",
                                         "Praise ye the LORD. Blessed is the man", "What advantage then hath the Jew?"};
  std::printf("link: %s\n\n", preset.c_str());
  std::uint64_t id = 0;
  for (const auto& text : prompts) {
    const auto prompt = tok.encode(text);
    const hy::request_result r = s.run(prompt, {.max_new_tokens = tokens}, id++);
    std::printf("%s\n  route %-28s look-ahead entropy %.2f  latency %6.1f ms  first token %5.1f ms  %5.1f B/token%s\n",
                text.c_str(), r.route_trace().c_str(), r.features.extra[hy::trajectory_feature::mean_entropy],
                1e3 * r.latency_seconds,
                1e3 * r.ttft_seconds, r.bytes_per_token(), r.fell_back_to_device ? "  (link lost: finished on device)" : "");
    std::printf("  -> %s\n\n", tok.decode(r.tokens).c_str());
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "hybrid_edge_cloud: " << e.what() << '\n';
  return 1;
}
