#pragma once
/// \file hybrid/verify_client.hpp
/// The device's side of split speculative decoding over the network: a blocking client of
/// `specdec-serve`'s verify port (protocol in wire.hpp, rules in docs/hybrid.md). It holds
/// one persistent TCP connection and one server session whose KV cache mirrors the
/// device's committed tokens, so a round sends only what is new: the tokens committed
/// since the last round and the draft block (plus, when sampling, the draft's truncated
/// distributions). Verdicts come back with the number of drafts the server will verify in
/// the next round (its dynamic speculation).
///
/// `open_and_verify` opens the session and verifies the first block in ONE round trip: the
/// request goes out right behind `open_session` (the server reads it once the session
/// exists), so a request pays no round trip of its own for the open. Its block is drafted
/// before the server announced a draft length; later rounds follow the announcements.
///
/// Faults: every request has a deadline. A lost connection is re-established and the
/// request resent with the same sequence number (the server answers a replay from its
/// cache, never applying it twice); a session the server no longer has (expired, evicted,
/// server restarted) is reopened by resending the committed prefix. When that does not
/// succeed within the retries the call throws `link_unavailable` (or its `link_timeout`)
/// and the device decodes on its own; the next call reopens the session from the
/// client's committed tokens, so no token is lost or duplicated.
///
/// ```cpp
/// specdec::hybrid::verify_client c("127.0.0.1", port);
/// c.open(prompt);                                            // greedy, the prompt as prefix
/// specdec::hybrid::verify_verdict v = c.verify({}, draft);   // nothing new committed yet
/// // commit draft[0..v.accepted) and v.next, then draft again, at most v.max_draft tokens
/// std::vector<specdec::token_id> delta(draft.begin(), draft.begin() + v.accepted);
/// delta.push_back(v.next);
/// v = c.verify(delta, next_draft);
///
/// specdec::hybrid::verify_client d("127.0.0.1", port);
/// v = d.open_and_verify(prompt, draft);  // open + first round: one round trip
/// ```
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/hybrid/errors.hpp"
#include "specdec/hybrid/transport.hpp"
#include "specdec/hybrid/uplink.hpp"
#include "specdec/hybrid/wire.hpp"
#include "specdec/sampling.hpp"
#include "specdec/token.hpp"

namespace specdec::hybrid {

/// Deadlines and retries of a `verify_client`.
///
/// ```cpp
/// specdec::hybrid::verify_client_options o{.request_timeout_seconds = 0.5, .retries = 0,
///                                          .api_key = "sk-device-fleet-4f0c9a7d2b8e61f3"};
/// ```
struct verify_client_options {
  double connect_timeout_seconds = 2.0;  ///< per connection attempt
  double request_timeout_seconds = 5.0;  ///< from sending a request to its answer
  /// How many times one call reconnects and resends after a lost connection or a missed
  /// deadline before it throws `link_unavailable`.
  std::size_t retries = 1;
  /// Bounds on what the client accepts from the server (frame size, error text); the
  /// vocabulary bound is taken from the server's `session_opened`.
  wire::limits limits{};
  /// TLS (`tls_client(...)` from hybrid/tls.hpp) or plain TCP; plain TCP reaches only
  /// loopback hosts unless `allow_plaintext` is set.
  transport_security security{};
  /// The server's API key (`specdec-serve --api-keys`), sent when a session is opened or
  /// resumed; empty for an open server. A wrong key makes `open` throw `remote_error`
  /// with code `wire::error_code::unauthorized`.
  std::string api_key{};
  /// Where every frame sent is recorded (uplink.hpp); null: no log. Must outlive the client.
  specdec::privacy::uplink_audit_log* audit = nullptr;

