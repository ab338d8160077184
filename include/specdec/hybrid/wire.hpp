#pragma once
/// \file hybrid/wire.hpp
/// The binary framing of the split-decoding verify loop: the messages a device and
/// `specdec-serve` exchange on one persistent TCP connection, and their encoders and
/// decoders. No sockets here (see verify_client.hpp for the transport).
///
/// ## Framing
/// A frame is `varint L`, then L bytes: one `u8` message type and L - 1 bytes of payload.
/// Integers are unsigned LEB128 varints (7 bits per byte, low bits first, at most 10
/// bytes for 64 bits) in their shortest form; probabilities and sampling knobs are IEEE
/// float32, little-endian; a session id is 16 raw bytes. The decoder accepts exactly the
/// byte strings the encoder produces (shortest varints, flags 0 or 1, no trailing bytes),
/// so `encode(decode(b)) == b` for every accepted `b`, and rejects everything else with a
/// `protocol_error` naming the field and its byte offset, never reading out of bounds or
/// allocating more than the frame's own size justifies.
///
/// ## Messages (device -> server: open, resume, verify, close; server -> device: the rest)
/// | type | message          | payload                                                                  |
/// |------|------------------|--------------------------------------------------------------------------|
/// | 1    | `open_session`   | version, key length, key, temperature f32, top_k, top_p f32, seed, final length, n, n ids |
/// | 2    | `session_opened` | session id (16 bytes), vocab size, context length, max draft, draft limit |
/// | 3    | `resume_session` | session id (16 bytes), key length, key bytes                             |
/// | 4    | `verify_request` | seq, n, n committed ids, k, k draft ids, r (0 or k), r support rows      |
/// | 5    | `verdict`        | seq, accepted, next token, max draft for the next round, [m >= 1, m following ids] |
/// | 6    | `error_reply`    | code, seq (0 if none), text length, text bytes                           |
/// | 7    | `close_session`  | (empty)                                                                  |
///
/// The API key (`specdec-serve --api-keys`; empty on an open server) travels in
/// `open_session` and `resume_session`, which attach a connection to a session; the
/// connection's later requests act with that key. An `open_session` of version 1 (before
/// keys) has no key field, so an old client still decodes and gets `unsupported_version`;
/// version 2 has no final length (it decodes as 0, "not said"). A session opened with
/// version 4 may get verdicts with `following` tokens (the server's run-ahead at zero
/// drafts); one opened with an older version never does, so its client decodes every
/// verdict it is sent. A verdict without following tokens ends after `max_draft`: the
/// field costs nothing when unused.
///
/// A support row is the draft's truncated distribution at one draft position: m, then m
/// token ids strictly increasing (the first as is, each next as the gap minus one), then
/// m float32 probabilities, each in (0, 1], summing to 1 within 1e-3, with the drafted
/// token among the ids. The server densifies it with zeros elsewhere, which is exactly the
/// distribution the draft sampled from, so rejection sampling stays exact.
///
/// docs/hybrid.md describes the protocol's rules (sessions, sequence numbers, the verify
/// semantics) and byte counts.
///
/// ```cpp
/// namespace wire = specdec::hybrid::wire;
/// wire::verify_request v{.seq = 1, .committed = {1, 403}, .draft = {88, 12}};
/// std::vector<std::uint8_t> frame = wire::encode(v);       // 11 bytes
/// wire::message m = wire::decode_frame(frame, {.vocab_size = 2048});
/// auto& back = std::get<wire::verify_request>(m);         // == v
/// ```
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/hybrid/errors.hpp"
#include "specdec/sampling.hpp"
#include "specdec/token.hpp"

