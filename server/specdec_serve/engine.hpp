#pragma once
/// \file specdec_serve/engine.hpp
/// The engine of `specdec-serve`: ONE scheduler thread owns a `batched_model` (the CPU
/// backend's `batched_transformer`, or any other) and runs continuous batching over
/// everything the front ends submit. Each step gathers the pending work of all
/// completions (a prompt chunk or the last generated token) and of all verify sessions (a
/// prefix chunk, or the committed tokens the session has not seen plus the draft block)
/// into ONE `forward_batch`, so the weights are read once per step for all clients; then
/// it samples each completion's next token and computes each session's verdict
/// (`greedy_match` when greedy, `rejection_sampling` with the draft's q densified from the
/// sent support otherwise, drawing from the session's own seeded random source).
///
/// ## A session's state (docs/hybrid.md, "Verify protocol")
/// `committed` is the device's committed sequence as far as the session has been told;
/// `kv` the tokens in the session's cache. A verify request with delta d and drafts
/// x_1..x_k sets committed += d, keeps the longest common prefix of kv and committed (at
/// most |committed| - 1 tokens, so at least one committed token is fed), feeds the rest of
/// committed plus the drafts, reads the last k + 1 rows, and keeps the accepted drafts in
/// the cache: the next request's delta starts with exactly those tokens (then the verdict's
/// next token), which are therefore not fed twice.
///
/// A new session's prefix (at most `prefill_chunk` + 1 tokens) is not fed on its own at
/// once: the device sends its first block right behind `open_session`, and the prefix
/// waits up to `engine_options::first_block_wait_seconds` to be fed in that block, so the
/// first round is one forward, not a prefill step and then the block's. Past the wait (a
/// client that opens and drafts before it sends) it is prefilled alone, as a longer
/// prefix is at once.
///
/// ## Anticipation
/// When a verdict announces 0 drafts, the device's next request is known if it follows the
/// announcement: it commits exactly that verdict (its accepted drafts and next token) and
/// carries no drafts. That request is then, per row, the work of one completion step, but a
/// completion stream is in every step and a split session is not: its request waits for
/// the device's round trip, then for the step in progress, then runs. So the engine
/// anticipates it (`speculation_options::anticipate`): the next step feeds the verdict's
/// token, as a completion stream would, and reads the next token from that row with the
/// same rule (`judge` with no drafts) and random source. When the predicted request
/// arrives it is answered at once from that token, and the session anticipates again while
/// the announcement stays 0 (arrived before that step ran, it makes the row its own
/// block). Any other request discards the anticipation: the random
/// source goes back to its state before the anticipated draw, and the cache keeps only
/// its prefix shared with the request's committed tokens, as for every request. So a
/// verdict is the same with or without anticipation, token for token; the price is one
/// row per request that never comes (the device stopped), the gain that a session at
/// n* = 0 is in every step, like a completion stream, and its answers wait for no step.
/// A device that says where it stops (`open_session::final_length`: its prompt plus its
/// budget) is not anticipated past it, so a generation that ends at its budget costs no
/// such row; one that ends at EOS costs none either (the verdict's token is EOS).
///
/// ## Run-ahead
/// One token deep, a session is in a step only if its device's round trip is shorter than
/// the step: over a 30 ms link it is in one step of ten, and its device gets one token per
/// round trip. A session opened with protocol version 4 is decoded further: each step
/// feeds the last token of the chain `expect` + `ahead` and appends the next one to
/// `ahead`, up to `speculation_options::run_ahead` tokens, EOS or the final length; the
/// anticipated request's verdict then carries `ahead` (its first token as `next`, the rest
/// as `following`), and the chain goes on from there. Every token of `ahead` is drawn as the
/// request that commits its predecessor would draw it, in order, from the same random
/// source, so the verdicts commit the same tokens as one-deep anticipation would; a request
/// that differs discards `ahead` and restores the random source to its state before
/// `ahead`'s first draw. The price is at most `run_ahead` rows decoded for nothing when a
/// device stops early (a stop sequence) or starts drafting again. The anticipated request
/// that finds fewer than `speculation_options::run_ahead_reply` tokens in `ahead` is
/// parked (`parked`: it is the session's `job`, committed, not a block to verify) and
/// answered once there are that many or the run-ahead stopped, so a device that asks
/// again at once (RTT 0) costs one request per few tokens, not one per token. It also
/// waits when the run-ahead will reach the device's final length before the device's next
/// request would arrive: a generation's last tokens then leave as they are decoded.
///
/// ## The announcement binds
/// A request verifies at most the drafts last announced to its session (`max_draft` of its
/// `session_opened` or last verdict); drafts beyond are not examined, and the verdict is
/// that of the shorter block (its `next` follows the last examined draft). A device sends
/// its session's first block with the open, before any announcement reaches it, with as
/// many drafts as it likes; on a loaded server those rows would cost every session.
///
/// Sequence numbers: a session accepts seq = last + 1 (applied once) or seq = last with the
/// same body (answered from the cached verdict, or re-pointed to the new connection while
/// the original is still being computed); anything else is `bad_sequence`.
///
/// ```cpp
/// specdec::cpu::batched_transformer model("models/kjv-big.bin");
/// specdec::serve::metrics_registry metrics;
/// specdec::serve::engine eng(model, {.model_id = "kjv-big"}, metrics);
/// eng.start();
/// auto stream = eng.submit({.prompt = {1, 403}, .max_tokens = 8});
/// ```
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "specdec/batch.hpp"
#include "specdec/verifier.hpp"
#include "specdec/error.hpp"
#include "specdec/hybrid/wire.hpp"
#include "specdec/rollback.hpp"
#include "specdec/sampling.hpp"
#include "specdec/telemetry.hpp"
#include "specdec/token.hpp"
#include "specdec_serve/batching.hpp"
#include "specdec_serve/metrics.hpp"
#include "specdec_serve/services.hpp"
#include "specdec_serve/speculation.hpp"

namespace specdec::serve {

/// Knobs of an `engine`.
///
/// ```cpp
/// specdec::serve::engine_options o{.model_id = "kjv-big", .max_sessions = 16, .session_ttl_seconds = 60};
/// ```
struct engine_options {
  std::string model_id = "model";
  std::size_t max_sessions = 64;           ///< open verify sessions at most
  double session_ttl_seconds = 300.0;      ///< an idle session expires after this
  std::size_t draft_limit = 16;            ///< drafts one verify request may carry
  std::size_t max_step_rows = 256;         ///< rows of one batched forward (more work waits a step)
  std::size_t prefill_chunk = 128;         ///< prompt / prefix tokens one sequence feeds per step
  /// A session just opened with a prefix of at most `prefill_chunk` + 1 tokens waits this
  /// long for its first verify block before its prefix is fed alone: a device sends that
  /// block right behind `open_session`, and fed with it the prefix costs one step of the
  /// session's first round instead of two. In [0, 3600] (0: feed at once).
  double first_block_wait_seconds = 0.002;
  std::size_t max_completions = 64;        ///< completions running at once
  speculation_options speculation{};
  hold_policy hold{};                      ///< how long verify blocks wait for each other (batching.hpp)

