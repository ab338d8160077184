// Tests for include/specdec/hybrid/pipelined.hpp: pipelined split decoding over a real
// link (the test proxy adds a round trip) gives the target's own greedy output token for
// token, with and without the overlap and with connections cut mid-generation; the
// overlap really drafts ahead and some of it is used; the server's draft cap holds.
#include <gtest/gtest.h>

#include <chrono>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "specdec/backend/cpu/batched_transformer.hpp"
#include "specdec/backend/cpu/tokenizer.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/decoder.hpp"
#include "specdec/hybrid/pipelined.hpp"
#include "specdec/testing/link_proxy.hpp"
#include "specdec_serve/server.hpp"
#define SPECDEC_SERVE_TESTS
#include "serve_test_support.hpp"

namespace {
using namespace specdec;
using hybrid::pipelined_split_decoder;

const std::string models = SPECDEC_MODELS_DIR;


struct fixture {
  cpu::batched_transformer model{models + "/kjv-big.bin", cpu::transformer_options{.threads = 1}};
  serve::server<cpu::batched_transformer> srv;
  explicit fixture(serve::serve_options o = test_support::serve_options()) : srv(model, {}, std::move(o)) {
    srv.start();
  }
};

TEST(pipelined_split_decoder, greedy_output_is_the_target_s_with_and_without_overlap) {
  fixture f;
  specdec::testing::link_proxy link("127.0.0.1", f.srv.verify_port(), {.one_way_delay_seconds = 0.003});
  cpu::transformer little(models + "/kjv-little.bin", {.threads = 1});
  cpu::transformer big(models + "/kjv-big.bin", {.threads = 1});
  cpu::tokenizer tok(models + "/kjv2k-tokenizer.bin", big.vocab_size());
  const auto prompts = test_support::held_out_prompts(models, tok, 4);
  ASSERT_EQ(prompts.size(), 4u);
  const generation_options opts{.max_new_tokens = 40, .stop_at_eos = false};
  pipelined_split_decoder piped(little, "127.0.0.1", link.port(), {.gamma = 4});
  pipelined_split_decoder plain(little, "127.0.0.1", link.port(), {.gamma = 4, .overlap = false});
  for (const auto& p : prompts) {
    const auto want = autoregressive_decoder(big).generate(p, opts).tokens;
    std::vector<token_id> streamed;
    const auto got = piped.generate(p, opts, [&](token_id t) { streamed.push_back(t); });
    EXPECT_EQ(got.tokens, want);
    EXPECT_EQ(streamed, want);
    EXPECT_EQ(got.stop_reason, stop_reason::max_tokens);
    EXPECT_EQ(plain.generate(p, opts).tokens, want);
  }
  const auto& s = piped.pipeline();
  std::cout << "overlap: " << s.hits << " of " << s.speculated_rounds << " continuations used, "
            << s.hidden_draft_seconds * 1e3 << " ms of drafting hidden, " << s.rounds << " rounds\n";
  EXPECT_GT(s.speculated_rounds, 0u);
  EXPECT_GT(s.hits, 0u);  // kjv-little agrees with kjv-big often enough for whole blocks
  EXPECT_LE(s.hits, s.speculated_rounds);
  EXPECT_GT(s.overlapped_draft_seconds, 0.0);
  EXPECT_LE(s.hidden_draft_seconds, s.overlapped_draft_seconds);
  EXPECT_EQ(plain.pipeline().speculated_rounds, 0u);
  EXPECT_EQ(plain.pipeline().hits, 0u);
  // Hits skip a drafting step, never a verification: both verify every token the same way.
  EXPECT_EQ(s.rounds, plain.pipeline().rounds);
  EXPECT_EQ(piped.monitor().samples(), s.rounds);
  EXPECT_GE(piped.monitor().rtt_quantile(0.0), 0.006);  // the proxy's round trip, paid for real
}

TEST(pipelined_split_decoder, cut_connections_and_the_server_s_draft_cap) {
  serve::serve_options o = test_support::serve_options();
  o.engine.speculation.fixed = 2;  // the server announces 2 drafts a round
  fixture f(o);
  specdec::testing::link_proxy link("127.0.0.1", f.srv.verify_port());
  cpu::transformer little(models + "/kjv-little.bin", {.threads = 1});
  cpu::transformer big(models + "/kjv-big.bin", {.threads = 1});
  const std::vector<token_id> prompt{1, 450, 1171};
  const generation_options opts{.max_new_tokens = 50, .stop_at_eos = false};
  const auto want = autoregressive_decoder(big).generate(prompt, opts).tokens;
  pipelined_split_decoder dec(little, "127.0.0.1", link.port(), {.gamma = 4, .client = {.retries = 3}});
  std::size_t n = 0;
  const auto got = dec.generate(prompt, opts, [&](token_id) {
    if (++n % 15 == 0) link.disconnect_all();
  });
  EXPECT_EQ(got.tokens, want);
  EXPECT_GT(dec.client().reconnects(), 0u);
  EXPECT_LE(dec.pipeline().drafted, 2 * dec.pipeline().rounds);
  EXPECT_EQ(got.stats.draft_tokens_proposed, dec.pipeline().drafted);
}

TEST(pipelined_split_decoder, the_server_computes_nothing_past_where_the_generation_ends) {
  // Announced 0 drafts, the server anticipates each next request; told the generation's
  // end with the open (open_session.final_length), it runs no row after the last verdict.
  serve::serve_options o = test_support::serve_options();
  o.engine.speculation.fixed = 0;
  fixture f(o);
  cpu::transformer little(models + "/kjv-little.bin", {.threads = 1});
  const generation_options opts{.max_new_tokens = 16, .stop_at_eos = false};
  pipelined_split_decoder dec(little, "127.0.0.1", f.srv.verify_port(), {.gamma = 4});
  for (const std::vector<token_id>& p : {std::vector<token_id>{1, 450, 1171}, std::vector<token_id>{1, 450}})
    EXPECT_EQ(dec.generate(p, opts).tokens.size(), 16u);
  auto& m = f.srv.metrics();
  for (int i = 0; i < 400 && m.value("specdec_active_sessions") > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(m.value("specdec_active_sessions"), 0.0);
  // Used by the request it anticipated (hit), or made that request's own block when the
  // request came before the row ran (early: a matter of timing).
  EXPECT_GT(m.value("specdec_anticipations_total", "result=\"hit\"") +
                m.value("specdec_anticipations_total", "result=\"early\""),
            0.0);
  EXPECT_EQ(m.value("specdec_anticipations_total", "result=\"unused\""), 0.0);
}

TEST(pipelined_split_decoder, bad_input_and_an_unreachable_server) {
  cpu::transformer little(models + "/kjv-little.bin", {.threads = 1});
  EXPECT_THROW(pipelined_split_decoder(little, "127.0.0.1", 1, {.gamma = 0}), invalid_argument);
  auto [fd, port] = test_support::loopback_socket(/*listen=*/false);
  ::close(fd);  // nothing answers there
  pipelined_split_decoder dec(little, "127.0.0.1", port, {.client = {.connect_timeout_seconds = 0.5, .retries = 0}});
  const std::vector<token_id> prompt{1, 450};
  EXPECT_TRUE(dec.generate(prompt, {.max_new_tokens = 0}).tokens.empty());
  EXPECT_THROW((void)dec.generate(prompt, {.max_new_tokens = 8}), hybrid::link_unavailable);
  EXPECT_EQ(dec.monitor().failures(), 1u);
  EXPECT_THROW((void)dec.generate(std::vector<token_id>{}, {.max_new_tokens = 8}), invalid_argument);
}

}  // namespace
