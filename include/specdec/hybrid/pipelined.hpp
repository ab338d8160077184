#pragma once
/// \file hybrid/pipelined.hpp
/// Pipelined split speculative decoding (greedy): while a verify request is in flight to
/// `specdec-serve`, the device keeps drafting the continuation that assumes the request
/// comes back with every draft accepted, guessing the server's bonus token with its own
/// greedy choice. When the verdict does accept everything and its next token is the
/// guess, the continuation is the next draft block and goes out at once: that round's
/// drafting was hidden behind the round trip. Otherwise the continuation is discarded and
/// the device drafts from the committed tokens as usual.
///
/// The output is the target's greedy output token for token whatever the guesses: only
/// the server's verdicts commit tokens, and a greedy draft block after a given prefix is
/// the same whether it was drafted early or late. What the overlap can hide is the
/// drafting time of the rounds whose guess held (`pipeline_stats::hidden_draft_seconds`);
/// the round trip itself is still paid once per round. The session opens with the first
/// block (`verify_client::open_and_verify`), so the open costs no round trip of its own.
/// Sampling is not pipelined here (use `basic_speculative_decoder` with `remote_verifier`).
///
/// ```cpp
/// specdec::hybrid::pipelined_split_decoder dec(little, "127.0.0.1", verify_port, {.gamma = 4});
/// auto r = dec.generate(prompt, {.max_new_tokens = 64});
/// std::cout << dec.pipeline().hits << " of " << dec.pipeline().rounds << " rounds pre-drafted\n";
/// ```
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <future>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/generation.hpp"
#include "specdec/hybrid/errors.hpp"
#include "specdec/hybrid/link_monitor.hpp"
#include "specdec/hybrid/uplink.hpp"
#include "specdec/hybrid/verify_client.hpp"
#include "specdec/model.hpp"
#include "specdec/sampling.hpp"
#include "specdec/telemetry.hpp"
#include "specdec/token.hpp"

namespace specdec::hybrid {

/// Knobs of a `pipelined_split_decoder`.
///
/// ```cpp
/// specdec::hybrid::pipeline_options o{.gamma = 4, .overlap = false};  // the plain loop, for comparison
/// ```
struct pipeline_options {
  std::size_t gamma = 4;  ///< drafts per round (>= 1), capped by the server's announcement
  bool overlap = true;    ///< draft the continuation while a verification is in flight
  verify_client_options client{};
  /// Fed with every round trip and failure; null = the decoder's own monitor.
  std::shared_ptr<link_monitor> monitor{};
  /// The request's class, route and detected spans (uplink.hpp), read when a generation
  /// opens its session: one that may not leave the device throws `privacy_violation`
  /// from `generate` before any connection is opened.
  request_privacy privacy = hybrid::privacy::may_leave_device;

  void validate() const {
    if (gamma == 0) specdec::detail::fail_knob("pipeline_options.gamma", "0", ">= 1");
    client.validate();
  }
};

/// What the overlap did, summed over the decoder's generations.
///
/// ```cpp
/// const auto& p = dec.pipeline();
/// double hit_rate = double(p.hits) / double(p.speculated_rounds);
/// ```
struct pipeline_stats {
  std::size_t rounds = 0;             ///< verify requests
  std::size_t drafted = 0;            ///< draft tokens sent
  std::size_t accepted = 0;           ///< of them accepted
  std::size_t speculated_rounds = 0;  ///< rounds during which a continuation was drafted
  std::size_t hits = 0;               ///< continuations that became the next block
  double overlapped_draft_seconds = 0.0;  ///< drafting done while a request was in flight
  double hidden_draft_seconds = 0.0;      ///< of it, the drafting of blocks that were used
  double draft_seconds = 0.0;             ///< drafting on the critical path (not overlapped)
  double wait_seconds = 0.0;              ///< waiting for verdicts after drafting
};

/// The decoder of the file comment over a `verify_client` it owns. Throws what the client
/// throws (`link_unavailable` when the server cannot be reached: the tokens already
/// passed to `on_token` are committed, and a caller may continue on the device from them).
///
/// ```cpp
/// specdec::hybrid::pipelined_split_decoder dec(little, "127.0.0.1", verify_port, {.gamma = 4, .client = {.retries = 2}});
/// std::vector<specdec::token_id> out;
/// try { dec.generate(prompt, {.max_new_tokens = 64}, [&](specdec::token_id t) { out.push_back(t); }); }
/// catch (const specdec::hybrid::link_unavailable&) { /* continue on the device from prompt + out */ }
/// ```
template <language_model Draft>
class pipelined_split_decoder {
 public:
  pipelined_split_decoder(Draft& draft, std::string host, std::uint16_t port, pipeline_options o = {})
      : draft_(draft), opt_(std::move(o)) {
    opt_.validate();
    client_ = std::make_unique<verify_client>(std::move(host), port, opt_.client);
    if (!opt_.monitor) opt_.monitor = std::make_shared<link_monitor>();
  }