  void validate() const {
    if (max_sessions == 0 || max_completions == 0 || draft_limit == 0 || prefill_chunk == 0 ||
        max_step_rows < draft_limit + 1 || !(session_ttl_seconds > 0.0) ||
        !(first_block_wait_seconds >= 0.0 && first_block_wait_seconds <= 3600.0))
      throw invalid_argument("engine_options: max_sessions, max_completions, draft_limit, prefill_chunk >= 1, "
                             "max_step_rows >= draft_limit + 1, session_ttl_seconds > 0 and "
                             "0 <= first_block_wait_seconds <= 3600 expected; got " +
                             std::to_string(max_sessions) + ", " + std::to_string(max_completions) + ", " +
                             std::to_string(draft_limit) + ", " + std::to_string(prefill_chunk) + ", " +
                             std::to_string(max_step_rows) + ", " + std::to_string(session_ttl_seconds) + ", " +
                             std::to_string(first_block_wait_seconds));
    speculation.validate(draft_limit);
    hold.validate();
  }
};

/// The log-probabilities of `token` and of the `top` most likely tokens of a logits row.
[[nodiscard]] inline token_logprobs logprobs_of(std::span<const float> row, token_id token, std::size_t top) {
  const float mx = *std::max_element(row.begin(), row.end());
  double z = 0.0;
  for (float x : row) z += std::exp(static_cast<double>(x) - mx);
  const double lse = mx + std::log(z);
  token_logprobs out{token, static_cast<float>(row[static_cast<std::size_t>(token)] - lse), {}};
  top = std::min(top, row.size());
  if (top > 0) {
    std::vector<token_id> ids(row.size());
    std::iota(ids.begin(), ids.end(), 0);
    std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(top), ids.end(), [&](token_id a, token_id b) {
      return row[static_cast<std::size_t>(a)] > row[static_cast<std::size_t>(b)] ||
             (row[static_cast<std::size_t>(a)] == row[static_cast<std::size_t>(b)] && a < b);
    });
    for (std::size_t i = 0; i < top; ++i)
      out.top.emplace_back(ids[i], static_cast<float>(row[static_cast<std::size_t>(ids[i])] - lse));
  }
  return out;
}

/// The engine of the file comment, over a `batched_model` B that must outlive it.
template <batched_model B>
class engine final : public completion_service, public session_service {
 public:
  engine(B& model, engine_options options, metrics_registry& metrics)
      : model_(model), options_(std::move(options)), metrics_(metrics) {
    options_.validate();
    vocab_ = static_cast<std::size_t>(model_.vocab_size());
    context_ = static_cast<std::size_t>(model_.context_length());
    describe_metrics();
  }
  engine(const engine&) = delete;
  engine& operator=(const engine&) = delete;
  ~engine() override { stop(); }