namespace specdec::hybrid::wire {

/// The protocol version an `open_session` carries; a server rejects versions outside
/// [oldest_protocol_version, protocol_version] with `error_code::unsupported_version`.
inline constexpr std::uint32_t protocol_version = 4;
/// The oldest version a server still speaks: 2 (before `open_session::final_length`).
inline constexpr std::uint32_t oldest_protocol_version = 2;

/// The first byte of a frame's body.
///
/// ```cpp
/// auto t = specdec::hybrid::wire::message_type::verdict;
/// ```
enum class message_type : std::uint8_t {
  open_session = 1,
  session_opened = 2,
  resume_session = 3,
  verify_request = 4,
  verdict = 5,
  error_reply = 6,
  close_session = 7,
};

/// What went wrong, in an `error_reply`. A client reopens its session (resending its
/// committed prefix) on `unknown_session`; `overloaded` and `shutting_down` mean "decode
/// on the device for now".
///
/// ```cpp
/// if (e.code == specdec::hybrid::wire::error_code::unknown_session) reopen();
/// ```
enum class error_code : std::uint32_t {
  malformed = 1,            ///< the request's bytes did not decode (the connection is closed)
  unsupported_version = 2,  ///< `open_session.version` is not one the server speaks
  unknown_session = 3,      ///< no such session (never opened, expired, evicted, or closed)
  bad_sequence = 4,         ///< seq is neither the last one + 1 nor a replay of the last one
  invalid_request = 5,      ///< well-formed but not applicable (context overflow, too many drafts, ...)
  overloaded = 6,           ///< the server holds its maximum number of sessions
  shutting_down = 7,        ///< the server is draining
  internal = 8,             ///< the server failed
  unauthorized = 9,         ///< the API key is missing or not one the server knows
  rate_limited = 10,        ///< the key's request rate or session quota is exhausted for now
};

/// The name of an error code ("unknown_session", ...), or "unknown" for other values.
[[nodiscard]] inline const char* to_string(error_code c) noexcept {
  switch (c) {
    case error_code::malformed: return "malformed";
    case error_code::unsupported_version: return "unsupported_version";
    case error_code::unknown_session: return "unknown_session";
    case error_code::bad_sequence: return "bad_sequence";
    case error_code::invalid_request: return "invalid_request";
    case error_code::overloaded: return "overloaded";
    case error_code::shutting_down: return "shutting_down";
    case error_code::internal: return "internal";
    case error_code::unauthorized: return "unauthorized";
    case error_code::rate_limited: return "rate_limited";
  }
  return "unknown";
}

/// 128 bits from the server's CSPRNG; the only handle on a session.
using session_id = std::array<std::uint8_t, 16>;

/// Lower-case hex of a session id (32 characters), for logs and messages.
[[nodiscard]] inline std::string to_hex(const session_id& id) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string s;
  s.reserve(32);
  for (std::uint8_t b : id) {
    s.push_back(digits[b >> 4]);
    s.push_back(digits[b & 15]);
  }
  return s;
}

