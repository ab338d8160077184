#pragma once
/// \file specdec_serve/services.hpp
/// What the network front ends of `specdec-serve` (the HTTP API and the verify listener)
/// need from the engine that owns the model, as two small interfaces, plus the types they
/// exchange. The engine (engine.hpp) implements both; the front ends never see the model.
///
/// ```cpp
/// specdec::serve::completion_params p{.prompt = {1, 403}, .max_tokens = 8};
/// auto stream = service.submit(std::move(p));
/// specdec::serve::completion_event e;
/// while (stream->next(e, specdec::serve::clock::now() + std::chrono::seconds(1)) &&
///        e.what == specdec::serve::completion_event::kind::token) { use(e.token); }
/// ```
#include <sys/random.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/hybrid/wire.hpp"
#include "specdec/sampling.hpp"
#include "specdec/token.hpp"

namespace specdec::serve {

using clock = std::chrono::steady_clock;

/// `n` bytes from the kernel's CSPRNG (getrandom(2)); throws `error` if it fails.
inline void secure_random(void* out, std::size_t n) {
  auto* p = static_cast<unsigned char*>(out);
  while (n > 0) {
    const ssize_t got = ::getrandom(p, n, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      throw error("secure_random: getrandom failed: " + std::string(std::strerror(errno)));
    }
    p += got;
    n -= static_cast<std::size_t>(got);
  }
}

/// Overwrites a buffer's contents with zeros (stores the compiler may not drop), then
/// empties it: an ended request's tokens or text do not linger in memory that is freed
/// or reused later.
///
/// ```cpp
/// std::vector<specdec::token_id> prompt{1, 403};
/// specdec::serve::wipe(prompt);  // zeros, then empty
/// ```
template <class Buffer>
void wipe(Buffer& b) noexcept {
  if (!b.empty()) ::explicit_bzero(b.data(), b.size() * sizeof(*b.data()));
  b.clear();
}

/// Who sent a request: the index + 1 of its API key (auth.hpp's `key_ring`), 0 on an
/// open server. A session remembers the principal that opened it; only the same one may
/// resume, verify or close it.
struct principal {
  std::uint32_t key = 0;
  std::size_t max_sessions = 0;  ///< the key's quota of open sessions (0 = none)
  [[nodiscard]] bool same_key(const principal& o) const noexcept { return key == o.key; }
};

/// The engine cannot take the request now (too many completions, or draining): HTTP 503.
class unavailable : public error {
 public:
  using error::error;
};

/// The served model, as `/v1/models` and `/health` describe it.
struct model_info {
  std::string id;
  std::size_t vocab_size = 0;
  std::size_t context_length = 0;
};

/// One token's log-probabilities under the model's raw logits (log-softmax at temperature
/// 1, as OpenAI reports them) and the `top` most likely alternatives.
struct token_logprobs {
  token_id token = 0;
  float logprob = 0.0f;
  std::vector<std::pair<token_id, float>> top;
};

/// A completion request after the HTTP layer validated it: token ids in range and
/// prompt + max_tokens within the context.
struct completion_params {
  std::vector<token_id> prompt;
  std::size_t max_tokens = 16;
  sampling_params sampling{};
  std::uint64_t seed = 0;
  bool stop_at_eos = true;
  std::optional<std::size_t> logprobs;  ///< alternatives per generated token; nullopt = no logprobs
  bool prompt_logprobs = false;         ///< also report the prompt tokens' logprobs (echo)
};

/// What a completion stream delivers: prompt logprobs (for prompt tokens 1.. when asked),
/// generated tokens, then exactly one `finished` ("stop": EOS; "length": max_tokens or
/// the context) or `failed` (with a message).
struct completion_event {
  enum class kind { prompt, token, finished, failed };
  kind what = kind::token;
  token_id token = 0;
  std::optional<token_logprobs> logprobs;
  std::string reason;
};

/// A single-producer (the engine), single-consumer (an HTTP handler) queue of one
/// completion's events; the consumer may cancel (client gone, stop string matched) and
/// the engine then ends the generation at its next step.
class completion_stream {
 public:
  /// Waits until an event is available or `until`; false on timeout.
  bool next(completion_event& e, clock::time_point until) {
    std::unique_lock lock(mu_);
    if (!cv_.wait_until(lock, until, [&] { return !events_.empty(); })) return false;
    e = std::move(events_.front());
    events_.pop_front();
    return true;
  }
  void cancel() noexcept { cancelled_ = true; }
  [[nodiscard]] bool cancelled() const noexcept { return cancelled_; }
  void push(completion_event e) {
    {
      std::lock_guard lock(mu_);
      events_.push_back(std::move(e));
    }
    cv_.notify_one();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<completion_event> events_;
  std::atomic<bool> cancelled_{false};
};

/// Completions (the cloud-only route and OpenAI clients).
class completion_service {
 public:
  virtual ~completion_service() = default;
  [[nodiscard]] virtual model_info info() const = 0;
  /// Queues a completion; throws `unavailable` when the engine is full or draining.
  virtual std::shared_ptr<completion_stream> submit(completion_params p) = 0;
  /// Whether the engine accepts new requests (false once draining).
  [[nodiscard]] virtual bool accepting() const = 0;
  /// Sessions open and completions running, for /health.
  [[nodiscard]] virtual std::size_t sessions() const = 0;
  [[nodiscard]] virtual std::size_t completions() const = 0;
};

/// The verify protocol's sessions. Every call blocks until the engine answers and returns
/// the reply to send (a `session_opened`, `verdict` or `error_reply`).
class session_service {
 public:
  virtual ~session_service() = default;
  /// The bounds the listener decodes requests with (vocabulary, draft limit, ...).
  [[nodiscard]] virtual hybrid::wire::limits wire_limits() const = 0;
  /// Opens a session owned by `who` (its quota of sessions enforced: `rate_limited`).
  virtual hybrid::wire::message open(hybrid::wire::open_session m, principal who) = 0;
  /// A session of another principal is answered exactly like one that does not exist.
  virtual hybrid::wire::message resume(const hybrid::wire::session_id& id, principal who) = 0;
  /// `body_hash` identifies the request's bytes, so a replayed sequence number with a
  /// different body is told apart from a retry.
  virtual hybrid::wire::message verify(const hybrid::wire::session_id& id, principal who,
                                       hybrid::wire::verify_request m, std::uint64_t body_hash) = 0;
  virtual void close(const hybrid::wire::session_id& id, principal who) = 0;
};

/// Where an engine's answer to a blocked front-end thread is delivered, once.
class reply_slot {
 public:
  void set(hybrid::wire::message m) {
    {
      std::lock_guard lock(mu_);
      if (msg_) return;  // the first answer wins
      msg_ = std::move(m);
    }
    cv_.notify_all();
  }
  hybrid::wire::message wait() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return msg_.has_value(); });
    return *msg_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<hybrid::wire::message> msg_;
};

/// An `error_reply` for request `seq`.
[[nodiscard]] inline hybrid::wire::message error_message(hybrid::wire::error_code code, std::string text,
                                                         std::uint64_t seq = 0) {
  if (text.size() > 1000) text.resize(1000);  // clients bound error texts (wire::limits::max_text)
  return hybrid::wire::error_reply{code, seq, std::move(text)};
}

}  // namespace specdec::serve