  /// Measures the step-time curve (unless disabled or fixed) and starts the scheduler.
  void start() {
    if (thread_.joinable()) return;
    if (options_.speculation.calibrate && !options_.speculation.fixed) calibrate();
    thread_ = std::thread([this] { run(); });
  }
  /// Stops accepting new sessions, verify requests and completions; in-flight work goes on.
  void begin_drain() noexcept { draining_ = true; }
  /// Waits until no completion runs and no verify request is in flight, or until `until`;
  /// true if idle.
  bool wait_idle(clock::time_point until) {
    while (active_completions_ > 0 || inflight_verifies_ > 0) {
      if (clock::now() >= until) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
  }
  /// Stops the scheduler; what is still pending fails (completions with an error event,
  /// verify requests with `shutting_down`). Idempotent.
  void stop() {
    draining_ = true;
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    fail_everything();
  }

  /// The measured step-time curve (read after `stop`, or for diagnostics).
  [[nodiscard]] std::vector<std::pair<double, double>> cost_points() const {
    std::lock_guard lock(curve_mu_);
    return curve_.points();
  }

  // completion_service
  [[nodiscard]] model_info info() const override { return {options_.model_id, vocab_, context_}; }
  [[nodiscard]] bool accepting() const override { return !draining_; }
  [[nodiscard]] std::size_t sessions() const override { return open_sessions_; }
  [[nodiscard]] std::size_t completions() const override { return active_completions_; }
  std::shared_ptr<completion_stream> submit(completion_params p) override {
    if (draining_) throw unavailable("the server is shutting down");
    if (active_completions_ >= options_.max_completions)
      throw unavailable("the server runs its maximum of " + std::to_string(options_.max_completions) +
                        " completions; retry later");
    check_token_ids(p.prompt, vocab_, "completion prompt");
    if (p.prompt.empty() || p.prompt.size() + p.max_tokens > context_)
      throw invalid_argument("completion: " + std::to_string(p.prompt.size()) + " prompt tokens + max_tokens " +
                             std::to_string(p.max_tokens) + " exceed the context length " + std::to_string(context_) +
                             " (or the prompt is empty)");
    p.sampling.validate();
    auto job = std::make_shared<completion_job>();
    job->out = std::make_shared<completion_stream>();
    job->rng.reseed(p.seed);
    job->p = std::move(p);
    ++active_completions_;
    auto out = job->out;
    enqueue(completion_cmd{std::move(job)});
    return out;
  }

  // session_service
  [[nodiscard]] hybrid::wire::limits wire_limits() const override {
    return {.vocab_size = vocab_, .max_frame_bytes = std::size_t{1} << 22, .max_tokens = context_,
            .max_draft = options_.draft_limit, .max_support = vocab_};
  }
  hybrid::wire::message open(hybrid::wire::open_session m, principal who) override {
    if (draining_) return error_message(hybrid::wire::error_code::shutting_down, "the server is shutting down");
    if (m.version < hybrid::wire::oldest_protocol_version || m.version > hybrid::wire::protocol_version)
      return error_message(hybrid::wire::error_code::unsupported_version,
                           "protocol version " + std::to_string(m.version) + "; this server speaks " +
                               std::to_string(hybrid::wire::oldest_protocol_version) + " to " +
                               std::to_string(hybrid::wire::protocol_version));
    return call(open_cmd{std::move(m), who, {}});
  }
  hybrid::wire::message resume(const hybrid::wire::session_id& id, principal who) override {
    if (draining_) return error_message(hybrid::wire::error_code::shutting_down, "the server is shutting down");
    return call(resume_cmd{id, who, {}});
  }
  hybrid::wire::message verify(const hybrid::wire::session_id& id, principal who, hybrid::wire::verify_request m,
                               std::uint64_t body_hash) override {
    if (draining_)
      return error_message(hybrid::wire::error_code::shutting_down, "the server is shutting down", m.seq);
    ++inflight_verifies_;
    const std::uint64_t seq = m.seq;
    hybrid::wire::message r = call(verify_cmd{id, who, std::move(m), body_hash, clock::now(), {}});
    --inflight_verifies_;
    if (auto* e = std::get_if<hybrid::wire::error_reply>(&r); e && e->seq == 0) e->seq = seq;
    return r;
  }
  void close(const hybrid::wire::session_id& id, principal who) override { enqueue(close_cmd{id, who}); }

 private:
  // ---- commands from the front-end threads ----
  struct open_cmd {
    hybrid::wire::open_session msg;
    principal who;
    std::shared_ptr<reply_slot> reply;
  };
  struct resume_cmd {
    hybrid::wire::session_id id;
    principal who;
    std::shared_ptr<reply_slot> reply;
  };
  struct verify_cmd {
    hybrid::wire::session_id id;
    principal who;
    hybrid::wire::verify_request req;
    std::uint64_t hash = 0;
    clock::time_point received;
    std::shared_ptr<reply_slot> reply;
  };
  struct close_cmd {
    hybrid::wire::session_id id;
    principal who;
  };
  struct completion_job {
    completion_params p;
    std::shared_ptr<completion_stream> out;
    sequence_id seq = 0;
    bool started = false;
    std::vector<token_id> tokens;  ///< prompt + generated
    std::size_t fed = 0;           ///< tokens in the cache
    std::size_t generated = 0;
    random_source rng;
  };
  struct completion_cmd {
    std::shared_ptr<completion_job> job;
  };
  using command = std::variant<open_cmd, resume_cmd, verify_cmd, close_cmd, completion_cmd>;

  // ---- scheduler-owned state ----
  struct session_state {
    hybrid::wire::session_id id{};
    principal owner;  ///< only this key may resume, verify or close the session
    sequence_id seq = 0;
    sampling_params params{};
    random_source rng;
    std::vector<token_id> committed;  ///< the device's committed tokens, as told so far
    std::vector<token_id> kv;         ///< the tokens in this session's cache
    std::uint64_t final_length = 0;   ///< open_session::final_length: no request past it (0: not said)
    std::uint64_t last_seq = 0, last_hash = 0;
    std::optional<hybrid::wire::message> last_reply;  ///< the answer to last_seq, once computed
    std::optional<verify_cmd> job;                    ///< the request being computed
    double accepted = 0.0, trials = 0.0;              ///< draft positions accepted / examined
    clock::time_point last_active, last_verify;
    std::optional<clock::time_point> answered;  ///< when the server last answered it (opened, resumed, verdict)
    /// Opened: its prefix is not fed alone before this, unless a block came
    /// (`engine_options::first_block_wait_seconds`).
    std::optional<clock::time_point> first_block_by;
    double turnaround = 0.0;  ///< seconds from an answer to the next block (EWMA; 0 = not measured)
    std::size_t announced = 0;  ///< max_draft last told to the device (session_opened or verdict)
    // Anticipation and run-ahead (file comment): the request a device following a 0-draft
    // verdict sends next, and the tokens decoded for its verdict.
    std::vector<token_id> expect;  ///< its committed tokens (the last verdict's accepted drafts, next, following)
    bool anticipating = false;     ///< the next step feeds the chain `expect` + `ahead` and decodes one more
    std::vector<token_id> ahead;   ///< tokens decoded past `expect`; the cache holds all but the last
    random_source rng_before;      ///< `rng` before the first draw of `ahead` (sampling sessions)
    bool continues = false;        ///< opened with protocol version >= 4: its verdicts may carry `following`
    bool parked = false;           ///< `job` is the anticipated request, answered when `waits_for_more` says
  };
  /// One block of a step.
  struct part {
    completion_job* completion = nullptr;
    session_state* session = nullptr;
    bool verdict = false;  ///< the block ends with a verify request's drafts
    std::size_t first = 0;  ///< completion: index of its first token in `tokens`
    bool anticipation = false;  ///< the block feeds a session's `expect` (file comment)
  };

  template <class Cmd>
  hybrid::wire::message call(Cmd cmd) {
    auto slot = std::make_shared<reply_slot>();
    cmd.reply = slot;
    enqueue(std::move(cmd));
    return slot->wait();
  }
  void enqueue(command c) {
    {
      std::lock_guard lock(mu_);
      if (!stop_) {
        inbox_.push_back(std::move(c));
        c = close_cmd{};
      }
    }
    cv_.notify_all();
    // Stopped already: answer here.
    std::visit([&](auto& x) { fail_command(x); }, c);
  }

  void run() {
    std::vector<command> cmds;
    double hold = 0.0;  // seconds the next step may still wait for other sessions' verify blocks
    for (;;) {
      const bool busy = has_work();
      const auto held_from = clock::now();
      {
        std::unique_lock lock(mu_);
        const auto arrived = [&] { return stop_ || !inbox_.empty(); };
        if (!busy) {
          auto until = held_from + std::chrono::milliseconds(200);
          if (const auto due = next_first_block_deadline(held_from)) until = std::min(until, *due);
          cv_.wait_until(lock, until, arrived);
        }
        else if (hold > 0.0) cv_.wait_for(lock, std::chrono::duration<double>(hold), arrived);
        if (stop_) return;
        cmds.swap(inbox_);
      }
      if (busy && hold > 0.0)
        metrics_.add("specdec_step_hold_seconds_total", "",
                     std::chrono::duration<double>(clock::now() - held_from).count());
      for (auto& c : cmds) {
        try {
          std::visit([&](auto& x) { handle(x); }, c);
        } catch (const std::exception& e) {
          std::visit([&](auto& x) { fail_command(x, e.what()); }, c);
        }
      }
      cmds.clear();
      expire_sessions(clock::now());
      // Decided after the commands, so a block that just arrived can wait for the others;
      // the bound runs from the oldest waiting block, so holding ends.
      hold = has_work() ? hold_now(clock::now()) : 0.0;
      if (hold > 0.0) continue;
      try {
        step();
      } catch (const std::exception& e) {
        fail_step(e.what());
      }
    }
  }

  /// Seconds the next step may still wait for other sessions' verify blocks
  /// (batching.hpp's `hold_seconds` over the scheduler's state).
  [[nodiscard]] double hold_now(clock::time_point now) const {
    if (options_.hold.hold_fraction <= 0.0) return 0.0;
    hold_view v;
    double latest_due = 0.0;  // how long the last of the due blocks stays due
    for (const auto& j : completions_)
      if (!j->out->cancelled()) ++v.completions;
    if (v.completions > 0) return 0.0;
    for (const auto& [id, s] : sessions_)  // a step runs for them anyway, as for a completion
      if (s.anticipating) return 0.0;
    const auto window = std::chrono::duration<double>(options_.speculation.active_window_seconds);
    std::optional<clock::time_point> oldest;
    for (const auto& [id, s] : sessions_) {
      const std::size_t unseen = s.committed.size() > s.kv.size() ? s.committed.size() - s.kv.size() : 0;
      if (s.job) {
        ++v.ready_blocks;
        v.ready_rows += unseen + s.job->req.draft.size();
        if (!oldest || s.job->received < *oldest) oldest = s.job->received;
      } else if (unseen > 1 && !awaits_first_block(s, now)) {
        v.ready_rows += std::min(options_.prefill_chunk, unseen - 1);
      } else if (s.answered && now - s.last_active <= window) {
        const double since = std::chrono::duration<double>(now - *s.answered).count();
        if (!block_due(options_.hold, since, s.turnaround)) continue;
        ++v.due_blocks;
        latest_due = std::max(latest_due, due_for(options_.hold, since, s.turnaround));
      }
    }
    if (!oldest) return 0.0;
    // A block that arrived during a step could not have run before it ended: it has
    // waited since then, not since its arrival (batching.hpp).
    const clock::time_point waits_from = last_forward_end_ ? std::max(*oldest, *last_forward_end_) : *oldest;
    v.oldest_wait_seconds = std::chrono::duration<double>(now - waits_from).count();
    v.due_for_seconds = latest_due;
    std::lock_guard lock(curve_mu_);
    return hold_seconds(options_.hold, curve_, v);
  }

  [[nodiscard]] bool has_work() const {
    if (!completions_.empty()) return true;
    const auto now = clock::now();
    for (const auto& [id, s] : sessions_)
      if (s.job || s.anticipating || (s.committed.size() > s.kv.size() + 1 && !awaits_first_block(s, now)))
        return true;
    return false;
  }
  /// Whether `unseen` committed tokens are fed in one block with a request's drafts (more
  /// are prefilled in chunks first); a new session's prefix waits for its first block
  /// only then.
  [[nodiscard]] bool rides_with_block(std::size_t unseen) const noexcept { return unseen <= options_.prefill_chunk + 1; }
  /// Whether the prefix of `s` waits for its first block (`first_block_by`).
  [[nodiscard]] static bool awaits_first_block(const session_state& s, clock::time_point now) noexcept {
    return !s.job && s.first_block_by && now < *s.first_block_by;
  }
  /// The earliest `first_block_by` still ahead: the engine wakes then to feed that prefix.
  [[nodiscard]] std::optional<clock::time_point> next_first_block_deadline(clock::time_point now) const {
    std::optional<clock::time_point> due;
    for (const auto& [id, s] : sessions_)
      if (awaits_first_block(s, now) && (!due || *s.first_block_by < *due)) due = s.first_block_by;
    return due;
  }

  // ---- commands ----
  void handle(open_cmd& c) {
    const auto now = clock::now();
    if (sessions_.size() >= options_.max_sessions) expire_sessions(now);
    if (sessions_.size() >= options_.max_sessions) {
      metrics_.add("specdec_verify_requests_total", "type=\"open\",result=\"overloaded\"");
      c.reply->set(error_message(hybrid::wire::error_code::overloaded,
                                 "the server holds its maximum of " + std::to_string(options_.max_sessions) +
                                     " sessions; decode on the device and retry later"));
      return;
    }
    if (c.who.max_sessions > 0 && owned_by(c.who) >= c.who.max_sessions) expire_sessions(now);
    if (c.who.max_sessions > 0 && owned_by(c.who) >= c.who.max_sessions) {
      metrics_.add("specdec_verify_requests_total", "type=\"open\",result=\"rate_limited\"");
      c.reply->set(error_message(hybrid::wire::error_code::rate_limited,
                                 "this API key holds its maximum of " + std::to_string(c.who.max_sessions) +
                                     " open sessions; close one or decode on the device"));
      return;
    }
    if (c.msg.prefix.empty() || c.msg.prefix.size() > context_) {
      c.reply->set(error_message(hybrid::wire::error_code::invalid_request,
                                 "open_session.prefix has " + std::to_string(c.msg.prefix.size()) +
                                     " tokens; expected 1 to the context length " + std::to_string(context_)));
      return;
    }
    session_state s;
    secure_random(s.id.data(), s.id.size());
    s.owner = c.who;
    s.params = c.msg.params;
    s.rng.reseed(c.msg.seed);
    s.committed = std::move(c.msg.prefix);
    s.final_length = c.msg.final_length;
    s.continues = c.msg.version >= 4;
    s.last_active = now;
    s.answered = now;  // the device sends its first block right after session_opened
    if (rides_with_block(s.committed.size()) && options_.first_block_wait_seconds > 0.0)
      s.first_block_by = now + std::chrono::duration_cast<clock::duration>(
                                   std::chrono::duration<double>(options_.first_block_wait_seconds));
    const sequence_id seq = model_.add_sequence();
    s.seq = seq;
    auto [it, inserted] = sessions_.emplace(s.id, std::move(s));
    if (!inserted) {  // 2^-128: a repeated id is a broken random source, not bad luck
      model_.remove_sequence(seq);
      throw error("session id collision: the random source is broken");
    }
    open_sessions_ = sessions_.size();
    metrics_.add("specdec_verify_requests_total", "type=\"open\",result=\"ok\"");
    metrics_.set("specdec_active_sessions", "", static_cast<double>(sessions_.size()));
    c.reply->set(opened(it->second, now));
  }
  void handle(resume_cmd& c) {
    const auto it = find_session(c.id, c.who);
    if (it == sessions_.end()) {
      metrics_.add("specdec_verify_requests_total", "type=\"resume\",result=\"unknown_session\"");
      c.reply->set(unknown(c.id));
      return;
    }
    it->second.last_active = clock::now();
    it->second.answered = it->second.last_active;
    metrics_.add("specdec_verify_requests_total", "type=\"resume\",result=\"ok\"");
    c.reply->set(opened(it->second, it->second.last_active));
  }
  void handle(close_cmd& c) {
    const auto it = find_session(c.id, c.who);
    if (it == sessions_.end()) return;
    remove_session(it, "closed by the client");
  }
  void handle(completion_cmd& c) {
    completion_job& j = *c.job;
    j.seq = model_.add_sequence();
    j.started = true;
    j.tokens = j.p.prompt;
    metrics_.add("specdec_tokens_total", "kind=\"prompt\"", static_cast<double>(j.p.prompt.size()));
    completions_.push_back(std::move(c.job));
    metrics_.set("specdec_active_completions", "", static_cast<double>(completions_.size()));
  }
  void handle(verify_cmd& c) {
    using hybrid::wire::error_code;
    const auto it = find_session(c.id, c.who);
    if (it == sessions_.end()) {
      count_verify("unknown_session");
      c.reply->set(unknown(c.id));
      return;
    }
    session_state& s = it->second;
    const auto now = clock::now();
    s.last_active = now;
    const std::uint64_t seq = c.req.seq;
    const auto reject = [&](error_code code, const std::string& text) {
      count_verify(hybrid::wire::to_string(code));
      c.reply->set(error_message(code, text, seq));
    };
    if (seq == s.last_seq && seq != 0) {
      if (c.hash != s.last_hash)
        return reject(error_code::bad_sequence, "seq " + std::to_string(seq) +
                                                    " was already used for a different request; expected " +
                                                    std::to_string(seq + 1));
      count_verify("replay");
      if (s.job) {  // still being computed: the answer goes to the retrying connection
        s.job->reply->set(error_message(error_code::bad_sequence, "superseded by a retry of the same request", seq));
        s.job->reply = std::move(c.reply);
      } else {
        c.reply->set(*s.last_reply);
      }
      return;
    }
    if (s.job) return reject(error_code::bad_sequence, "request " + std::to_string(s.last_seq) +
                                                           " is still being verified; send one request at a time");
    if (seq != s.last_seq + 1)
      return reject(error_code::bad_sequence, "seq " + std::to_string(seq) + "; expected " +
                                                  std::to_string(s.last_seq + 1) + " (next) or " +
                                                  std::to_string(s.last_seq) + " (a retry)");
    if (c.req.draft.size() > s.announced) {  // "The announcement binds"
      metrics_.add("specdec_drafts_unexamined_total", "", static_cast<double>(c.req.draft.size() - s.announced));
      c.req.draft.resize(s.announced);
      if (c.req.q.rows() > s.announced) {
        hybrid::wire::sparse_rows q;
        for (std::size_t r = 0; r < s.announced; ++r) q.add_row(c.req.q.ids(r), c.req.q.probs(r));
        c.req.q = std::move(q);
      }
    }
    const std::size_t k = c.req.draft.size();
    const std::size_t n = s.committed.size() + c.req.committed.size();
    if (n == 0) return reject(error_code::invalid_request, "no committed tokens; expected at least one");
    if (n + k > context_)
      return reject(error_code::invalid_request, std::to_string(n) + " committed + " + std::to_string(k) +
                                                     " draft tokens exceed the context length " +
                                                     std::to_string(context_));
    if (!s.params.greedy() && k > 0 && c.req.q.rows() != k)
      return reject(error_code::invalid_request,
                    "a sampling session verifies by rejection sampling and needs the draft's distribution: " +
                        std::to_string(c.req.q.rows()) + " support rows for " + std::to_string(k) + " drafts");
    const bool expected = k == 0 && std::ranges::equal(c.req.committed, s.expect);  // the anticipated request
    if (!s.ahead.empty() && expected) {
      // The anticipated request: its rows ran already; the cache holds S and all of
      // `ahead` but its last token, which the run-ahead feeds next. Committed now, the
      // chain is `ahead` alone until the verdict hands it over.
      s.committed.insert(s.committed.end(), c.req.committed.begin(), c.req.committed.end());
      s.expect.clear();
      accept_request(s, c, now);
      metrics_.add("specdec_anticipations_total", "result=\"hit\"");
      if (waits_for_more(s)) {
        s.job = std::move(c);  // "Run-ahead": answered when `ahead` is long enough
        s.parked = true;
        return;
      }
      reply_ahead(s, *c.reply, c.received, seq);
      return;
    }
    drop_anticipation(s, expected);
    // Accepted: apply the delta, keep the cached prefix it shares, queue the block.
    s.committed.insert(s.committed.end(), c.req.committed.begin(), c.req.committed.end());
    std::size_t keep = 0;
    while (keep < s.kv.size() && keep + 1 < s.committed.size() && s.kv[keep] == s.committed[keep]) ++keep;
    model_.truncate(s.seq, keep);
    s.kv.resize(keep);
    accept_request(s, c, now);
    s.job = std::move(c);
  }
  /// Bookkeeping of a request that is applied (seq = last + 1, valid).
  void accept_request(session_state& s, const verify_cmd& c, clock::time_point now) {
    s.last_seq = c.req.seq;
    s.last_hash = c.hash;
    s.last_reply.reset();
    s.last_verify = now;
    // A device sends its first block behind the open (open_and_verify): the gap from the
    // open to it measures no round trip.
    if (s.answered && c.req.seq > 1) {
      const double gap = std::chrono::duration<double>(c.received - *s.answered).count();
      s.turnaround = s.turnaround > 0.0 ? s.turnaround + 0.25 * (gap - s.turnaround) : std::max(gap, 1e-6);
      recent_turnaround_ = s.turnaround;
    }
  }
  /// Forgets the anticipation of a request that is not answered from it: the anticipated
  /// draw never happened (the random source is restored); the cache is cut by the
  /// caller. Counted as a miss when its row ran, as early when the `expected` request
  /// came before the row ran (the engine was still answering others: the row becomes
  /// that request's own block, nothing wasted and nothing gained).
  void drop_anticipation(session_state& s, bool expected) {
    if (!s.ahead.empty()) {
      if (!s.params.greedy()) s.rng = s.rng_before;
      metrics_.add("specdec_anticipations_total", "result=\"miss\"");
      metrics_.add("specdec_run_ahead_tokens_total", "result=\"discarded\"", static_cast<double>(s.ahead.size()));
    } else if (s.anticipating && expected) {
      metrics_.add("specdec_anticipations_total", "result=\"early\"");
    }
    wipe(s.ahead);
    s.anticipating = false;
  }

  /// The session `id` if `who` owns it; another key's session is not found, so its
  /// existence is not revealed.
  typename std::map<hybrid::wire::session_id, session_state>::iterator find_session(
      const hybrid::wire::session_id& id, principal who) {
    const auto it = sessions_.find(id);
    return it != sessions_.end() && it->second.owner.same_key(who) ? it : sessions_.end();
  }
  [[nodiscard]] std::size_t owned_by(principal who) const {
    return static_cast<std::size_t>(std::count_if(sessions_.begin(), sessions_.end(),
                                                  [&](const auto& kv) { return kv.second.owner.same_key(who); }));
  }

  hybrid::wire::message opened(session_state& s, clock::time_point now) {
    s.announced = announce(s, now, true);
    return hybrid::wire::session_opened{s.id, static_cast<std::uint32_t>(vocab_), static_cast<std::uint32_t>(context_),
                                        static_cast<std::uint32_t>(s.announced),
                                        static_cast<std::uint32_t>(options_.draft_limit)};
  }
  static hybrid::wire::message unknown(const hybrid::wire::session_id& id) {
    return error_message(hybrid::wire::error_code::unknown_session,
                         "no session " + hybrid::wire::to_hex(id) +
                             " (expired, evicted, closed or never opened); reopen it with the committed prefix");
  }
  void count_verify(const char* result) {
    metrics_.add("specdec_verify_requests_total", std::string("type=\"verify\",result=\"") + result + "\"");
  }

  void remove_session(typename std::map<hybrid::wire::session_id, session_state>::iterator it, const char* why) {
    if (it->second.job)
      it->second.job->reply->set(error_message(hybrid::wire::error_code::unknown_session,
                                               std::string("the session ended: ") + why, it->second.job->req.seq));
    if (!it->second.ahead.empty()) metrics_.add("specdec_anticipations_total", "result=\"unused\"");
    model_.remove_sequence(it->second.seq);  // the backend zeroes the cache before reuse
    wipe(it->second.committed);
    wipe(it->second.kv);
    wipe(it->second.expect);
    wipe(it->second.ahead);
    sessions_.erase(it);
    open_sessions_ = sessions_.size();
    metrics_.set("specdec_active_sessions", "", static_cast<double>(sessions_.size()));
  }
  void expire_sessions(clock::time_point now) {
    const auto ttl = std::chrono::duration<double>(options_.session_ttl_seconds);
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      auto next = std::next(it);
      if (!it->second.job && now - it->second.last_active > ttl) {
        remove_session(it, "idle longer than the session TTL");
        metrics_.add("specdec_sessions_expired_total", "");
      }
      it = next;
    }
  }