  [[nodiscard]] verify_client& client() noexcept { return *client_; }
  [[nodiscard]] const link_monitor& monitor() const noexcept { return *opt_.monitor; }
  [[nodiscard]] const pipeline_stats& pipeline() const noexcept { return stats_; }
  [[nodiscard]] pipeline_options& options() noexcept { return opt_; }

  /// Greedy generation of up to `opts.max_new_tokens` tokens after `prompt`, with
  /// `on_token(t)` called as each is committed (returning false stops after it).
  template <class OnToken = no_callback>
  generation_result generate(std::span<const token_id> prompt, const generation_options& opts = {},
                             OnToken&& on_token = {}) {
    const auto t_start = clock::now();
    specdec::detail::validate_request(prompt, opts, draft_.vocab_size(), draft_.context_length(),
                                      "pipelined_split_decoder::generate");
    generation_result result;
    result.stats.method = "speculative";
    result.stats.prompt_tokens = prompt.size();
    seq_.assign(prompt.begin(), prompt.end());
    draft_.truncate(0);
    cache_.clear();
    specdec::detail::committer<std::remove_reference_t<OnToken>> out(seq_, result, opts, on_token);
    generation_stats& st = result.stats;
    if (opts.max_new_tokens == 0) out.stop(stop_reason::max_tokens);
    if (out.stopped()) return finish(result, t_start);

    // The session opens with the first block (`open_and_verify`: no round trip of its own),
    // so the first block is drafted before this session's first announcement.
    opened_ = false;
    client_->expect_length(specdec::detail::final_length(prompt, opts, draft_.context_length()));
    const auto context = [&] {
      return std::min<std::size_t>(draft_.context_length(), client_->context_length() != 0 ? client_->context_length()
                                                                                          : draft_.context_length());
    };
    std::size_t ctx = context();
    std::vector<token_id> delta, block, ahead;  // committed since the last request; in flight; pre-drafted
    bool have_block = false;
    while (!out.stopped() && seq_.size() < ctx) {
      if (!have_block) {
        const auto t0 = clock::now();
        block = draft_after(seq_, block_size(out.remaining(), ctx, seq_.size()), st);
        stats_.draft_seconds += seconds_since(t0);
      }
      // The request in flight; the continuation that assumes it accepts the whole block.
      const std::uint64_t up0 = client_->bytes_sent(), down0 = client_->bytes_received();
      std::future<verify_verdict> pending = std::async(std::launch::async, [this, &delta, &block] {
        return opened_ ? client_->verify(delta, block) : client_->open_and_verify(seq_, block, nullptr, {}, 0, opt_.privacy);
      });
      ahead.clear();
      double ahead_seconds = 0.0;
      const std::size_t after = seq_.size() + block.size() + 1;
      const std::size_t left = out.remaining() > block.size() + 1 ? out.remaining() - block.size() - 1 : 0;
      // At a cap of 0 drafts there is no next block to pre-draft, only a guess to waste.
      if (opt_.overlap && left > 0 && after < ctx && block_size(left, ctx, after) > 0) {
        const auto t0 = clock::now();
        spec_.assign(seq_.begin(), seq_.end());
        spec_.insert(spec_.end(), block.begin(), block.end());
        ahead = draft_after(spec_, 1 + block_size(left, ctx, after), st);  // the guess, then the block
        ahead_seconds = seconds_since(t0);
        ++stats_.speculated_rounds;
        stats_.overlapped_draft_seconds += ahead_seconds;
      }
      const auto w0 = clock::now();
      verify_verdict v;
      try {
        v = pending.get();
      } catch (const link_unavailable&) {
        opt_.monitor->record_failure();
        throw;
      }
      stats_.wait_seconds += seconds_since(w0);
      if (!opened_) {
        opened_ = true;
        ctx = context();  // the server's context is known now
      }
      opt_.monitor->record(client_->last_rtt_seconds(), client_->bytes_sent() - up0,
                           client_->bytes_received() - down0);
      ++st.target_calls;
      st.target_seconds += client_->last_rtt_seconds();
      ++stats_.rounds;
      stats_.drafted += block.size();
      stats_.accepted += v.accepted;
      if (!block.empty()) st.record_verification(block.size(), v.accepted);
      // A continuation assumes the verdict ends at `next`: following tokens void it.
      const bool hit = !ahead.empty() && v.accepted == block.size() && v.next == ahead.front() && v.following.empty();
      delta.assign(block.begin(), block.begin() + static_cast<std::ptrdiff_t>(v.accepted));
      delta.push_back(v.next);
      delta.insert(delta.end(), v.following.begin(), v.following.end());
      if (out.emit_all(std::span<const token_id>(block).first(v.accepted)) && out.emit(v.next))
        out.emit_all(v.following);
      if (st.awaiting_first_step()) st.record_step_end(seconds_since(t_start));
      have_block = hit && !out.stopped();
      if (have_block) {
        ++stats_.hits;
        stats_.hidden_draft_seconds += ahead_seconds;
        block.assign(ahead.begin() + 1, ahead.end());
        // The server may have lowered its announcement since the continuation was drafted.
        block.resize(std::min(block.size(), block_size(out.remaining(), ctx, seq_.size())));
      }
    }
    if (!out.stopped()) out.stop(stop_reason::context);
    return finish(result, t_start);
  }

