// Tests for include/specdec/hybrid/remote_verifier.hpp: split
// speculative decoding over real loopback sockets against specdec-serve's engine, started
// in process on ephemeral ports. Greedy output equals the target's own greedy output on
// held-out prompts; sampled output over a served analytic model passes the library's
// exactness battery (with a negative control); bytes at the socket stay within the protocol's budget; and a
// server that dies mid-generation hands over to the device without losing or duplicating
// a token.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "specdec/backend/cpu/batched_transformer.hpp"
#include "specdec/backend/cpu/tokenizer.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/batch.hpp"
#include "specdec/decoder.hpp"
#include "specdec/hybrid/link_monitor.hpp"
#include "specdec/hybrid/remote_verifier.hpp"
#include "specdec/hybrid/uplink.hpp"
#include "specdec/privacy/detector.hpp"
#include "specdec/testing/archetypes.hpp"
#include "specdec/testing/contracts.hpp"
#include "specdec/testing/exactness.hpp"
#include "specdec_serve/server.hpp"
#define SPECDEC_SERVE_TESTS
#include "serve_test_support.hpp"

#include "near_tie_models.hpp"

namespace {
using namespace specdec;
using hybrid::remote_verifier;
using specdec::testing::markov_model;
using specdec::testing::markov_options;

const std::string models = SPECDEC_MODELS_DIR;

/// The tests' shared server options (ephemeral ports, no calibration), announcing 6
/// drafts so that a decoder drafting 5 is never capped.
serve::serve_options loopback_options() {
  serve::serve_options o = test_support::serve_options();
  o.engine.speculation.fixed = 6;
  return o;
}

/// A batched model served in process on ephemeral loopback ports.
template <class B>
struct served {
  B model;
  serve::server<B> srv;
  template <class... A>
  explicit served(A&&... a) : model(std::forward<A>(a)...), srv(model, {}, loopback_options()) {
    srv.start();
  }
};
using served_cpu = served<cpu::batched_transformer>;

using markov_batch_model = independent_batch<markov_model>;

served_cpu& stories_server() {
  static served_cpu s(models + "/stories260K.bin", cpu::transformer_options{.threads = 1});
  return s;
}

}  // namespace

// The verifier contract, against a served stories260K.
template <>
struct specdec::testing::verifier_factory<remote_verifier> {
  static remote_verifier make() {
    return remote_verifier("127.0.0.1", stories_server().srv.verify_port(), {.vocab = 512});
  }
  static cpu::transformer reference() { return cpu::transformer(models + "/stories260K.bin", {.threads = 1}); }
};
SPECDEC_VERIFIER_CONTRACT_TESTS(remote, remote_verifier);