  void validate() const {
    if (!(connect_timeout_seconds > 0.0) || !(request_timeout_seconds > 0.0))
      throw invalid_argument("verify_client_options: connect_timeout_seconds = " +
                             std::to_string(connect_timeout_seconds) + ", request_timeout_seconds = " +
                             std::to_string(request_timeout_seconds) + "; expected both > 0");
    check_api_key(api_key, "verify_client_options.api_key");
  }
};

/// The server's answer to one round: keep `accepted` drafts, then `next`, then
/// `following` (the server's run-ahead after a request without drafts); draft at most
/// `max_draft` tokens next round. The next request's delta commits all of them.
struct verify_verdict {
  std::size_t accepted = 0;
  token_id next = 0;
  std::size_t max_draft = 0;
  std::vector<token_id> following{};
};

/// A blocking client of the verify protocol (see the file comment). Not thread-safe: one
/// client per decoding loop.
class verify_client {
 public:
  verify_client(std::string host, std::uint16_t port, verify_client_options options = {})
      : host_(std::move(host)), port_(port), options_(std::move(options)) {
    options_.validate();
    gate_ = uplink_gate(host_ + ":" + std::to_string(port_), route::speculative(0), {}, options_.audit);
  }
  verify_client(const verify_client&) = delete;
  verify_client& operator=(const verify_client&) = delete;
  /// Ends the session (best effort: a `close_session` with a short deadline).
  ~verify_client() { close(); }

  /// Starts a session holding `prefix` (the committed tokens so far, non-empty) that
  /// verifies with `params` and a server random source seeded with `seed`. A request whose
  /// class and route `p` may not leave the device (uplink.hpp: local_only, redactable, or the
  /// device route) throws `privacy_violation` before any connection is opened, and marks the
  /// client so that no later call sends anything either. Every frame passes the gate and is
  /// recorded in `options.audit`. Throws `link_unavailable` (the next `verify` retries the
  /// open), `remote_error` if the server refuses.
  void open(std::span<const token_id> prefix, const sampling_params& params = {}, std::uint64_t seed = 0,
            request_privacy p = privacy::may_leave_device) {
    begin_session(prefix, params, seed, p, "verify_client::open");
    with_retries("verify_client::open", [&] {
      ensure_connected();
      open_session_now();
    });
  }

  /// `open(prefix, params, seed, p)` and then `verify({}, draft, q)` in one round trip (see
  /// the file comment): both frames go out in one write. Throws as those two do; a refused
  /// open also closes the connection (the request behind it is answered with an error).
  verify_verdict open_and_verify(std::span<const token_id> prefix, std::span<const token_id> draft,
                                 const wire::sparse_rows* q = nullptr, const sampling_params& params = {},
                                 std::uint64_t seed = 0, request_privacy p = privacy::may_leave_device) {
    begin_session(prefix, params, seed, p, "verify_client::open_and_verify");
    set_block(draft, q, "verify_client::open_and_verify");
    return with_retries("verify_client::open_and_verify", [&] {
      ensure_connected();  // no session yet: nothing to resume
      const auto t0 = std::chrono::steady_clock::now();
      out_.clear();
      stage(wire::open_session{.api_key = options_.api_key, .params = params_, .seed = seed_,
                               .final_length = final_length_, .prefix = committed_},
            committed_.size());
      request_.seq = 1;
      request_.committed.clear();
      stage(request_, request_.draft.size());
      flush();
      const wire::message opened = receive();
      if (std::holds_alternative<wire::error_reply>(opened)) drop_connection();  // its answer to the request follows
      apply_opened(expect<wire::session_opened>(opened, "open_session"));
      seq_ = 1;
      return take_verdict(receive(), t0);
    });
  }

