// Tests for include/specdec/hybrid/wire.hpp: every message round-trips through
// encode/decode with the byte counts docs/hybrid.md states, the decoder accepts exactly the
// encoder's output (canonical varints, no trailing bytes) and rejects each kind of
// malformed input with a protocol_error naming the field, and no truncation or mutation of
// a valid frame crashes it (the libFuzzer harness tests/fuzz/fuzz_wire.cpp explores more).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "specdec/hybrid/wire.hpp"

namespace {
namespace wire = specdec::hybrid::wire;
using bytes = std::vector<std::uint8_t>;
using specdec::token_id;

const wire::limits lim{.vocab_size = 2048, .max_tokens = 512, .max_draft = 16, .max_support = 2048};

wire::verify_request sampled_request() {
  wire::verify_request v{.seq = 300, .committed = {5, 1000}, .draft = {7, 2047}};
  v.q.add_row(std::vector<token_id>{3, 7, 130}, std::vector<float>{0.25f, 0.5f, 0.25f});
  v.q.add_row(std::vector<token_id>{2047}, std::vector<float>{1.0f});
  return v;
}

std::vector<wire::message> samples() {
  wire::session_id id{};
  for (std::size_t i = 0; i < id.size(); ++i) id[i] = static_cast<std::uint8_t>(17 * i + 3);
  return {
      wire::open_session{.api_key = "sk-test-0123456789abcdef",
                         .params = {.temperature = 0.8f, .top_k = 40, .top_p = 0.9f}, .seed = 1ull << 40,
                         .final_length = 68, .prefix = {1, 403, 2047, 0}},
      wire::open_session{.version = 2, .api_key = "k", .prefix = {1, 2}},  // before the final length
      wire::open_session{.version = 1, .prefix = {1, 2}},  // before keys: no key field
      wire::session_opened{.id = id, .vocab_size = 2048, .context_length = 256, .max_draft = 6, .draft_limit = 16},
      wire::resume_session{.id = id, .api_key = "sk-test-0123456789abcdef"},
      wire::verify_request{.seq = 1, .committed = {1, 403}, .draft = {88, 12}},
      sampled_request(),
      wire::verdict{.seq = 300, .accepted = 2, .next = 1999, .max_draft = 0},
      wire::verdict{.seq = 301, .next = 5, .following = {6, 2047, 0}},  // run ahead (version 4 sessions)
      wire::error_reply{.code = wire::error_code::unknown_session, .seq = 9, .text = "no such session"},
      wire::close_session{},
  };
}

TEST(wire, every_message_round_trips) {
  for (const auto& m : samples()) {
    const bytes f = wire::encode(m);
    const wire::message back = wire::decode_frame(f, lim);
    EXPECT_EQ(back, m) << wire::name_of(m);
    EXPECT_EQ(wire::encode(back), f) << wire::name_of(m);
  }
}

// The byte counts of docs/hybrid.md's protocol table, computed by hand.
TEST(wire, byte_counts) {
  // len 1 + type 1 + seq 1 + n 1 + ids (1: 1 byte, 403: 2 bytes) + k 1 + 88, 12 + rows 1
  EXPECT_EQ(wire::encode(wire::verify_request{.seq = 1, .committed = {1, 403}, .draft = {88, 12}}).size(), 11u);
  // the steady state of greedy split decoding: 3 committed, 4 drafts, ids < 2048, seq < 128
  EXPECT_EQ(wire::encode(wire::verify_request{.seq = 5, .committed = {300, 301, 302},
                                              .draft = {400, 401, 402, 403}})
                .size(),
            1u + 1 + 1 + 1 + 6 + 1 + 8 + 1);
  // verdict: len, type, seq, accepted, next (2 bytes), max_draft
  EXPECT_EQ(wire::encode(wire::verdict{.seq = 5, .accepted = 3, .next = 1000, .max_draft = 4}).size(), 7u);
  // ... then, only when there are following tokens, m and the ids (1000: 2 bytes, 7: 1)
  EXPECT_EQ(wire::encode(wire::verdict{.seq = 5, .next = 1000, .following = {1000, 7}}).size(), 7u + 1 + 3);
  // session_opened: len, type, 16-byte id, vocab 2048 (2), context 256 (2), 1, 1
  EXPECT_EQ(wire::encode(wire::session_opened{.vocab_size = 2048, .context_length = 256, .max_draft = 4,
                                              .draft_limit = 16})
                .size(),
            24u);
  // resume_session: len, type, 16-byte id, key length 1 + key bytes
  EXPECT_EQ(wire::encode(wire::resume_session{}).size(), 19u);
  EXPECT_EQ(wire::encode(wire::resume_session{.api_key = std::string(24, 'k')}).size(), 19u + 24);
  EXPECT_EQ(wire::encode(wire::close_session{}), (bytes{1, 7}));
  // open_session: len, type, version, key length 1 + key, temperature 4, top_k 1, top_p 4, seed 1,
  // final length 1 (0, or 68: a 4-token prompt and 64 new tokens), n 1, ids
  EXPECT_EQ(wire::encode(wire::open_session{.prefix = {1, 403}}).size(), 1u + 1 + 1 + 1 + 4 + 1 + 4 + 1 + 1 + 1 + 3);
  EXPECT_EQ(wire::encode(wire::open_session{.final_length = 68, .prefix = {1, 403}}).size(),
            1u + 1 + 1 + 1 + 4 + 1 + 4 + 1 + 1 + 1 + 3);
  EXPECT_EQ(wire::encode(wire::open_session{.api_key = std::string(24, 'k'), .prefix = {1, 403}}).size(),
            1u + 1 + 1 + 1 + 24 + 4 + 1 + 4 + 1 + 1 + 1 + 3);
  // version 2 (before the final length) has no final length field, and cannot carry one
  EXPECT_EQ(wire::encode(wire::open_session{.version = 2, .prefix = {1, 403}}).size(),
            1u + 1 + 1 + 1 + 4 + 1 + 4 + 1 + 1 + 3);
  EXPECT_THROW((void)wire::encode(wire::open_session{.version = 2, .final_length = 9, .prefix = {1}}),
               specdec::invalid_argument);
  // version 1 (before keys) has no key field, and cannot carry one
  EXPECT_EQ(wire::encode(wire::open_session{.version = 1, .prefix = {1, 403}}).size(), 1u + 1 + 1 + 4 + 1 + 4 + 1 + 1 + 3);
  EXPECT_THROW((void)wire::encode(wire::open_session{.version = 1, .api_key = "k", .prefix = {1}}),
               specdec::invalid_argument);
  // a support row: m, ids gap-coded (3: 1 byte, gap 3: 1, gap 122: 1), 3 x 4 bytes
  const bytes with_q = wire::encode(sampled_request());
  wire::verify_request no_q = sampled_request();
  no_q.q.clear();
  EXPECT_EQ(with_q.size() - wire::encode(no_q).size(), (1u + 3 + 12) + (1u + 2 + 4));
}

TEST(wire, varints_are_leb128_shortest) {
  bytes out;
  wire::detail::put_varint(out, 0);
  wire::detail::put_varint(out, 127);
  wire::detail::put_varint(out, 128);
  wire::detail::put_varint(out, std::numeric_limits<std::uint64_t>::max());
  EXPECT_EQ(out.size(), 1u + 1 + 2 + 10);
  EXPECT_EQ(out[2], 0x80);
  EXPECT_EQ(out[3], 0x01);
  wire::detail::reader r(out, "test");
  EXPECT_EQ(r.varint("a"), 0u);
  EXPECT_EQ(r.varint("b"), 127u);
  EXPECT_EQ(r.varint("c"), 128u);
  EXPECT_EQ(r.varint("d"), std::numeric_limits<std::uint64_t>::max());
  r.finish();
}

// Decoding must throw a protocol_error whose message contains `field`.
void expect_rejected(const bytes& frame, const std::string& field, const wire::limits& l = lim) {
  try {
    (void)wire::decode_frame(frame, l);
    ADD_FAILURE() << "accepted a malformed frame; expected an error about " << field;
  } catch (const specdec::hybrid::protocol_error& e) {
    EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
  }
}

// A frame with a hand-built body: type byte + payload.
bytes frame_of(std::uint8_t type, const bytes& payload) {
  bytes f;
  wire::detail::put_varint(f, payload.size() + 1);
  f.push_back(type);
  f.insert(f.end(), payload.begin(), payload.end());
  return f;
}

TEST(wire, rejects_malformed_framing) {
  expect_rejected({}, "ends inside its length");
  expect_rejected({0}, "length");                          // zero length
  expect_rejected({2, 7}, "says 3 bytes");                 // body shorter than announced
  expect_rejected({1, 7, 0}, "says 2 bytes");              // trailing byte after the frame
  expect_rejected({1, 99}, "unknown message type 99");
  expect_rejected({1, 0}, "unknown message type 0");
  expect_rejected({0x80, 0x00, 7}, "shortest form");       // overlong length prefix
  expect_rejected(bytes(11, 0xff), "varint");              // never-ending varint
  expect_rejected({0x81, 0x80, 0x80, 0x01}, "max_frame_bytes");  // 2 MiB frame
  expect_rejected(frame_of(7, {0}), "trailing bytes");     // close_session with a payload
  EXPECT_FALSE(wire::peek_frame(bytes{0x81}, lim).has_value());  // incomplete: read more
  const auto h = wire::peek_frame(bytes{0x81, 0x01}, lim);
  ASSERT_TRUE(h.has_value());
  EXPECT_EQ(h->header_bytes, 2u);
  EXPECT_EQ(h->body_bytes, 129u);
}

TEST(wire, rejects_bad_fields) {
  // verify_request: seq 1, then counts and ids
  expect_rejected(frame_of(4, {1, 1, 0x80, 0x10, 0, 0}), "committed");  // id 2048 >= vocab
  expect_rejected(frame_of(4, {1, 100, 1, 0}), "only 2 remain");          // count beyond the bytes present
  expect_rejected(frame_of(4, {1, 0, 17, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0}), "max_draft");
  expect_rejected(frame_of(4, {1, 0, 1, 5, 2}), "q.rows");                // 2 rows for 1 draft
  expect_rejected(frame_of(4, {1, 0, 1, 5}), "q.rows");                   // ends before the row count
  expect_rejected(frame_of(4, {1, 0, 1, 5, 0, 9}), "trailing");
  // open_session with NaN temperature, top_p 0, unsupported top_k
  const auto open_with = [](float t, std::uint64_t k, float p) {
    bytes b{1};
    wire::detail::put_f32(b, t);
    wire::detail::put_varint(b, k);
    wire::detail::put_f32(b, p);
    b.push_back(0);  // seed
    b.push_back(1);  // one prefix token
    b.push_back(1);
    return frame_of(1, b);
  };
  EXPECT_NO_THROW((void)wire::decode_frame(open_with(0.7f, 3, 0.9f), lim));
  expect_rejected(open_with(std::nanf(""), 0, 1.0f), "temperature");
  expect_rejected(open_with(1.0f, 0, 0.0f), "top_p");
  expect_rejected(open_with(-1.0f, 0, 1.0f), "temperature");
  expect_rejected(open_with(1.0f, 1ull << 40, 1.0f), "top_k");
  // version 3: the final length follows the seed
  bytes v3{3, 0};  // version 3, no key
  wire::detail::put_f32(v3, 1.0f);
  v3.push_back(0);
  wire::detail::put_f32(v3, 1.0f);
  v3.push_back(0);  // seed, then the frame ends
  expect_rejected(frame_of(1, v3), "final_length");
  v3.insert(v3.end(), {68, 1, 1});  // final length 68, one prefix token
  EXPECT_EQ(std::get<wire::open_session>(wire::decode_frame(frame_of(1, v3), lim)).final_length, 68u);
  // error text longer than max_text
  bytes e{5, 0};
  wire::detail::put_varint(e, 2000);
  e.resize(e.size() + 2000, 'x');
  expect_rejected(frame_of(6, e), "max_text");
  // an API key longer than max_key (open_session of version 2, resume_session)
  bytes k{2};
  wire::detail::put_varint(k, 600);
  k.resize(k.size() + 600, 'k');
  expect_rejected(frame_of(1, k), "max_key");
  bytes r(16, 0);
  wire::detail::put_varint(r, 600);
  r.resize(r.size() + 600, 'k');
  expect_rejected(frame_of(3, r), "max_key");
  // session_opened announcing more than its limit
  bytes so(16, 0);
  so.insert(so.end(), {10, 10, 5, 4});
  expect_rejected(frame_of(2, so), "draft_limit");
  // verdict accepting more than max_draft
  expect_rejected(frame_of(5, {1, 17, 3, 0}), "accepted");
  // following tokens: an explicit empty list (the encoder writes none), an id past the
  // vocabulary, more than max_following, a count beyond the bytes present
  EXPECT_EQ(std::get<wire::verdict>(wire::decode_frame(frame_of(5, {1, 0, 3, 0, 2, 4, 5}), lim)).following,
            (std::vector<token_id>{4, 5}));
  expect_rejected(frame_of(5, {1, 0, 3, 0, 0}), "following");
  expect_rejected(frame_of(5, {1, 0, 3, 0, 1, 0x80, 0x10}), "following");
  bytes many{1, 0, 3, 0};
  wire::detail::put_varint(many, 1025);
  many.resize(many.size() + 1025, 1);
  expect_rejected(frame_of(5, many), "max_following");
  expect_rejected(frame_of(5, {1, 0, 3, 0, 9, 1}), "following");
}

// A verify_request whose one draft token 7 has the support row built by `row`.
bytes with_row(const std::vector<token_id>& ids, const std::vector<float>& probs, bool gap_coded = true) {
  bytes b{1, 0, 1, 7, 1};  // seq 1, no committed, draft {7}, one row
  wire::detail::put_varint(b, ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i)
    wire::detail::put_varint(b, static_cast<std::uint64_t>(i == 0 || !gap_coded ? ids[i] : ids[i] - ids[i - 1] - 1));
  for (float p : probs) wire::detail::put_f32(b, p);
  return frame_of(4, b);
}

TEST(wire, rejects_bad_support_rows) {
  EXPECT_NO_THROW((void)wire::decode_frame(with_row({3, 7}, {0.5f, 0.5f}), lim));
  expect_rejected(with_row({}, {}), "empty support");
  expect_rejected(with_row({3, 9}, {0.5f, 0.5f}), "not in its support");
  expect_rejected(with_row({7}, {0.5f}), "sums to");
  expect_rejected(with_row({3, 7}, {0.0f, 1.0f}), "(0, 1]");
  expect_rejected(with_row({3, 7}, {-0.5f, 1.5f}), "(0, 1]");
  expect_rejected(with_row({3, 7}, {std::nanf(""), 1.0f}), "(0, 1]");
  EXPECT_NO_THROW((void)wire::decode_frame(with_row({7, 2047}, {0.5f, 0.5f}), lim));  // gap 2039
  expect_rejected(with_row({7, 2048}, {0.5f, 0.5f}), "out of range");  // gap 2040: id 2048
  expect_rejected(with_row({7, 5000}, {0.5f, 0.5f}, false), "out of range");
  // An encoder refuses q rows that do not match the draft.
  wire::verify_request v{.seq = 1, .draft = {1, 2}};
  v.q.add_row(std::vector<token_id>{1}, std::vector<float>{1.0f});
  EXPECT_THROW((void)wire::encode(v), specdec::invalid_argument);
}

TEST(wire, sparse_rows) {
  wire::sparse_rows q;
  std::vector<float> dense(10, 0.0f);
  dense[2] = 0.25f;
  dense[9] = 0.75f;
  q.add_dense_row(dense);
  EXPECT_EQ(q.rows(), 1u);
  EXPECT_EQ(q.entries(), 2u);
  EXPECT_EQ(q.prob(0, 9), 0.75f);
  EXPECT_EQ(q.prob(0, 3), 0.0f);
  std::vector<float> back(10, 1.0f);
  q.densify(0, back);
  EXPECT_EQ(back, dense);
  std::vector<float> small(5);
  EXPECT_THROW(q.densify(0, small), specdec::token_out_of_range);
  EXPECT_THROW(q.add_dense_row(std::vector<float>(4, 0.0f)), specdec::invalid_argument);
  EXPECT_THROW(q.add_row(std::vector<token_id>{3, 3}, std::vector<float>{0.5f, 0.5f}), specdec::invalid_argument);
  EXPECT_THROW((void)q.ids(1), specdec::invalid_argument);
}

// Every prefix of every valid frame is incomplete or rejected, never accepted and never a
// crash; random byte mutations either decode to a message that re-encodes to the same
// bytes, or are rejected with a protocol_error.
TEST(wire, truncations_and_mutations_never_crash) {
  std::mt19937_64 rng(7);
  std::size_t accepted = 0, rejected = 0;
  for (const auto& m : samples()) {
    const bytes f = wire::encode(m);
    for (std::size_t n = 0; n < f.size(); ++n) {
      const bytes cut(f.begin(), f.begin() + static_cast<std::ptrdiff_t>(n));
      EXPECT_THROW((void)wire::decode_frame(cut, lim), specdec::hybrid::protocol_error);
    }
    for (int trial = 0; trial < 2000; ++trial) {
      bytes g = f;
      const int flips = 1 + static_cast<int>(rng() % 3);
      for (int i = 0; i < flips; ++i) g[rng() % g.size()] = static_cast<std::uint8_t>(rng());
      try {
        const wire::message back = wire::decode_frame(g, lim);
        EXPECT_EQ(wire::encode(back), g);
        ++accepted;
      } catch (const specdec::hybrid::protocol_error&) {
        ++rejected;
      }
    }
  }
  EXPECT_GT(accepted, 0u);  // mutations of ids / seq / floats are often still valid
  EXPECT_GT(rejected, 0u);
}

}  // namespace