  // ---- dynamic speculation ----
  std::size_t announce(const session_state& s, clock::time_point now, bool counting_self) {
    const speculation_options& o = options_.speculation;
    const std::size_t n = o.fixed ? *o.fixed : dynamic_draft(s, now, counting_self);
    metrics_.set("specdec_announced_max_draft", "", static_cast<double>(n));
    return n;
  }
  /// The dynamic rule's announcement (speculation.hpp; docs/hybrid.md, "Dynamic
  /// speculation") for session `s`, which counts as active when `counting_self`.
  std::size_t dynamic_draft(const session_state& s, clock::time_point now, bool counting_self) {
    const speculation_options& o = options_.speculation;
    const auto window = std::chrono::duration<double>(o.active_window_seconds);
    turnarounds_.clear();
    undrafted_turnarounds_.clear();
    pooled_.clear();
    // One pass over the active sessions: each one's turnaround (0: not measured yet,
    // before its second request), its run-ahead depth (in undrafted_turnarounds_ until
    // the turnarounds are known) and its acceptance.
    double measured_sum = 0.0;
    std::size_t measured_n = 0;
    for (const auto& [id, t] : sessions_)
      if (now - t.last_verify <= window || (counting_self && &t == &s)) {
        turnarounds_.push_back(t.turnaround);
        undrafted_turnarounds_.push_back(static_cast<double>(o.anticipate && t.continues ? o.run_ahead : 1));
        pooled_.push_back({t.accepted, t.trials});
        if (t.turnaround > 0.0) measured_sum += t.turnaround, ++measured_n;
      }
    // A session not measured yet is priced with the mean of the active ones measured,
    // else with the last turnaround measured on any session: its device most likely
    // sits behind the same kind of link, and counted as always present, a new request
    // on a slow link would make drafting look as cheap as at RTT 0. With no round trip
    // ever measured: no drafts. Drafting on a slow link leaves the session out of every
    // step for a round trip (a drafting session is not run ahead), while a request
    // without drafts on a fast link costs one round at one token a forward; the next
    // request measures the turnaround.
    if (measured_n == 0 && !(recent_turnaround_ > 0.0)) return 0;
    const double prior = measured_n > 0 ? measured_sum / static_cast<double>(measured_n) : recent_turnaround_;
    // Run R tokens ahead, a session yields R rows per turnaround (expected_batch).
    for (std::size_t i = 0; i < turnarounds_.size(); ++i) {
      if (!(turnarounds_[i] > 0.0)) turnarounds_[i] = prior;
      undrafted_turnarounds_[i] = turnarounds_[i] / undrafted_turnarounds_[i];
    }
    const double active = static_cast<double>(turnarounds_.size());
    const double c = static_cast<double>(completions_.size());
    load l{.sessions = std::max(active, 1.0), .completions = c};
    const double a = pooled_acceptance(pooled_, o);
    std::lock_guard lock(curve_mu_);
    if (!curve_.empty()) {
      // Each regime's batch for a step of every active session (one draft each when
      // drafting) and completion: an upper bound of the step's time.
      const double measured = drafting_batch_.empty() ? 0.0 : drafting_batch_.for_announcement(turnarounds_.size(), 0).sessions;
      l.sessions = std::max({1.0, measured, expected_batch(turnarounds_, curve_.seconds(2 * active + c), false)});
      l.undrafted_sessions =
          std::max(1.0, expected_batch(undrafted_turnarounds_, curve_.seconds(active + c), o.anticipate));
    }
    std::size_t n = o.next_draft(curve_, l, a, announced_);
    // The devices' side (`device_gain`, 2 by default): no drafts while they would get
    // their tokens device_gain times faster without (low load over a slow link).
    if (n > 0 && o.device_gain && !curve_.empty() &&
        device_rate(curve_, l, a, 0, undrafted_turnarounds_, o.anticipate) >=
            *o.device_gain * device_rate(curve_, l, a, n, turnarounds_, false))
      n = 0;
    announced_ = n;
    return n;
  }