namespace {


TEST(remote_verifier, greedy_split_decoding_equals_the_cloud_s_own_greedy_output) {
  served_cpu server(models + "/kjv-big.bin", cpu::transformer_options{.threads = 1});
  cpu::transformer little(models + "/kjv-little.bin", {.threads = 1});
  cpu::transformer big(models + "/kjv-big.bin", {.threads = 1});
  cpu::tokenizer tok(models + "/kjv2k-tokenizer.bin", big.vocab_size());
  const auto prompts = test_support::held_out_prompts(models, tok, 6);
  ASSERT_GE(prompts.size(), 4u);
  const generation_options opts{.max_new_tokens = 48, .stop_at_eos = false};
  remote_verifier cloud("127.0.0.1", server.srv.verify_port(), {.vocab = little.vocab_size()});
  basic_speculative_decoder dec(little, fixed_gamma{.gamma = 4}, std::move(cloud));
  std::uint64_t bytes = 0;
  std::size_t tokens = 0;
  for (const auto& p : prompts) {
    autoregressive_decoder ar(big);
    const auto want = ar.generate(p, opts).tokens;
    const std::uint64_t before = dec.verifier().client().bytes_sent() + dec.verifier().client().bytes_received();
    const auto got = dec.generate(p, opts);
    EXPECT_EQ(got.tokens, want);
    EXPECT_GT(got.stats.draft_tokens_accepted, 0u);
    bytes += dec.verifier().client().bytes_sent() + dec.verifier().client().bytes_received() - before;
    tokens += got.tokens.size();
  }
  // Socket bytes (payload and framing, both directions) per generated token: the
  // protocol's budget for greedy split decoding is 100, prompts included.
  const double per_token = static_cast<double>(bytes) / static_cast<double>(tokens);
  RecordProperty("socket_bytes_per_token", std::to_string(per_token));
  std::cout << "greedy split decoding: " << per_token << " socket bytes per generated token (" << tokens
            << " tokens)\n";
  EXPECT_LT(per_token, 100.0);
  EXPECT_GT(dec.verifier().monitor().samples(), 0u);
  EXPECT_GT(dec.verifier().monitor().estimate().rtt_seconds, 0.0);
}

TEST(remote_verifier, a_new_request_starts_from_the_last_announcement) {
  // A server that wants no drafts (as under load): the first request's first block carries
  // the decoder's gamma (nothing announced yet), every later block none, the next
  // request's first block included; the output is the target's greedy output throughout.
  // At 0 drafts the server anticipates each next request (docs/hybrid.md); the decoder
  // tells it where each generation ends (open_session.final_length), so no row is computed
  // after a generation's last verdict: every anticipation is used, by a request that finds
  // its row (hit) or, when it arrives before the row ran, makes it its own block (early).
  // The session runs ahead (protocol version 4): a verdict carries every token decoded
  // since the last one, so each token comes from exactly one verdict's accepted drafts,
  // next or following tokens.
  cpu::batched_transformer model(models + "/stories260K.bin", cpu::transformer_options{.threads = 1});
  serve::serve_options o = test_support::serve_options();
  o.engine.speculation.fixed = 0;
  serve::server<cpu::batched_transformer> srv(model, {}, std::move(o));
  srv.start();
  cpu::transformer draft(models + "/stories260K.bin", {.threads = 1});
  const generation_options opts{.max_new_tokens = 12, .stop_at_eos = false};
  const std::vector<token_id> prompt{1, 403, 407};
  autoregressive_decoder ar(draft);
  const auto want = ar.generate(prompt, opts).tokens;
  ASSERT_EQ(std::ranges::count(want, eos_token), 0);  // no verdict ends in EOS: each but the last is anticipated
  std::size_t anticipated = 0;                         // requests that follow a verdict of their generation
  std::size_t calls = 0, accepted = 0;
  {
    basic_speculative_decoder dec(draft, fixed_gamma{.gamma = 3},
                                  remote_verifier("127.0.0.1", srv.verify_port(), {.vocab = draft.vocab_size()}));
    const auto first = dec.generate(prompt, opts);
    EXPECT_EQ(first.tokens, want);
    EXPECT_EQ(first.stats.draft_tokens_proposed, 3u);
    const auto second = dec.generate(prompt, opts);
    EXPECT_EQ(second.tokens, want);
    EXPECT_EQ(second.stats.draft_tokens_proposed, 0u);
    anticipated = first.stats.target_calls + second.stats.target_calls - 2;
    calls = first.stats.target_calls + second.stats.target_calls;
    accepted = first.stats.draft_tokens_accepted + second.stats.draft_tokens_accepted;
  }  // the last session closes with the decoder
  auto& m = srv.metrics();
  for (int i = 0; i < 400 && m.value("specdec_active_sessions") > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(m.value("specdec_active_sessions"), 0.0);
  EXPECT_GT(anticipated, 0u);
  EXPECT_EQ(m.value("specdec_anticipations_total", "result=\"hit\"") +
                m.value("specdec_anticipations_total", "result=\"early\""),
            static_cast<double>(anticipated));
  EXPECT_EQ(m.value("specdec_anticipations_total", "result=\"unused\""), 0.0);
  EXPECT_EQ(m.value("specdec_anticipations_total", "result=\"miss\""), 0.0);
  EXPECT_EQ(static_cast<double>(2 * want.size()),
            static_cast<double>(calls + accepted) + m.value("specdec_run_ahead_tokens_total", "result=\"sent\""));
  EXPECT_EQ(m.value("specdec_run_ahead_tokens_total", "result=\"discarded\""), 0.0);
}

TEST(remote_verifier, sampled_split_decoding_passes_the_exactness_harness) {
  // The library's exactness battery (testing/exactness.hpp) with an analytic target served
  // over the network: the device drafts 5 tokens from a perturbed copy and sends each
  // position's exact q, restricted to its support (top-k / top-p cut it). Fewer runs than
  // the local battery (each generation pays round trips), so the power is lower; the
  // negative control (the draft's own law) shows it still sees a wrong law.
  for (const std::size_t which : {1u, 3u}) {  // T 0.7 with top-k 3; T 1 with top-k 3 and top-p 0.9
    const specdec::testing::exactness_case c = specdec::testing::standard_exactness_cases(/*runs=*/4000)[which];
    SCOPED_TRACE(c.name);
    served<markov_batch_model> server([o = c.target] { return markov_model(o); });
    SPECDEC_EXPECT_EXACT(specdec::testing::check_case(c, [&](markov_model& draft, markov_model&, const sampling_params& p) {
      auto dec = std::make_shared<basic_speculative_decoder<markov_model, fixed_gamma, remote_verifier>>(
          draft, fixed_gamma{.gamma = 5},
          remote_verifier("127.0.0.1", server.srv.verify_port(), {.vocab = c.target.vocab}), p);
      return [dec, &c](std::uint64_t seed) {
        dec->set_seed(seed);
        return dec->generate(c.prompt, {.max_new_tokens = c.length, .stop_at_eos = false}).tokens;
      };
    }));
    SPECDEC_EXPECT_NOT_EXACT(specdec::testing::check_case(c, [&](markov_model& draft, markov_model&, const sampling_params& p) {
      auto own = std::make_shared<autoregressive_decoder<markov_model>>(draft, p);
      return [own, &c](std::uint64_t seed) {
        own->set_seed(seed);
        return own->generate(c.prompt, {.max_new_tokens = c.length, .stop_at_eos = false}).tokens;
      };
    }));
  }
}

TEST(remote_verifier, a_server_that_dies_mid_generation_hands_over_to_the_device) {
  auto server = std::make_unique<served_cpu>(models + "/kjv-big.bin", cpu::transformer_options{.threads = 1});
  cpu::transformer little(models + "/kjv-little.bin", {.threads = 1});
  cpu::transformer device_copy(models + "/kjv-little.bin", {.threads = 1});
  cpu::transformer big(models + "/kjv-big.bin", {.threads = 1});
  const std::vector<token_id> prompt{1, 450, 1171};
  const std::size_t n = 60;
  hybrid::verify_client_options fast{.connect_timeout_seconds = 0.5, .request_timeout_seconds = 2.0, .retries = 0};
  remote_verifier cloud("127.0.0.1", server->srv.verify_port(), {.vocab = little.vocab_size(), .client = fast});
  hybrid::failover_verifier v(std::move(cloud), local_verifier(device_copy, greedy_match{}), /*retry_seconds=*/60.0);
  basic_speculative_decoder dec(little, fixed_gamma{.gamma = 4}, std::move(v));
  std::size_t emitted = 0;
  const auto got = dec.generate(prompt, {.max_new_tokens = n, .stop_at_eos = false}, [&](token_id) {
    if (++emitted == 20) server.reset();  // the server process goes away mid-generation
  });
  ASSERT_EQ(got.tokens.size(), n);
  const auto& ev = dec.verifier().events();
  ASSERT_GE(ev.size(), 2u);
  EXPECT_EQ(ev.back().by, hybrid::verified_by::backup);
  // Reconstruct what the routes actually used must produce: the cloud's greedy tokens up
  // to the switch, then the device model's greedy continuation of that prefix.
  const std::size_t switch_at = ev.back().position - prompt.size();
  ASSERT_GE(switch_at, 20u);
  autoregressive_decoder cloud_ar(big);
  const auto cloud_part = cloud_ar.generate(prompt, {.max_new_tokens = switch_at, .stop_at_eos = false}).tokens;
  std::vector<token_id> prefix = prompt;
  prefix.insert(prefix.end(), cloud_part.begin(), cloud_part.end());
  autoregressive_decoder device_ar(device_copy);
  const auto device_part = device_ar.generate(prefix, {.max_new_tokens = n - switch_at, .stop_at_eos = false}).tokens;
  std::vector<token_id> want = cloud_part;
  want.insert(want.end(), device_part.begin(), device_part.end());
  EXPECT_EQ(got.tokens, want);
}

// The request's class, from the detector, travels with the verifier: a prompt with a
// phone number is local_only, the remote verifier never connects, and failover_verifier
// verifies the whole generation on the device. The next generation, declared and
// detected cloud_allowed, verifies on the server again.
TEST(remote_verifier, a_local_only_request_is_verified_on_the_device_without_connecting) {
  cpu::transformer little(models + "/stories260K.bin", {.threads = 1});
  cpu::transformer device_copy(models + "/stories260K.bin", {.threads = 1});
  const privacy::pii_detector detector;
  const auto d = detector.analyze("Call me at (415) 555-2671 tomorrow", privacy::privacy_class::cloud_allowed);
  ASSERT_EQ(d.decision, privacy::privacy_class::local_only);
  remote_verifier cloud("127.0.0.1", stories_server().srv.verify_port(),
                        {.vocab = 512, .privacy = hybrid::request_privacy::of(d, hybrid::route::speculative(4))});
  hybrid::failover_verifier v(std::move(cloud), local_verifier(device_copy, greedy_match{}), /*retry_seconds=*/0.0);
  basic_speculative_decoder dec(little, fixed_gamma{.gamma = 4}, std::move(v));
  const std::vector<token_id> prompt{1, 403, 407};
  const generation_options opts{.max_new_tokens = 24, .stop_at_eos = false};
  const auto got = dec.generate(prompt, opts);
  autoregressive_decoder device_ar(device_copy);
  EXPECT_EQ(got.tokens, device_ar.generate(prompt, opts).tokens);
  EXPECT_TRUE(dec.verifier().refused());
  ASSERT_EQ(dec.verifier().events().size(), 2u);
  EXPECT_EQ(dec.verifier().events().back().by, hybrid::verified_by::backup);
  EXPECT_EQ(dec.verifier().events().back().position, prompt.size());
  EXPECT_EQ(dec.verifier().primary().client().bytes_sent(), 0u);
  EXPECT_EQ(dec.verifier().primary().client().reconnects() + dec.verifier().primary().client().connected(), 0u);

  const auto clean = detector.analyze("Once upon a time", privacy::privacy_class::cloud_allowed);
  dec.verifier().primary().set_privacy(hybrid::request_privacy::of(clean, hybrid::route::speculative(4)));
  const auto again = dec.generate(prompt, opts);
  EXPECT_EQ(again.tokens, got.tokens);  // the same model on both sides
  EXPECT_FALSE(dec.verifier().refused());
  EXPECT_EQ(dec.verifier().events().size(), 1u);
  EXPECT_GT(dec.verifier().primary().client().bytes_sent(), 0u);
}

TEST(remote_verifier, greedy_near_ties_over_the_network_give_the_target_s_own_output) {
  // Every state of the served target has its top two logits equal or one ulp apart, and
  // the draft resolves each tie the other way: the server's greedy verdicts must still
  // reproduce the target's own greedy path exactly (first maximum wins).
  for (std::uint64_t seed : {1u, 2u}) {
    auto [draft, target] = near_ties::near_tie_pair(7, seed, /*same_draft=*/false);
    const auto tables = std::make_shared<near_ties::table_model>(target);
    served<independent_batch<near_ties::table_model>> server([tables] { return *tables; });
    const generation_options opts{.max_new_tokens = 40, .stop_at_eos = false};
    for (const std::vector<token_id>& prompt : {std::vector<token_id>{0}, std::vector<token_id>{5, 1}}) {
      const auto want = autoregressive_decoder(target).generate(prompt, opts).tokens;
      basic_speculative_decoder dec(draft, fixed_gamma{.gamma = 4},
                                    remote_verifier("127.0.0.1", server.srv.verify_port(), {.vocab = 7}));
      const auto got = dec.generate(prompt, opts);
      EXPECT_EQ(got.tokens, want) << "seed " << seed;
      EXPECT_GT(got.stats.rollbacks, 0u) << "the flipped ties are rejected";
    }
  }
}

}  // namespace