 private:
  using clock = std::chrono::steady_clock;
  static double seconds_since(clock::time_point t0) {
    return std::chrono::duration<double>(clock::now() - t0).count();
  }

  generation_result& finish(generation_result& r, clock::time_point t0) {
    r.stats.total_seconds = seconds_since(t0);
    r.stats.record_step_end(r.stats.total_seconds);
    client_->close();  // the server keeps no state for a finished request
    return r;
  }

  /// Drafts to put in a block at committed length `at` with `remaining` tokens to go: at
  /// most gamma and the server's cap, leaving room for the verdict's own token.
  [[nodiscard]] std::size_t block_size(std::size_t remaining, std::size_t ctx, std::size_t at) const {
    // Before the session's first verdict: the last announcement this client received (the
    // server's load of a moment ago; the first verdict corrects it), gamma before any.
    const std::size_t cap = opened_ || client_->draft_limit() != 0 ? client_->max_draft() : opt_.gamma;
    std::size_t n = std::min(opt_.gamma, cap);
    n = std::min(n, remaining > 0 ? remaining - 1 : 0);
    n = std::min(n, ctx > at + 1 ? ctx - at - 1 : 0);
    return n;
  }

  /// `n` greedy draft tokens after `context`. The draft's cache keeps the longest prefix it
  /// shares with `context` (at most all but its last token, whose row is needed) and is fed
  /// the rest; afterwards it holds `context` and all drafts but the last.
  std::vector<token_id> draft_after(std::span<const token_id> context, std::size_t n, generation_stats& st) {
    std::vector<token_id> outv;
    if (n == 0) return outv;
    std::size_t keep = 0;
    while (keep < cache_.size() && keep + 1 < context.size() && cache_[keep] == context[keep]) ++keep;
    if (keep < cache_.size()) {
      draft_.truncate(keep);
      cache_.resize(keep);
    }
    logits_block l = draft_.forward(context.subspan(keep));
    cache_.insert(cache_.end(), context.begin() + static_cast<std::ptrdiff_t>(keep), context.end());
    ++st.draft_calls;
    for (;;) {
      outv.push_back(argmax(l.row(l.rows - 1)));
      if (outv.size() == n) break;
      l = draft_.forward(std::span<const token_id>(&outv.back(), 1));
      cache_.push_back(outv.back());
      ++st.draft_calls;
    }
    return outv;
  }

  Draft& draft_;
  pipeline_options opt_;
  std::unique_ptr<verify_client> client_;
  pipeline_stats stats_;
  std::vector<token_id> seq_, cache_, spec_;
  bool opened_ = false;  ///< this generation's session answered its first block
};

}  // namespace specdec::hybrid