  /// Times forwards of every row count up to 32, then of 64, 128, ... rows, before
  /// serving: the shape of the step-time curve (`cost_curve::calibrate`), so the first
  /// announcements already rest on measurements and the knee stays where it was measured.
  /// The blocks look like verify steps: sequences of 2 rows (blocks of 8 beyond 32 rows),
  /// each after `calibration_position` cached tokens, whose attention a step pays too.
  void calibrate() {
    const speculation_options& o = options_.speculation;
    const std::size_t position = std::min(o.calibration_position, context_ > 8 ? context_ - 8 : 0);
    const std::vector<token_id> tokens(std::max<std::size_t>(position, 8), bos_token);
    std::vector<sequence_id> ids;
    std::vector<std::pair<std::size_t, std::vector<sequence_block>>> shapes;  // rows, blocks
    try {
      for (std::size_t rows = 1; rows <= options_.max_step_rows; rows = rows < 32 ? rows + 1 : 2 * rows) {
        const std::size_t per_seq = rows <= 32 ? 2 : 8;
        std::vector<sequence_block> blocks;
        for (std::size_t i = 0; i * per_seq < rows; ++i) {
          if (i == ids.size()) {
            ids.push_back(model_.add_sequence());
            for (std::size_t fed = 0; fed < position; fed += options_.prefill_chunk) {
              const std::size_t n = std::min(options_.prefill_chunk, position - fed);
              const sequence_block prefill{ids.back(), std::span<const token_id>(tokens.data(), n)};
              (void)model_.forward_batch(std::span<const sequence_block>(&prefill, 1));
            }
          }
          blocks.push_back({ids[i], std::span<const token_id>(tokens.data(), std::min(per_seq, rows - i * per_seq))});
        }
        shapes.emplace_back(rows, std::move(blocks));
      }
    } catch (const resource_error&) {
      // No memory for more calibration sequences: the shape ends at the rows set up.
    }
    // The fastest of 5 rounds over every row count (after a warm-up round): a shared
    // machine's other tenants only add time, and a moment of theirs then slows one round of
    // every row count rather than all timings of a few (which would bend the curve's
    // shape, and the announcements with it); the online observations scale the curve to
    // the load actually seen.
    std::vector<double> best(shapes.size(), 1e30);
    for (int rep = 0; rep < 6; ++rep) {
      for (std::size_t i = 0; i < shapes.size(); ++i) {
        for (const sequence_block& b : shapes[i].second) model_.truncate(b.id, position);
        const auto t0 = clock::now();
        try {
          (void)model_.forward_batch(shapes[i].second);
        } catch (const resource_error&) {  // no memory for a step this large: the shape ends below it
          shapes.resize(i);
          break;
        }
        if (rep > 0) best[i] = std::min(best[i], std::chrono::duration<double>(clock::now() - t0).count());
      }
    }
    std::vector<std::pair<double, double>> shape;
    for (std::size_t i = 0; i < shapes.size(); ++i) shape.emplace_back(static_cast<double>(shapes[i].first), best[i]);
    for (sequence_id id : ids) model_.remove_sequence(id);
    std::lock_guard lock(curve_mu_);
    curve_.calibrate(std::move(shape));
  }