/// The draft's truncated distributions, one row per draft position, in a flat layout:
/// row r holds token ids in strictly increasing order and their probabilities.
///
/// ```cpp
/// specdec::hybrid::wire::sparse_rows q;
/// q.add_dense_row(q_row);                  // keeps the non-zero entries of a vocab-sized row
/// q.add_row(std::vector<specdec::token_id>{3, 9}, std::vector<float>{0.25f, 0.75f});
/// float p = q.prob(1, 9);                  // 0.75
/// ```
class sparse_rows {
 public:
  /// Appends a row; throws `invalid_argument` unless `ids` and `probs` have the same,
  /// non-zero size and the ids are non-negative and strictly increasing.
  void add_row(std::span<const token_id> ids, std::span<const float> probs) {
    if (ids.empty() || ids.size() != probs.size())
      throw invalid_argument("sparse_rows::add_row: " + std::to_string(ids.size()) + " ids and " +
                             std::to_string(probs.size()) + " probabilities; expected the same non-zero number");
    for (std::size_t i = 0; i < ids.size(); ++i)
      if (ids[i] < 0 || (i > 0 && ids[i] <= ids[i - 1]))
        throw invalid_argument("sparse_rows::add_row: token id " + std::to_string(ids[i]) + " at entry " +
                               std::to_string(i) + "; expected non-negative, strictly increasing ids");
    ids_.insert(ids_.end(), ids.begin(), ids.end());
    probs_.insert(probs_.end(), probs.begin(), probs.end());
    offsets_.push_back(ids_.size());
  }
  /// Appends the non-zero entries of a vocabulary-sized row (e.g. a `make_distribution`
  /// output). Throws `invalid_argument` if it has none.
  void add_dense_row(std::span<const float> dense) {
    const std::size_t start = ids_.size();
    for (std::size_t t = 0; t < dense.size(); ++t) {
      if (dense[t] != 0.0f) {
        ids_.push_back(static_cast<token_id>(t));
        probs_.push_back(dense[t]);
      }
    }
    if (ids_.size() == start)
      throw invalid_argument("sparse_rows::add_dense_row: the row of " + std::to_string(dense.size()) +
                             " entries is all zero; expected a distribution");
    offsets_.push_back(ids_.size());
  }
  void clear() noexcept {
    offsets_.assign(1, 0);
    ids_.clear();
    probs_.clear();
  }
  [[nodiscard]] std::size_t rows() const noexcept { return offsets_.size() - 1; }
  /// Entries over all rows.
  [[nodiscard]] std::size_t entries() const noexcept { return ids_.size(); }
  [[nodiscard]] std::span<const token_id> ids(std::size_t r) const {
    check_row(r);
    return {ids_.data() + offsets_[r], offsets_[r + 1] - offsets_[r]};
  }
  [[nodiscard]] std::span<const float> probs(std::size_t r) const {
    check_row(r);
    return {probs_.data() + offsets_[r], offsets_[r + 1] - offsets_[r]};
  }
  /// q_r(t): the probability of token t in row r (0 when t is not in the support).
  [[nodiscard]] float prob(std::size_t r, token_id t) const {
    const auto ids_r = ids(r);
    const auto it = std::lower_bound(ids_r.begin(), ids_r.end(), t);
    return it != ids_r.end() && *it == t ? probs(r)[static_cast<std::size_t>(it - ids_r.begin())] : 0.0f;
  }
  /// Writes row r as a dense distribution into `out` (zeros outside the support). Throws
  /// `token_out_of_range` if an id is >= out.size().
  void densify(std::size_t r, std::span<float> out) const {
    const auto ids_r = ids(r);
    check_token_ids(ids_r, out.size(), "sparse_rows::densify");
    std::fill(out.begin(), out.end(), 0.0f);
    const auto p = probs(r);
    for (std::size_t i = 0; i < ids_r.size(); ++i) out[static_cast<std::size_t>(ids_r[i])] = p[i];
  }
  friend bool operator==(const sparse_rows&, const sparse_rows&) = default;

 private:
  void check_row(std::size_t r) const {
    if (r >= rows())
      throw invalid_argument("sparse_rows: row " + std::to_string(r) + " of " + std::to_string(rows()) +
                             "; expected r < rows()");
  }
  std::vector<std::size_t> offsets_{0};
  std::vector<token_id> ids_;
  std::vector<float> probs_;
};

/// Device -> server: start a session holding `prefix` (the committed tokens so far) in the
/// server's cache, verifying with `params` and a random source seeded with `seed`, owned
/// by `api_key` (only that key may use it). `final_length` (version 3) is a hint: the
/// committed length at which the device ends this generation (its prompt plus its token
/// budget), 0 when it does not say; the server anticipates no request past it.
struct open_session {
  std::uint32_t version = protocol_version;
  std::string api_key{};
  sampling_params params{};
  std::uint64_t seed = 0;
  std::uint64_t final_length = 0;
  std::vector<token_id> prefix{};
  friend bool operator==(const open_session& a, const open_session& b) {
    return a.version == b.version && a.api_key == b.api_key && a.params.temperature == b.params.temperature &&
           a.params.top_k == b.params.top_k && a.params.top_p == b.params.top_p && a.seed == b.seed &&
           a.final_length == b.final_length && a.prefix == b.prefix;
  }
};

/// Server -> device: the session exists. `max_draft` is how many draft tokens the server
/// will verify in the first round (its dynamic speculation, possibly 0); `draft_limit` is
/// the most a verify request may ever carry.
struct session_opened {
  session_id id{};
  std::uint32_t vocab_size = 0;
  std::uint32_t context_length = 0;
  std::uint32_t max_draft = 0;
  std::uint32_t draft_limit = 0;
  friend bool operator==(const session_opened&, const session_opened&) = default;
};

/// Device -> server: attach this connection to an existing session (after a reconnect).
/// Answered by `session_opened` or by `error_reply{unknown_session}` (also when `api_key`
/// is not the key that opened the session).
struct resume_session {
  session_id id{};
  std::string api_key{};
  friend bool operator==(const resume_session&, const resume_session&) = default;
};

