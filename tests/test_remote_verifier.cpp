// Tests for include/specdec/hybrid/remote_verifier.hpp (and link_monitor.hpp): split
// speculative decoding over real loopback sockets against specdec-serve's engine, started
// in process on ephemeral ports. Greedy output equals the target's own greedy output on
// held-out prompts; sampled output over a served analytic model follows the target's law
// (with a negative control); bytes at the socket stay within the protocol's budget; and a
// server that dies mid-generation hands over to the device without losing or duplicating
// a token.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "specdec/backend/cpu/batched_transformer.hpp"
#include "specdec/backend/cpu/tokenizer.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/batch.hpp"
#include "specdec/decoder.hpp"
#include "specdec/hybrid/link_monitor.hpp"
#include "specdec/hybrid/remote_verifier.hpp"
#include "specdec/testing/archetypes.hpp"
#include "specdec/testing/contracts.hpp"
#include "specdec_serve/server.hpp"

namespace {
using namespace specdec;
using hybrid::remote_verifier;
using specdec::testing::markov_model;
using specdec::testing::markov_options;

const std::string models = SPECDEC_MODELS_DIR;

serve::serve_options loopback_options() {
  serve::serve_options o;
  o.http_port = 0;
  o.verify_port = 0;
  o.http_threads = 2;
  o.drain_seconds = 1.0;
  o.engine.speculation.fixed = 6;
  o.engine.speculation.calibrate = false;
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

markov_options analytic_target() { return {.vocab = 6, .order = 1, .seed = 21}; }
markov_options analytic_draft() { return {.vocab = 6, .order = 1, .seed = 21, .noise_seed = 5, .noise = 0.8f}; }
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

std::vector<std::vector<token_id>> held_out_prompts(cpu::tokenizer& tok, std::size_t n) {
  std::vector<std::vector<token_id>> out;
  std::ifstream f(models + "/kjv_val_openings.tsv");
  std::string line;
  while (out.size() < n && std::getline(f, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto tab = line.rfind('\t');
    const std::string text = tab == std::string::npos ? line : line.substr(tab + 1);
    auto ids = tok.encode(text.substr(0, 60));
    if (ids.size() >= 2) out.push_back(std::move(ids));
  }
  return out;
}

TEST(remote_verifier, greedy_split_decoding_equals_the_cloud_s_own_greedy_output) {
  served_cpu server(models + "/kjv-big.bin", cpu::transformer_options{.threads = 1});
  cpu::transformer little(models + "/kjv-little.bin", {.threads = 1});
  cpu::transformer big(models + "/kjv-big.bin", {.threads = 1});
  cpu::tokenizer tok(models + "/kjv2k-tokenizer.bin", big.vocab_size());
  const auto prompts = held_out_prompts(tok, 6);
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
  EXPECT_LT(static_cast<double>(bytes) / static_cast<double>(tokens), 100.0);
  EXPECT_GT(dec.verifier().monitor().samples(), 0u);
  EXPECT_GT(dec.verifier().monitor().estimate().rtt_seconds, 0.0);
}

/// Counts of the first `n` generated tokens as one joint outcome.
std::map<std::vector<token_id>, std::size_t> joint_counts(auto& dec, const std::vector<token_id>& prompt,
                                                          std::size_t n, std::size_t runs) {
  std::map<std::vector<token_id>, std::size_t> counts;
  for (std::size_t run = 0; run < runs; ++run) {
    dec.set_seed(run + 1);
    ++counts[dec.generate(prompt, {.max_new_tokens = n, .stop_at_eos = false}).tokens];
  }
  return counts;
}

/// Total variation between the empirical joint law and the exact one of the target.
double joint_tv(const std::map<std::vector<token_id>, std::size_t>& counts, const markov_model& target,
                const std::vector<token_id>& prompt, std::size_t runs) {
  std::map<std::vector<token_id>, double> exact;
  std::vector<std::vector<token_id>> frontier{{}};
  for (std::size_t step = 0; step < 2; ++step) {
    std::vector<std::vector<token_id>> next;
    for (const auto& seq : frontier) {
      std::vector<token_id> h = prompt;
      h.insert(h.end(), seq.begin(), seq.end());
      const auto p = target.probabilities_after(h);
      for (std::size_t t = 0; t < p.size(); ++t) {
        auto s = seq;
        s.push_back(static_cast<token_id>(t));
        if (step == 1) {
          double prob = 1.0;
          std::vector<token_id> hh = prompt;
          for (token_id x : s) {
            prob *= target.probabilities_after(hh)[static_cast<std::size_t>(x)];
            hh.push_back(x);
          }
          exact[s] = prob;
        }
        next.push_back(std::move(s));
      }
    }
    frontier = std::move(next);
  }
  double tv = 0.0;
  for (const auto& [seq, p] : exact) {
    const auto it = counts.find(seq);
    const double f = it == counts.end() ? 0.0 : static_cast<double>(it->second) / static_cast<double>(runs);
    tv += std::abs(f - p);
  }
  for (const auto& [seq, c] : counts)
    if (!exact.contains(seq)) tv += static_cast<double>(c) / static_cast<double>(runs);
  return tv / 2;
}

TEST(remote_verifier, sampled_split_decoding_follows_the_served_target_s_law) {
  // An analytic target served over the network; the device drafts from a perturbed copy
  // and sends the exact q of each drafted token. The joint law of the first two tokens
  // (36 outcomes) must match the target's; a draft that skips verification must not.
  served<markov_batch_model> server([] { return markov_model(analytic_target()); });
  markov_model draft(analytic_draft()), target(analytic_target());
  const std::vector<token_id> prompt{1, 3};
  const sampling_params hot{.temperature = 1.0f};
  constexpr std::size_t runs = 6000;
  remote_verifier cloud("127.0.0.1", server.srv.verify_port(), {.vocab = 6});
  basic_speculative_decoder dec(draft, fixed_gamma{.gamma = 3}, std::move(cloud), hot);
  const double tv = joint_tv(joint_counts(dec, prompt, 2, runs), target, prompt, runs);
  // The expected TV of an exact sampler at n = 6000 over 36 cells is about 0.03; 0.06
  // leaves room. The draft's own law is about 0.2 away (negative control below).
  EXPECT_LT(tv, 0.06);
  autoregressive_decoder own(draft, hot);
  const double tv_draft = joint_tv(joint_counts(own, prompt, 2, runs), target, prompt, runs);
  EXPECT_GT(tv_draft, 0.1) << "the negative control passed: the test has no power";
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

TEST(link_monitor, ewma_quantiles_and_estimate) {
  hybrid::link_monitor m({.ewma_weight = 0.5, .window = 4});
  EXPECT_EQ(m.estimate().rtt_seconds, hybrid::link_estimate{}.rtt_seconds);  // the prior
  m.record(0.010, 100, 50);
  m.record(0.030, 100, 50);
  EXPECT_DOUBLE_EQ(m.rtt_ewma(), 0.020);
  for (double r : {0.040, 0.050, 0.060}) m.record(r, 0, 0);  // the window keeps the last 4
  EXPECT_DOUBLE_EQ(m.rtt_quantile(0.0), 0.030);
  EXPECT_DOUBLE_EQ(m.rtt_quantile(1.0), 0.060);
  EXPECT_DOUBLE_EQ(m.estimate().up_bps, 8.0 * 200 / 0.19);
  m.record_failure();
  EXPECT_EQ(m.failures(), 1u);
  EXPECT_THROW(hybrid::link_monitor({.ewma_weight = 0.0}), invalid_argument);
  EXPECT_THROW(m.record(-1.0, 0, 0), invalid_argument);
}

}  // namespace