  // ---- one batched step ----
  void step() {
    const auto started = clock::now();
    blocks_.clear();
    parts_.clear();
    scratch_.resize(sessions_.size() + 1);
    std::size_t rows = 0, scratch_used = 0;
    const std::size_t budget = options_.max_step_rows;
    const auto fits = [&](std::size_t n) { return blocks_.empty() || rows + n <= budget; };
    // Completions first (one row each when decoding), rotating who goes first.
    const std::size_t nc = completions_.size();
    for (std::size_t i = 0; i < nc; ++i) {
      completion_job& j = *completions_[(i + rotation_) % nc];
      if (j.out->cancelled()) continue;
      const std::size_t n = std::min(options_.prefill_chunk, j.tokens.size() - j.fed);
      if (n == 0 || !fits(n)) continue;
      blocks_.push_back({j.seq, std::span<const token_id>(j.tokens.data() + j.fed, n)});
      parts_.push_back({&j, nullptr, false, j.fed});
      rows += n;
    }
    for (auto& [id, s] : sessions_) {
      // Between requests the cache may hold more than `committed` (the accepted drafts of
      // the last verdict, which the next delta will commit): then nothing is unseen.
      const std::size_t unseen = s.committed.size() > s.kv.size() ? s.committed.size() - s.kv.size() : 0;
      std::vector<token_id>& buf = scratch_[scratch_used];
      buf.clear();
      bool verdict = false, anticipation = false;
      if (s.job && !s.parked && rides_with_block(unseen)) {
        buf.assign(s.committed.begin() + static_cast<std::ptrdiff_t>(s.kv.size()), s.committed.end());
        buf.insert(buf.end(), s.job->req.draft.begin(), s.job->req.draft.end());
        verdict = true;
      } else if (unseen > 1 && !awaits_first_block(s, started)) {  // prefill: all but the last committed token, in chunks
        const std::size_t n = std::min(options_.prefill_chunk, unseen - 1);
        buf.assign(s.committed.begin() + static_cast<std::ptrdiff_t>(s.kv.size()),
                   s.committed.begin() + static_cast<std::ptrdiff_t>(s.kv.size() + n));
      } else if (s.anticipating) {  // the cache holds S and the chain `expect` + `ahead` but its last token
        const std::size_t held = s.kv.size() - std::min(s.kv.size(), s.committed.size());
        const std::size_t chain = s.expect.size() + s.ahead.size();
        if (s.kv.size() >= s.committed.size() && held < chain) {
          for (std::size_t i = held; i < chain; ++i)
            buf.push_back(i < s.expect.size() ? s.expect[i] : s.ahead[i - s.expect.size()]);
        } else {
          s.anticipating = false;
          release_parked(s);
        }
        anticipation = s.anticipating;
      }
      if (buf.empty() || !fits(buf.size())) continue;
      blocks_.push_back({s.seq, buf});
      parts_.push_back({nullptr, &s, verdict, 0, anticipation});
      rows += buf.size();
      ++scratch_used;
    }
    ++rotation_;
    if (blocks_.empty()) {
      drop_cancelled();
      return;
    }
    // CPU time beside wall time: other processes on the server's cores inflate the latter.
    const double cpu0 = specdec::process_cpu_seconds();
    const auto t0 = clock::now();
    const batch_logits out = model_.forward_batch(blocks_);
    const auto t1 = clock::now();
    const double dt = std::chrono::duration<double>(t1 - t0).count();
    metrics_.add("specdec_step_cpu_seconds_total", "", std::max(0.0, specdec::process_cpu_seconds() - cpu0));
    const bool busy = last_forward_end_ && std::chrono::duration<double>(t0 - *last_forward_end_).count() <=
                                               options_.speculation.busy_gap_seconds;
    last_forward_end_ = t1;
    step_pace_ = step_pace_ > 0.0 ? step_pace_ + 0.25 * (dt - step_pace_) : dt;
    {
      // An idle-gapped forward overstates t(rows), which still beats an empty curve.
      std::lock_guard lock(curve_mu_);
      if (busy || curve_.empty()) curve_.observe(rows, dt);
      else metrics_.add("specdec_steps_after_idle_total", "", 1.0);
    }
    metrics_.observe("specdec_step_seconds", "", dt);
    metrics_.observe("specdec_batch_rows", "", static_cast<double>(rows));
    metrics_.observe("specdec_batch_sequences", "", static_cast<double>(blocks_.size()));
    drafting_batch_.observe(static_cast<std::size_t>(std::count_if(parts_.begin(), parts_.end(), [](const part& p) {
      return p.verdict && !p.session->job->req.draft.empty();
    })));
    for (std::size_t i = 0; i < parts_.size(); ++i) {
      const logits_block l = out.block(i);
      if (parts_[i].completion != nullptr) after_completion(*parts_[i].completion, l, parts_[i].first);
      else if (parts_[i].anticipation) after_anticipation(*parts_[i].session, l, blocks_[i].tokens);
      else after_session(*parts_[i].session, l, blocks_[i].tokens, parts_[i].verdict);
    }
    for (std::size_t i = 0; i < scratch_used; ++i) wipe(scratch_[i]);  // copies of sessions' tokens
    drop_cancelled();
  }