/// Device -> server: `committed` are the tokens the device committed since its previous
/// verify request (or since open), the previous verdict's accepted drafts and next token
/// included; `draft` is the block to verify after them. `q` is empty for greedy
/// verification, or holds one support row per draft token (the distribution it was drawn
/// from) for rejection sampling.
struct verify_request {
  std::uint64_t seq = 0;
  std::vector<token_id> committed{};
  std::vector<token_id> draft{};
  sparse_rows q{};
  friend bool operator==(const verify_request&, const verify_request&) = default;
};

/// Server -> device: the first `accepted` drafts of request `seq` survive and `next`
/// follows them; `max_draft` is what the server will verify in the next round.
/// `following` (sessions of version 4, only when the request had no drafts) are the
/// target's tokens after `next`, decoded by the session's own rule and random source
/// while the device's request was on its way: the device commits them as it commits
/// `next`, and its next request's delta includes them.
struct verdict {
  std::uint64_t seq = 0;
  std::uint32_t accepted = 0;
  token_id next = 0;
  std::uint32_t max_draft = 0;
  std::vector<token_id> following{};
  friend bool operator==(const verdict&, const verdict&) = default;
};

/// Server -> device: request `seq` (0 when not a verify request) failed.
struct error_reply {
  error_code code = error_code::internal;
  std::uint64_t seq = 0;
  std::string text{};
  friend bool operator==(const error_reply&, const error_reply&) = default;
};

/// Device -> server: end the session (its cache is freed) and the connection.
struct close_session {
  friend bool operator==(const close_session&, const close_session&) = default;
};

/// Any message of the protocol.
using message = std::variant<open_session, session_opened, resume_session, verify_request, verdict, error_reply,
                             close_session>;

/// What a decoder accepts. The server sets `vocab_size` to its model's; every count is
/// also bounded by the bytes actually present, so no limit can make a decoder allocate
/// more than a few times the frame's size.
///
/// ```cpp
/// specdec::hybrid::wire::limits lim{.vocab_size = 2048, .max_draft = 16};
/// ```
struct limits {
  std::size_t vocab_size = static_cast<std::size_t>(std::numeric_limits<token_id>::max());  ///< ids < this
  std::size_t max_frame_bytes = std::size_t{1} << 20;  ///< L of a frame (type + payload)
  std::size_t max_tokens = std::size_t{1} << 16;       ///< ids in a prefix or a committed delta
  std::size_t max_draft = 64;                          ///< draft ids in one verify request
  std::size_t max_following = 1024;                    ///< a verdict's following ids
  std::size_t max_support = std::size_t{1} << 16;      ///< entries of one support row
  std::size_t max_text = 1024;                         ///< bytes of an error text
  std::size_t max_key = 512;                           ///< bytes of an API key
};

/// The tolerance on a support row's probability sum.
inline constexpr double support_sum_tolerance = 1e-3;

namespace detail {

/// Appends the shortest LEB128 encoding of v.
inline void put_varint(std::vector<std::uint8_t>& out, std::uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<std::uint8_t>(v | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<std::uint8_t>(v));
}
[[nodiscard]] inline std::size_t varint_size(std::uint64_t v) noexcept {
  std::size_t n = 1;
  while (v >= 0x80) v >>= 7, ++n;
  return n;
}
inline void put_f32(std::vector<std::uint8_t>& out, float f) {
  const auto u = std::bit_cast<std::uint32_t>(f);
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::uint8_t>(u >> (8 * i)));
}

/// A bounds-checked cursor over one frame's body; every failure names the message, the
/// field and the byte offset.
class reader {
 public:
  reader(std::span<const std::uint8_t> bytes, const char* message) : b_(bytes), message_(message) {}

  [[noreturn]] void fail(const char* field, const std::string& what) const {
    throw protocol_error("wire: " + std::string(message_) + "." + field + " at byte " + std::to_string(pos_) +
                         ": " + what);
  }
  [[nodiscard]] std::size_t remaining() const noexcept { return b_.size() - pos_; }