  /// One round: `committed_delta` are the tokens committed since the previous call (or
  /// since `open`), the previous verdict's accepted drafts and next token included;
  /// `draft` the block to verify (at most `draft_limit()` tokens); `q`, for a sampling
  /// session, one support row per draft token (the distribution it was drawn from).
  /// Throws `invalid_argument` for inconsistent arguments (nothing recorded), else
  /// `link_unavailable` when the server cannot be reached within the retries,
  /// `remote_error` if it rejects the request, `protocol_error` if it answers nonsense.
  /// Once the arguments are valid the delta counts as committed even if the call throws:
  /// the next call's delta starts after it (the session is then reopened with every
  /// committed token).
  verify_verdict verify(std::span<const token_id> committed_delta, std::span<const token_id> draft,
                        const wire::sparse_rows* q = nullptr) {
    (void)gate_.before_connect("verify_client::verify");
    if (committed_.empty())
      throw invalid_argument("verify_client::verify: no session; call open(prefix, ...) first");
    set_block(draft, q, "verify_client::verify");
    committed_.insert(committed_.end(), committed_delta.begin(), committed_delta.end());
    pending_.insert(pending_.end(), committed_delta.begin(), committed_delta.end());
    bool fresh = true;  // a new sequence number for this call's first send
    const verify_verdict v = with_retries("verify_client::verify", [&] {
      ensure_connected();
      if (!opened_) {
        open_session_now();
        fresh = true;
      }
      if (fresh) {
        request_.seq = ++seq_;
        request_.committed = pending_;
        fresh = false;
      }
      const auto t0 = std::chrono::steady_clock::now();
      send(request_, request_.committed.size() + request_.draft.size());
      wire::message reply = receive();
      if (auto* e = std::get_if<wire::error_reply>(&reply); e && e->code == wire::error_code::unknown_session) {
        // The server lost the session: reopen with every committed token (pending_ included).
        ++reopens_;
        open_session_now();
        request_.seq = ++seq_;
        request_.committed.clear();
        send(request_, request_.committed.size() + request_.draft.size());
        reply = receive();
      }
      return take_verdict(reply, t0);
    });
    pending_.clear();
    return v;
  }

  /// Ends the session and the connection (best effort, never throws).
  void close() noexcept {
    if (conn_.is_open() && opened_ && gate_.allows()) {
      try {
        send(wire::close_session{}, 0, 0.2);
      } catch (...) {
      }
    }
    drop_connection();
    opened_ = false;
  }

  /// Whether a session is open on a live connection right now.
  [[nodiscard]] bool connected() const noexcept { return conn_.is_open() && opened_; }
  /// Bytes written to / read from the sockets so far (all connections, framing included).
  [[nodiscard]] std::uint64_t bytes_sent() const noexcept { return sent_ + conn_.bytes_sent(); }
  [[nodiscard]] std::uint64_t bytes_received() const noexcept { return received_ + conn_.bytes_received(); }
  /// Seconds from sending the last successful verify request to its verdict.
  [[nodiscard]] double last_rtt_seconds() const noexcept { return last_rtt_; }
  /// Drafts the server will verify next round (0: it wants plain decoding for now); after
  /// a session ends, its last announcement (a new session may start from it).
  [[nodiscard]] std::size_t max_draft() const noexcept { return max_draft_; }
  /// The committed length at which the device ends its generation (prompt plus budget;
  /// 0: not said), sent with every later open, reopens included
  /// (`wire::open_session::final_length`): the server then computes no round past it.
  void expect_length(std::uint64_t final_length) noexcept { final_length_ = final_length; }
  /// The most drafts one request may carry (0 before the first `session_opened`).
  [[nodiscard]] std::size_t draft_limit() const noexcept { return draft_limit_; }
  [[nodiscard]] std::size_t vocab_size() const noexcept { return vocab_; }
  [[nodiscard]] std::size_t context_length() const noexcept { return context_; }
  /// Connections opened after the first one, and sessions reopened because the server
  /// had lost them.
  [[nodiscard]] std::size_t reconnects() const noexcept { return connects_ > 0 ? connects_ - 1 : 0; }
  [[nodiscard]] std::size_t reopens() const noexcept { return reopens_; }
  /// The committed tokens as the client knows them (prefix and every delta).
  [[nodiscard]] std::span<const token_id> committed() const noexcept { return committed_; }
  [[nodiscard]] const wire::session_id& session() const noexcept { return session_; }

 private:
  /// Runs `f` (which sends and receives), reconnecting and retrying after a lost
  /// connection or a missed deadline. Any failure that leaves the server's state unknown
  /// marks the session for reopening.
  template <class F>
  auto with_retries(const char* who, F&& f) -> decltype(f()) {
    for (std::size_t attempt = 0;; ++attempt) {
      try {
        return f();
      } catch (const tls_error&) {
        drop_connection();  // not transient: a certificate or setup problem, retrying cannot help
        opened_ = false;
        throw;
      } catch (const link_unavailable& e) {
        drop_connection();
        if (attempt >= options_.retries) {
          opened_ = false;  // the server may or may not have applied the last request
          throw_same(e, std::string(who) + ": " + e.what() + " (after " + std::to_string(attempt + 1) + " attempts)");
        }
      } catch (const protocol_error&) {
        drop_connection();
        opened_ = false;
        throw;
      } catch (const remote_error&) {
        // Refused (bad sequence, invalid request): the server applied nothing, but this
        // client already counts the delta as committed; start over from its tokens.
        opened_ = false;
        throw;
      }
    }
  }
  [[noreturn]] static void throw_same(const link_unavailable& e, const std::string& what) {
    if (dynamic_cast<const link_timeout*>(&e) != nullptr) throw link_timeout(what);
    throw link_unavailable(what);
  }