  void after_completion(completion_job& j, const logits_block& l, std::size_t first) {
    j.fed += l.rows;
    if (j.p.prompt_logprobs) {  // row r predicts token first + r + 1
      for (std::size_t r = 0; r < l.rows && first + r + 1 < j.p.prompt.size(); ++r) {
        const token_id t = j.p.prompt[first + r + 1];
        j.out->push({completion_event::kind::prompt, t, logprobs_of(l.row(r), t, j.p.logprobs.value_or(0)), {}});
      }
    }
    if (j.fed < j.tokens.size()) return;  // still feeding the prompt
    if (j.p.max_tokens == 0) return finish(j, "length");
    probs_.resize(vocab_);
    const std::span<const float> row = l.row(l.rows - 1);
    const token_id t = specdec::sample_token(row, j.p.sampling, probs_, j.rng);
    j.tokens.push_back(t);
    ++j.generated;
    metrics_.add("specdec_tokens_total", "kind=\"generated\"");
    completion_event e{completion_event::kind::token, t, std::nullopt, {}};
    if (j.p.logprobs) e.logprobs = logprobs_of(row, t, *j.p.logprobs);
    j.out->push(std::move(e));
    if (j.p.stop_at_eos && t == eos_token) return finish(j, "stop");
    if (j.generated >= j.p.max_tokens || j.tokens.size() >= context_) return finish(j, "length");
  }
  void finish(completion_job& j, const char* reason) {
    j.out->push({completion_event::kind::finished, 0, std::nullopt, reason});
    j.out->cancel();  // done: dropped from the batch below
  }
  void drop_cancelled() {
    const auto it = std::stable_partition(completions_.begin(), completions_.end(),
                                          [](const auto& j) { return !j->out->cancelled(); });
    for (auto d = it; d != completions_.end(); ++d) {
      model_.remove_sequence((*d)->seq);
      wipe((*d)->tokens);
      wipe((*d)->p.prompt);
      --active_completions_;
    }
    if (it != completions_.end()) {
      completions_.erase(it, completions_.end());
      metrics_.set("specdec_active_completions", "", static_cast<double>(completions_.size()));
    }
  }

  void after_session(session_state& s, const logits_block& l, std::span<const token_id> fed, bool verdict) {
    s.kv.insert(s.kv.end(), fed.begin(), fed.end());
    if (!verdict) return;
    verify_cmd& job = *s.job;
    const std::size_t k = job.req.draft.size();
    // The library's one verdict path (verifier.hpp): greedy_match when greedy, rejection
    // sampling with the draft's exact q (densified from the sent support) otherwise.
    const logits_block rows{l.data + (l.rows - k - 1) * vocab_, k + 1, vocab_};
    draft_block d{.tokens = job.req.draft, .position = s.committed.size()};
    if (!s.params.greedy() && k > 0) {
      q_.resize(k * vocab_);
      for (std::size_t i = 0; i < k; ++i) job.req.q.densify(i, std::span<float>(q_).subspan(i * vocab_, vocab_));
      d.q = q_;
    }
    const specdec::verdict v = judge_rows(s, rows, d);
    // Keep the accepted drafts cached: the next delta starts with them.
    const std::size_t keep = s.committed.size() + v.accepted;
    model_.truncate(s.seq, keep);
    s.kv.resize(keep);
    if (k > 0) {
      s.accepted += static_cast<double>(v.accepted);
      s.trials += static_cast<double>(v.accepted + (v.accepted < k ? 1 : 0));
    }
    metrics_.add("specdec_tokens_total", "kind=\"drafted\"", static_cast<double>(k));
    const verify_cmd done = std::move(job);
    s.job.reset();
    answer(s, *done.reply, done.received, done.req.seq, v.accepted, v.next,
           std::span<const token_id>(done.req.draft).first(v.accepted));
  }
  /// The verdict rule of the session: greedy_match when greedy, rejection sampling with
  /// its random source otherwise (`d.q` set when it has drafts).
  specdec::verdict judge_rows(session_state& s, const logits_block& rows, const draft_block& d) {
    greedy_match greedy;
    rejection_sampling sampled;
    return s.params.greedy() ? judge(greedy, rows, d, s.params, s.rng, judge_buf_, "specdec-serve")
                             : judge(sampled, rows, d, s.params, s.rng, judge_buf_, "specdec-serve");
  }
  /// Sends the verdict of request `seq` (received at `received`) and, when it announces 0
  /// drafts, anticipates the request that commits it (file comment).
  void answer(session_state& s, reply_slot& slot, clock::time_point received, std::uint64_t seq, std::size_t accepted,
              token_id next, std::span<const token_id> accepted_drafts, std::span<const token_id> following = {}) {
    const auto now = clock::now();
    metrics_.add("specdec_tokens_total", "kind=\"accepted\"", static_cast<double>(accepted));
    metrics_.add("specdec_tokens_total", "kind=\"verified\"", static_cast<double>(accepted + 1 + following.size()));
    metrics_.observe("specdec_verify_seconds", "", std::chrono::duration<double>(now - received).count());
    metrics_.add("specdec_verify_requests_total", "type=\"verify\",result=\"verdict\"");
    const std::size_t n = announce(s, now, false);
    s.announced = n;
    hybrid::wire::message reply =
        hybrid::wire::verdict{seq, static_cast<std::uint32_t>(accepted), next, static_cast<std::uint32_t>(n),
                              std::vector<token_id>(following.begin(), following.end())};
    s.last_reply = reply;
    slot.set(std::move(reply));
    s.answered = clock::now();
    s.expect.assign(accepted_drafts.begin(), accepted_drafts.end());
    s.expect.push_back(next);
    s.expect.insert(s.expect.end(), following.begin(), following.end());
    s.ahead.clear();
    s.anticipating = n == 0 && options_.speculation.anticipate && decodes_further(s);
  }
  /// The device's committed length once it has committed `expect` and `ahead`.
  [[nodiscard]] static std::size_t length_once_committed(const session_state& s) noexcept {
    return s.committed.size() + s.expect.size() + s.ahead.size();
  }
  /// Whether the device, once it committed `expect` and `ahead`, asks for another token: it
  /// stops at EOS and at the final length it announced, and a request past the context
  /// would be refused. Bounded by the run-ahead depth (one token for sessions older than
  /// protocol version 4, whose verdicts carry none).
  [[nodiscard]] bool decodes_further(const session_state& s) const {
    const std::size_t depth = s.continues ? options_.speculation.run_ahead : 1;
    const std::size_t length = length_once_committed(s);
    const token_id last = s.ahead.empty() ? s.expect.back() : s.ahead.back();
    return s.ahead.size() < depth && last != eos_token && length <= context_ &&
           (s.final_length == 0 || length < s.final_length);
  }
  /// The anticipation block ran: its last row gives the next token of the chain (no
  /// drafts: the target's next token, by the session's rule and random source), which the
  /// anticipated request's verdict carries.
  void after_anticipation(session_state& s, const logits_block& l, std::span<const token_id> fed) {
    s.kv.insert(s.kv.end(), fed.begin(), fed.end());
    if (s.ahead.empty() && !s.params.greedy()) s.rng_before = s.rng;
    const logits_block row{l.data + (l.rows - 1) * vocab_, 1, vocab_};
    s.ahead.push_back(judge_rows(s, row, {.position = s.kv.size()}).next);
    s.anticipating = decodes_further(s);
    release_parked(s);
  }
  /// Whether the anticipated request of `s`, committed, waits for more of the run-ahead:
  /// while `ahead` is shorter than `run_ahead_reply`, and while the run-ahead will reach
  /// the device's final length before the device's next request would come (within its
  /// turnaround at the steps' recent pace). Answered now, a generation's last tokens would
  /// wait for that request; answered at the end, they leave as they are decoded, as a
  /// stream's do. Never once the run-ahead stopped (depth, EOS, final length).
  [[nodiscard]] bool waits_for_more(const session_state& s) const {
    if (!s.anticipating) return false;
    if (s.ahead.size() < options_.speculation.run_ahead_reply) return true;
    if (s.final_length == 0 || !(s.turnaround > 0.0)) return false;
    const std::size_t length = length_once_committed(s);
    return length >= s.final_length ||
           static_cast<double>(s.final_length - length) * step_pace_ <= s.turnaround;
  }
  /// Answers a parked anticipated request once it waits for no more (`waits_for_more`).
  void release_parked(session_state& s) {
    if (!s.parked || waits_for_more(s)) return;
    const verify_cmd job = std::move(*s.job);
    s.job.reset();
    s.parked = false;
    reply_ahead(s, *job.reply, job.received, job.req.seq);
  }
  /// The verdict of the anticipated request: `ahead`'s first token as next, the rest as
  /// following tokens.
  void reply_ahead(session_state& s, reply_slot& slot, clock::time_point received, std::uint64_t seq) {
    std::vector<token_id> ahead = std::move(s.ahead);
    s.ahead.clear();
    if (ahead.size() > 1)
      metrics_.add("specdec_run_ahead_tokens_total", "result=\"sent\"", static_cast<double>(ahead.size() - 1));
    answer(s, slot, received, seq, 0, ahead.front(), {}, std::span<const token_id>(ahead).subspan(1));
    wipe(ahead);
  }