  std::uint64_t varint(const char* field) {
    std::uint64_t v = 0;
    for (int i = 0; i < 10; ++i) {
      if (pos_ >= b_.size()) fail(field, "the frame ends inside a varint");
      const std::uint8_t byte = b_[pos_++];
      if (i == 9 && byte > 1) fail(field, "varint exceeds 64 bits");
      v |= static_cast<std::uint64_t>(byte & 0x7f) << (7 * i);
      if ((byte & 0x80) == 0) {
        if (byte == 0 && i > 0) fail(field, "varint is not in its shortest form");
        return v;
      }
    }
    fail(field, "varint longer than 10 bytes");
  }
  /// A varint that must be <= max (named `bound` in the message).
  std::uint64_t bounded(const char* field, std::uint64_t max, const char* bound) {
    const std::uint64_t v = varint(field);
    if (v > max) fail(field, std::to_string(v) + " exceeds " + bound + " = " + std::to_string(max));
    return v;
  }
  /// A count of elements that take at least `min_bytes` each: bounded by `max` and by the
  /// bytes left, so a reserve() on it is safe.
  std::size_t count(const char* field, std::size_t max, const char* bound, std::size_t min_bytes) {
    const std::uint64_t n = bounded(field, max, bound);
    if (n * min_bytes > remaining())
      fail(field, std::to_string(n) + " elements need at least " + std::to_string(n * min_bytes) +
                      " bytes, only " + std::to_string(remaining()) + " remain");
    return static_cast<std::size_t>(n);
  }
  token_id token(const char* field, std::size_t vocab) {
    return static_cast<token_id>(bounded(field, vocab - 1, "vocab_size - 1"));
  }
  float f32(const char* field) {
    if (remaining() < 4) fail(field, "the frame ends inside a float32");
    std::uint32_t u = 0;
    for (int i = 0; i < 4; ++i) u |= static_cast<std::uint32_t>(b_[pos_ + static_cast<std::size_t>(i)]) << (8 * i);
    pos_ += 4;
    return std::bit_cast<float>(u);
  }
  void raw(std::uint8_t* out, std::size_t n, const char* field) {
    if (remaining() < n) fail(field, "the frame ends after " + std::to_string(remaining()) + " of " +
                                         std::to_string(n) + " bytes");
    std::memcpy(out, b_.data() + pos_, n);
    pos_ += n;
  }
  void finish() const {
    if (remaining() != 0) fail("end", std::to_string(remaining()) + " trailing bytes after the message");
  }

 private:
  std::span<const std::uint8_t> b_;
  std::size_t pos_ = 0;
  const char* message_;
};