  /// A new session's state on this side (`open`, `open_and_verify`); nothing is sent.
  void begin_session(std::span<const token_id> prefix, const sampling_params& params, std::uint64_t seed,
                     request_privacy p, const char* who) {
    gate_ = uplink_gate(host_ + ":" + std::to_string(port_), route::speculative(0), p, options_.audit);
    (void)gate_.before_connect(who);
    params.validate();
    if (prefix.empty())
      throw invalid_argument(std::string(who) + ": empty prefix; expected the committed tokens (at least BOS)");
    committed_.assign(prefix.begin(), prefix.end());
    params_ = params;
    seed_ = seed;
    opened_ = false;
    pending_.clear();
  }
  /// Checks and stores the block of the next request.
  void set_block(std::span<const token_id> draft, const wire::sparse_rows* q, const char* who) {
    if (q != nullptr && q->rows() != 0 && q->rows() != draft.size())
      throw invalid_argument(std::string(who) + ": q has " + std::to_string(q->rows()) + " rows for " +
                             std::to_string(draft.size()) + " draft tokens; expected one row per draft token");
    if (draft_limit_ != 0 && draft.size() > draft_limit_)
      throw invalid_argument(std::string(who) + ": " + std::to_string(draft.size()) +
                             " draft tokens; the server verifies at most draft_limit = " +
                             std::to_string(draft_limit_));
    request_.draft.assign(draft.begin(), draft.end());
    if (q != nullptr) request_.q = *q;
    else request_.q.clear();
  }
  /// The verdict of `request_` in `reply` (sent at `t0`), checked; the announcement kept.
  verify_verdict take_verdict(const wire::message& reply, std::chrono::steady_clock::time_point t0) {
    const auto& r = expect<wire::verdict>(reply, "verify_request");
    if (r.seq != request_.seq || r.accepted > request_.draft.size())
      fail_protocol("verdict for seq " + std::to_string(r.seq) + " accepting " + std::to_string(r.accepted) +
                    " of " + std::to_string(request_.draft.size()) + " drafts; expected seq " +
                    std::to_string(request_.seq));
    if (!r.following.empty() && !request_.draft.empty())
      fail_protocol("verdict for seq " + std::to_string(r.seq) + " with " + std::to_string(r.following.size()) +
                    " following tokens after a request with " + std::to_string(request_.draft.size()) +
                    " drafts; expected following tokens only after a request without drafts");
    last_rtt_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    max_draft_ = std::min<std::size_t>(r.max_draft, draft_limit_);
    return verify_verdict{r.accepted, r.next, max_draft_, r.following};
  }

  void ensure_connected() {
    if (conn_.is_open()) return;
    conn_ = tcp_connection::connect(host_, port_, options_.connect_timeout_seconds,
                                    gate_.before_connect("verify_client::connect"), options_.security);
    ++connects_;
    in_.clear();
    if (!opened_) return;
    // A new connection to a live session: attach to it (or reopen if it is gone).
    send(wire::resume_session{session_, options_.api_key}, 0);
    wire::message reply = receive();
    if (auto* e = std::get_if<wire::error_reply>(&reply); e && e->code == wire::error_code::unknown_session) {
      opened_ = false;
      ++reopens_;
      return;
    }
    apply_opened(expect<wire::session_opened>(reply, "resume_session"));
  }