  // ---- failure paths ----
  void fail_step(const std::string& what) {
    for (auto& j : completions_) {
      j->out->push({completion_event::kind::failed, 0, std::nullopt, "internal error: " + what});
      j->out->cancel();
    }
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      auto next = std::next(it);
      if (it->second.job || it->second.anticipating) {  // its cache is unknown now: end it, the client reopens
        if (it->second.job)
          it->second.job->reply->set(
              error_message(hybrid::wire::error_code::internal, "internal error: " + what, it->second.job->req.seq));
        it->second.job.reset();
        remove_session(it, "internal error");
      }
      it = next;
    }
    drop_cancelled();
  }
  void fail_command(open_cmd& c, const std::string& why = "the server is shutting down") {
    if (c.reply) c.reply->set(error_message(failure_code(), why));
  }
  void fail_command(resume_cmd& c, const std::string& why = "the server is shutting down") {
    if (c.reply) c.reply->set(error_message(failure_code(), why));
  }
  void fail_command(verify_cmd& c, const std::string& why = "the server is shutting down") {
    if (c.reply) c.reply->set(error_message(failure_code(), why, c.req.seq));
  }
  void fail_command(close_cmd&, const std::string& = {}) {}
  void fail_command(completion_cmd& c, const std::string& why = "the server is shutting down") {
    if (!c.job) return;
    c.job->out->push({completion_event::kind::failed, 0, std::nullopt, why});
    c.job->out->cancel();
    --active_completions_;
  }
  [[nodiscard]] hybrid::wire::error_code failure_code() const {
    return stop_ ? hybrid::wire::error_code::shutting_down : hybrid::wire::error_code::internal;
  }
  /// After the scheduler stopped: every pending request fails, every sequence is freed.
  void fail_everything() {
    std::vector<command> cmds;
    {
      std::lock_guard lock(mu_);
      cmds.swap(inbox_);
    }
    for (auto& c : cmds) std::visit([&](auto& x) { fail_command(x); }, c);
    for (auto& j : completions_) {
      j->out->push({completion_event::kind::failed, 0, std::nullopt, "the server is shutting down"});
      j->out->cancel();
    }
    drop_cancelled();
    while (!sessions_.empty()) {
      auto it = sessions_.begin();
      if (it->second.job)
        it->second.job->reply->set(error_message(hybrid::wire::error_code::shutting_down,
                                                 "the server is shutting down", it->second.job->req.seq));
      it->second.job.reset();
      remove_session(it, "the server is shutting down");
    }
  }

  void describe_metrics() {
    const std::vector<double> secs{0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5};
    const std::vector<double> counts{1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
    metrics_.describe("specdec_verify_requests_total", "counter",
                      "Verify-protocol requests by type (open, resume, verify) and result");
    metrics_.describe("specdec_sessions_expired_total", "counter", "Verify sessions removed after their idle TTL");
    metrics_.describe("specdec_tokens_total", "counter",
                      "Tokens by kind: prompt (completions), generated (completions), drafted, accepted and "
                      "verified (= accepted + next + following) in verify rounds");
    metrics_.describe("specdec_active_sessions", "gauge", "Open verify sessions");
    metrics_.describe("specdec_active_completions", "gauge", "Completions being generated");
    metrics_.describe("specdec_announced_max_draft", "gauge", "The draft length announced last (dynamic speculation)");
    metrics_.describe("specdec_drafts_unexamined_total", "counter",
                      "Draft tokens beyond the session's announcement, not verified (the announcement binds)");
    metrics_.describe("specdec_step_seconds", "histogram", "Wall time of one batched forward", secs);
    metrics_.describe("specdec_step_cpu_seconds_total", "counter",
                      "CPU time the server process used during batched forwards (all its threads)");
    metrics_.describe("specdec_steps_after_idle_total", "counter",
                      "Batched forwards that started more than busy_gap_seconds after the previous one "
                      "ended (not learnt by the step-time curve)");
    metrics_.describe("specdec_anticipations_total", "counter",
                      "Anticipated verify requests (after a 0-draft verdict) by result: hit (answered from the "
                      "anticipated row), early (it came before that row ran, which became its own block), miss "
                      "(the request differed; the row was wasted) or unused (the session ended first; the row was "
                      "wasted)");
    metrics_.describe("specdec_run_ahead_tokens_total", "counter",
                      "Tokens decoded ahead of a session's request by result: sent (as a verdict's following "
                      "tokens) or discarded (the request differed)");
    metrics_.describe("specdec_step_hold_seconds_total", "counter",
                      "Time the scheduler held steps so other sessions' verify blocks could join them");
    metrics_.describe("specdec_verify_seconds", "histogram",
                      "Server time of a verify request, from its arrival to its verdict", secs);
    metrics_.describe("specdec_batch_rows", "histogram", "Rows (tokens) per batched forward", counts);
    metrics_.describe("specdec_batch_sequences", "histogram", "Sequences (blocks) per batched forward", counts);
    metrics_.set("specdec_active_sessions", "", 0);
    metrics_.set("specdec_active_completions", "", 0);
  }

  B& model_;
  engine_options options_;
  metrics_registry& metrics_;
  std::size_t vocab_ = 0, context_ = 0;

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<command> inbox_;  ///< guarded by mu_
  std::atomic<bool> stop_{false};  ///< set under mu_ (the scheduler waits on it)
  std::atomic<bool> draining_{false};
  std::atomic<std::size_t> active_completions_{0}, inflight_verifies_{0}, open_sessions_{0};
  std::thread thread_;

  mutable std::mutex curve_mu_;
  cost_curve curve_;  ///< guarded by curve_mu_
  std::optional<clock::time_point> last_forward_end_;  ///< of the last step (scheduler thread only)
  double step_pace_ = 0.0;  ///< wall time of a step's forward (EWMA), the run-ahead's pace

  // Scheduler thread only.
  std::map<hybrid::wire::session_id, session_state> sessions_;
  std::vector<std::shared_ptr<completion_job>> completions_;
  std::vector<sequence_block> blocks_;
  std::vector<part> parts_;
  std::vector<std::vector<token_id>> scratch_;
  std::size_t rotation_ = 0;
  std::vector<double> turnarounds_, undrafted_turnarounds_;  ///< scratch of `announce`
  double recent_turnaround_ = 0.0;  ///< the last turnaround measured on any session (0: none yet)
  std::vector<draft_record> pooled_;  ///< scratch of `announce`
  std::size_t announced_ = 0;  ///< the rule's last announcement, to any session (hysteresis)
  batch_estimate drafting_batch_;    ///< verify blocks with drafts per step, as the steps ran
  std::vector<float> probs_, q_;
  specdec::detail::judge_buffers judge_buf_;
};

}  // namespace specdec::serve