/// A length-prefixed byte string.
inline void put_bytes(std::vector<std::uint8_t>& out, std::string_view s) {
  put_varint(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}
inline std::string get_bytes(reader& r, const char* field, std::size_t max, const char* bound) {
  std::string s(r.count(field, max, bound, 1), '\0');
  r.raw(reinterpret_cast<std::uint8_t*>(s.data()), s.size(), field);
  return s;
}

inline void put_tokens(std::vector<std::uint8_t>& out, std::span<const token_id> ids) {
  put_varint(out, ids.size());
  for (token_id t : ids) put_varint(out, static_cast<std::uint32_t>(t));
}
inline std::vector<token_id> get_tokens(reader& r, const char* field, std::size_t max, const char* bound,
                                        std::size_t vocab) {
  const std::size_t n = r.count(field, max, bound, 1);
  std::vector<token_id> ids;
  ids.reserve(n);
  for (std::size_t i = 0; i < n; ++i) ids.push_back(r.token(field, vocab));
  return ids;
}

inline void check_sampling(reader& r, const sampling_params& p) {
  try {
    p.validate();
  } catch (const invalid_argument& e) {
    r.fail("params", e.what());
  }
}

/// The body (type byte + payload) of a message.
inline void put_body(std::vector<std::uint8_t>& out, const message& m) {
  out.push_back(static_cast<std::uint8_t>(m.index() + 1));
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, open_session>) {
          put_varint(out, x.version);
          if (x.version >= 2) {
            put_bytes(out, x.api_key);
          } else if (!x.api_key.empty()) {
            throw invalid_argument("wire::encode: open_session of version " + std::to_string(x.version) +
                                   " with an API key; version 1 has no key field, expected >= 2");
          }
          put_f32(out, x.params.temperature);
          if (x.params.top_k < 0)
            throw invalid_argument("wire::encode: open_session.params.top_k = " + std::to_string(x.params.top_k) +
                                   "; expected >= 0");
          put_varint(out, static_cast<std::uint64_t>(x.params.top_k));
          put_f32(out, x.params.top_p);
          put_varint(out, x.seed);
          if (x.version >= 3) {
            put_varint(out, x.final_length);
          } else if (x.final_length != 0) {
            throw invalid_argument("wire::encode: open_session of version " + std::to_string(x.version) +
                                   " with a final_length; versions before 3 have no such field");
          }
          put_tokens(out, x.prefix);
        } else if constexpr (std::is_same_v<T, session_opened>) {
          out.insert(out.end(), x.id.begin(), x.id.end());
          put_varint(out, x.vocab_size);
          put_varint(out, x.context_length);
          put_varint(out, x.max_draft);
          put_varint(out, x.draft_limit);
        } else if constexpr (std::is_same_v<T, resume_session>) {
          out.insert(out.end(), x.id.begin(), x.id.end());
          put_bytes(out, x.api_key);
        } else if constexpr (std::is_same_v<T, verify_request>) {
          if (x.q.rows() != 0 && x.q.rows() != x.draft.size())
            throw invalid_argument("wire::encode: verify_request.q has " + std::to_string(x.q.rows()) +
                                   " rows for " + std::to_string(x.draft.size()) + " draft tokens; expected 0 or " +
                                   std::to_string(x.draft.size()));
          put_varint(out, x.seq);
          put_tokens(out, x.committed);
          put_tokens(out, x.draft);
          put_varint(out, x.q.rows());
          for (std::size_t r = 0; r < x.q.rows(); ++r) {
            const auto ids = x.q.ids(r);
            put_varint(out, ids.size());
            for (std::size_t i = 0; i < ids.size(); ++i)
              put_varint(out, i == 0 ? static_cast<std::uint64_t>(ids[0])
                                     : static_cast<std::uint64_t>(ids[i] - ids[i - 1] - 1));
            for (float p : x.q.probs(r)) put_f32(out, p);
          }
        } else if constexpr (std::is_same_v<T, verdict>) {
          put_varint(out, x.seq);
          put_varint(out, x.accepted);
          put_varint(out, static_cast<std::uint32_t>(x.next));
          put_varint(out, x.max_draft);
          if (!x.following.empty()) put_tokens(out, x.following);
        } else if constexpr (std::is_same_v<T, error_reply>) {
          put_varint(out, static_cast<std::uint32_t>(x.code));
          put_varint(out, x.seq);
          put_bytes(out, x.text);
        } else {
          static_assert(std::is_same_v<T, close_session>);
        }
      },
      m);
}

inline std::uint32_t u32(reader& r, const char* field) {
  return static_cast<std::uint32_t>(r.bounded(field, std::numeric_limits<std::uint32_t>::max(), "2^32 - 1"));
}

inline verify_request get_verify(reader& r, const limits& lim) {
  verify_request v;
  v.seq = r.varint("seq");
  v.committed = get_tokens(r, "committed", lim.max_tokens, "max_tokens", lim.vocab_size);
  v.draft = get_tokens(r, "draft", lim.max_draft, "max_draft", lim.vocab_size);
  const std::uint64_t rows = r.varint("q.rows");
  if (rows != 0 && rows != v.draft.size())
    r.fail("q.rows", std::to_string(rows) + " support rows for " + std::to_string(v.draft.size()) +
                         " draft tokens; expected 0 or " + std::to_string(v.draft.size()));
  std::vector<token_id> ids;
  std::vector<float> probs;
  for (std::size_t row = 0; row < rows; ++row) {
    const std::size_t m = r.count("q.support", std::min(lim.max_support, lim.vocab_size),
                                  "min(max_support, vocab_size)", 5);
    if (m == 0) r.fail("q.support", "empty support row " + std::to_string(row) + "; expected >= 1 entry");
    ids.resize(m);
    probs.resize(m);
    std::uint64_t id = 0;
    for (std::size_t i = 0; i < m; ++i) {
      const std::uint64_t gap = r.varint("q.ids");
      id = i == 0 ? gap : id + 1 + gap;
      if (gap >= lim.vocab_size || id >= lim.vocab_size)
        r.fail("q.ids", "token id " + (gap >= lim.vocab_size ? std::string(">= ") : std::to_string(id) + " ") +
                            "out of range in row " + std::to_string(row) + "; expected < vocab_size = " +
                            std::to_string(lim.vocab_size));
      ids[i] = static_cast<token_id>(id);
    }
    double sum = 0.0;
    for (std::size_t i = 0; i < m; ++i) {
      probs[i] = r.f32("q.probs");
      if (!(probs[i] > 0.0f && probs[i] <= 1.0f))
        r.fail("q.probs", "probability " + std::to_string(probs[i]) + " of token " + std::to_string(ids[i]) +
                              " in row " + std::to_string(row) + "; expected in (0, 1]");
      sum += probs[i];
    }
    if (std::abs(sum - 1.0) > support_sum_tolerance)
      r.fail("q.probs", "row " + std::to_string(row) + " sums to " + std::to_string(sum) + "; expected 1 within " +
                            std::to_string(support_sum_tolerance));
    if (!std::binary_search(ids.begin(), ids.end(), v.draft[row]))
      r.fail("q.ids", "draft token " + std::to_string(v.draft[row]) + " at position " + std::to_string(row) +
                          " is not in its support row; expected the distribution it was drawn from");
    v.q.add_row(ids, probs);
  }
  return v;
}

}  // namespace detail