  /// Opens a session with all committed tokens on the current connection.
  void open_session_now() {
    wire::open_session o{.api_key = options_.api_key, .params = params_, .seed = seed_,
                         .final_length = final_length_, .prefix = committed_};
    send(o, committed_.size());
    apply_opened(expect<wire::session_opened>(receive(), "open_session"));
    pending_.clear();
    seq_ = 0;
  }
  void apply_opened(const wire::session_opened& s) {
    if (s.vocab_size == 0 || s.max_draft > s.draft_limit)
      fail_protocol("session_opened with vocab_size " + std::to_string(s.vocab_size) + ", max_draft " +
                    std::to_string(s.max_draft) + ", draft_limit " + std::to_string(s.draft_limit));
    session_ = s.id;
    vocab_ = s.vocab_size;
    context_ = s.context_length;
    max_draft_ = s.max_draft;
    draft_limit_ = s.draft_limit;
    opened_ = true;
  }

  /// Encodes `m`, passes the frame through the uplink gate (recorded with `tokens` token
  /// ids), then writes exactly those bytes.
  void send(const wire::message& m, std::size_t tokens, double timeout_seconds = 0.0) {
    out_.clear();
    stage(m, tokens);
    flush(timeout_seconds);
  }
  /// Appends `m`'s frame to the pending output, through the gate (recorded with `tokens`).
  void stage(const wire::message& m, std::size_t tokens) {
    const std::size_t at = out_.size();
    wire::encode_to(m, out_);
    gate_.before_send(std::span<const std::uint8_t>(out_).subspan(at), tokens);
  }
  /// Writes the pending output in one go.
  void flush(double timeout_seconds = 0.0) {
    conn_.send_all(out_, deadline_after(timeout_seconds > 0.0 ? timeout_seconds : options_.request_timeout_seconds));
  }

  wire::message receive() {
    wire::limits lim = options_.limits;
    if (vocab_ != 0) lim.vocab_size = vocab_;
    if (draft_limit_ != 0) lim.max_draft = draft_limit_;
    return read_frame(conn_, in_, lim, deadline_after(options_.request_timeout_seconds)).message;
  }

  /// The reply as a T, or the server's error as an exception: `link_unavailable` when it
  /// cannot serve now (overloaded, shutting down, internal failure, the key's rate or
  /// session quota exhausted: decode on the device), `remote_error` when the request
  /// itself was wrong or the key is not accepted (`unauthorized`).
  template <class T>
  const T& expect(const wire::message& m, const char* request) {
    if (const T* t = std::get_if<T>(&m)) return *t;
    if (const auto* e = std::get_if<wire::error_reply>(&m)) {
      const std::string what = std::string("verify_client: the server answered ") + request + " with " +
                               wire::to_string(e->code) + ": " + e->text;
      if (e->code == wire::error_code::overloaded || e->code == wire::error_code::shutting_down ||
          e->code == wire::error_code::internal || e->code == wire::error_code::rate_limited)
        throw link_unavailable(what);
      throw remote_error(static_cast<int>(e->code), 0, what);
    }
    fail_protocol(std::string("answered ") + request + " with " + wire::name_of(m));
  }
  [[noreturn]] void fail_protocol(const std::string& what) {
    throw protocol_error("verify_client: the server at " + host_ + ":" + std::to_string(port_) + " " + what);
  }

  void drop_connection() noexcept {
    sent_ += conn_.bytes_sent();
    received_ += conn_.bytes_received();
    conn_ = tcp_connection{};
    in_.clear();
  }

  std::string host_;
  std::uint16_t port_;
  verify_client_options options_;
  uplink_gate gate_;  ///< the request's class and route; every frame passes it
  tcp_connection conn_;
  std::vector<std::uint8_t> in_, out_;
  // The session as the server knows it.
  bool opened_ = false;
  wire::session_id session_{};
  std::uint64_t seq_ = 0;
  std::size_t vocab_ = 0, context_ = 0, max_draft_ = 0, draft_limit_ = 0;
  sampling_params params_{};
  std::uint64_t seed_ = 0;
  std::uint64_t final_length_ = 0;
  std::vector<token_id> committed_;  ///< every committed token (prefix + deltas)
  std::vector<token_id> pending_;    ///< committed tokens not yet delivered to the session
  wire::verify_request request_;
  // Counters.
  std::uint64_t sent_ = 0, received_ = 0;
  std::size_t connects_ = 0, reopens_ = 0;
  double last_rtt_ = 0.0;
};

}  // namespace specdec::hybrid