/// Appends the frame of `m` to `out`. Throws `invalid_argument` for a message the
/// decoder would reject structurally (negative top_k, q rows not matching the draft).
///
/// ```cpp
/// std::vector<std::uint8_t> buf;
/// specdec::hybrid::wire::encode_to(specdec::hybrid::wire::close_session{}, buf);  // {1, 7}
/// ```
inline void encode_to(const message& m, std::vector<std::uint8_t>& out) {
  thread_local std::vector<std::uint8_t> body;
  body.clear();
  detail::put_body(body, m);
  detail::put_varint(out, body.size());
  out.insert(out.end(), body.begin(), body.end());
}

/// The frame of `m`.
[[nodiscard]] inline std::vector<std::uint8_t> encode(const message& m) {
  std::vector<std::uint8_t> out;
  encode_to(m, out);
  return out;
}

/// Where a frame starts in a buffer: `header_bytes` of length prefix, then `body_bytes`
/// (type + payload).
struct frame_header {
  std::size_t header_bytes = 0;
  std::size_t body_bytes = 0;
  [[nodiscard]] std::size_t frame_bytes() const noexcept { return header_bytes + body_bytes; }
};

/// Reads the length prefix at the start of `buf`: nullopt if `buf` ends inside it (read
/// more bytes); throws `protocol_error` if it is malformed, 0 or above
/// `lim.max_frame_bytes`. The body may still be incomplete (compare `frame_bytes()`).
///
/// ```cpp
/// if (auto h = specdec::hybrid::wire::peek_frame(buf, lim); h && buf.size() >= h->frame_bytes()) { ... }
/// ```
[[nodiscard]] inline std::optional<frame_header> peek_frame(std::span<const std::uint8_t> buf, const limits& lim) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < buf.size() && i < 10; ++i)
    if ((buf[i] & 0x80) == 0) {
      n = i + 1;
      break;
    }
  if (n == 0 && buf.size() < 10) return std::nullopt;
  detail::reader r(buf.first(std::min<std::size_t>(buf.size(), 10)), "frame");
  const std::uint64_t len = r.varint("length");
  if (len == 0) r.fail("length", "0; expected at least the type byte");
  if (len > lim.max_frame_bytes)
    r.fail("length", std::to_string(len) + " exceeds max_frame_bytes = " + std::to_string(lim.max_frame_bytes));
  return frame_header{n, static_cast<std::size_t>(len)};
}

/// Decodes a frame's body (type byte + payload), checking every field against `lim`.
///
/// ```cpp
/// specdec::hybrid::wire::message m = specdec::hybrid::wire::decode_body(body, lim);
/// ```
[[nodiscard]] inline message decode_body(std::span<const std::uint8_t> body, const limits& lim) {
  if (body.empty()) throw protocol_error("wire: empty frame body; expected a message type byte");
  if (lim.vocab_size == 0) throw invalid_argument("wire::limits.vocab_size is 0; expected >= 1");
  const std::uint8_t type = body[0];
  const auto payload = body.subspan(1);
  switch (static_cast<message_type>(type)) {
    case message_type::open_session: {
      detail::reader r(payload, "open_session");
      open_session m;
      m.version = detail::u32(r, "version");
      if (m.version >= 2) m.api_key = detail::get_bytes(r, "api_key", lim.max_key, "max_key");
      m.params.temperature = r.f32("temperature");
      m.params.top_k = static_cast<int>(r.bounded("top_k", std::numeric_limits<int>::max(), "INT_MAX"));
      m.params.top_p = r.f32("top_p");
      detail::check_sampling(r, m.params);
      m.seed = r.varint("seed");
      if (m.version >= 3) m.final_length = r.varint("final_length");
      m.prefix = detail::get_tokens(r, "prefix", lim.max_tokens, "max_tokens", lim.vocab_size);
      r.finish();
      return m;
    }
    case message_type::session_opened: {
      detail::reader r(payload, "session_opened");
      session_opened m;
      r.raw(m.id.data(), m.id.size(), "id");
      m.vocab_size = detail::u32(r, "vocab_size");
      m.context_length = detail::u32(r, "context_length");
      m.max_draft = detail::u32(r, "max_draft");
      m.draft_limit = detail::u32(r, "draft_limit");
      if (m.max_draft > m.draft_limit)
        r.fail("max_draft", std::to_string(m.max_draft) + " exceeds draft_limit = " + std::to_string(m.draft_limit));
      r.finish();
      return m;
    }
    case message_type::resume_session: {
      detail::reader r(payload, "resume_session");
      resume_session m;
      r.raw(m.id.data(), m.id.size(), "id");
      m.api_key = detail::get_bytes(r, "api_key", lim.max_key, "max_key");
      r.finish();
      return m;
    }
    case message_type::verify_request: {
      detail::reader r(payload, "verify_request");
      verify_request m = detail::get_verify(r, lim);
      r.finish();
      return m;
    }
    case message_type::verdict: {
      detail::reader r(payload, "verdict");
      verdict m;
      m.seq = r.varint("seq");
      m.accepted = static_cast<std::uint32_t>(r.bounded("accepted", lim.max_draft, "max_draft"));
      m.next = r.token("next", lim.vocab_size);
      m.max_draft = detail::u32(r, "max_draft");
      if (r.remaining() != 0) {  // present only when non-empty: the encoder writes no m = 0
        m.following = detail::get_tokens(r, "following", lim.max_following, "max_following", lim.vocab_size);
        if (m.following.empty()) r.fail("following", "0 tokens; an empty list is not written");
      }
      r.finish();
      return m;
    }
    case message_type::error_reply: {
      detail::reader r(payload, "error_reply");
      error_reply m;
      m.code = static_cast<error_code>(detail::u32(r, "code"));
      m.seq = r.varint("seq");
      m.text = detail::get_bytes(r, "text", lim.max_text, "max_text");
      r.finish();
      return m;
    }
    case message_type::close_session: {
      detail::reader r(payload, "close_session");
      r.finish();
      return close_session{};
    }
  }
  throw protocol_error("wire: unknown message type " + std::to_string(type) + "; expected 1..7");
}

/// Decodes exactly one whole frame (length prefix included, nothing after it).
///
/// ```cpp
/// auto m = specdec::hybrid::wire::decode_frame(bytes, {.vocab_size = 2048});
/// ```
[[nodiscard]] inline message decode_frame(std::span<const std::uint8_t> frame, const limits& lim) {
  const auto h = peek_frame(frame, lim);
  if (!h) throw protocol_error("wire: the frame of " + std::to_string(frame.size()) + " bytes ends inside its length");
  if (frame.size() != h->frame_bytes())
    throw protocol_error("wire: the frame's length prefix says " + std::to_string(h->frame_bytes()) +
                         " bytes, the buffer holds " + std::to_string(frame.size()));
  return decode_body(frame.subspan(h->header_bytes), lim);
}

/// The message type's name ("verify_request", ...).
[[nodiscard]] inline const char* name_of(const message& m) noexcept {
  static constexpr const char* names[] = {"open_session", "session_opened", "resume_session", "verify_request",
                                          "verdict",      "error_reply",    "close_session"};
  return names[m.index()];
}

}  // namespace specdec::hybrid::wire
