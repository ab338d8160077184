#pragma once
/// \file tokenizer.hpp
/// The llama2.c `tokenizer.bin` byte-pair-encoding tokenizer (SentencePiece BPE vocabulary
/// with byte fallback), for the reference CPU backend. Needs no Eigen.
///
/// File format (little-endian): uint32 `max_token_length`, then for each token id in order
/// float32 score, uint32 byte length, that many bytes of piece text. The number of entries
/// is not stored: it is the model's `vocab_size`, which the constructor takes.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <optional>
#include <queue>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include "specdec/backend/cpu/detail/linkage.hpp"
#include "specdec/error.hpp"
#include "specdec/fwd.hpp"
#include "specdec/token.hpp"

namespace specdec::cpu {

/// A llama2.c / SentencePiece-BPE tokenizer loaded from a `tokenizer.bin` file.
///
/// Vocabulary layout (checked on load): id 0 `<unk>`, 1 BOS, 2 EOS, ids 3..258 the
/// byte-fallback pieces `<0x00>`..`<0xFF>`, then the ordinary pieces. A leading space in a
/// piece stands for SentencePiece's word boundary `▁`.
///
/// Encoding prepends a space to non-empty text (the "dummy prefix"), maps each UTF-8
/// character to its piece id (or, if it has none, to its bytes as `<0xXX>` ids, byte + 3),
/// then repeatedly merges the adjacent pair whose concatenation is an ordinary piece with
/// the highest score (ties: the leftmost pair) until no merge applies. The merge loop uses
/// a priority queue over a linked list of symbols, O(n log n) in the text length, and gives
/// exactly the result of llama2.c's quadratic loop.
///
/// Decoding turns `<0xXX>` pieces into the raw byte, BOS and EOS into nothing, and drops the
/// leading space of the text right after a BOS, so `decode(encode(text)) == text` for any
/// byte string (with the default `add_bos = true`).
///
/// ```cpp
/// specdec::cpu::tokenizer tok("models/kjv2k-tokenizer.bin", 2048);
/// std::vector<specdec::token_id> ids = tok.encode("In the beginning");  // {1, 1043, 261, ...}
/// std::string text = tok.decode(ids);                                  // "In the beginning"
/// std::string piece = tok.decode_piece(ids[0], ids[1]);                 // "In"
/// ```
class tokenizer {
 public:
  /// Id of the first byte-fallback piece `<0x00>`; byte b is id `b + byte_fallback_offset`.
  static constexpr token_id byte_fallback_offset = 3;
  /// Smallest vocabulary with the layout above: 3 special pieces + 256 byte pieces.
  static constexpr std::size_t min_vocab_size = 259;
  /// Largest `max_token_length` accepted from a file header; anything above is corrupt.
  static constexpr std::uint32_t max_token_length_limit = 1u << 16;

  /// Loads `path`, which must hold exactly `vocab_size` entries (the model's vocabulary).
  ///
  /// Throws `invalid_argument` if `vocab_size < min_vocab_size`; `tokenizer_error` if the
  /// file is missing or unreadable, ends before `vocab_size` entries, has a piece longer
  /// than its `max_token_length` (or an absurd `max_token_length`), a non-finite score, or
  /// ids 3..258 that are not the byte-fallback pieces; `vocabulary_mismatch` if bytes remain
  /// after `vocab_size` entries (the file belongs to a larger vocabulary).
  ///
  /// ```cpp
  /// specdec::cpu::tokenizer tok("models/tok512.bin", 512);
  /// ```
  tokenizer(const std::filesystem::path& path, std::size_t vocab_size) {
    check_vocab_size(path.string(), vocab_size);
    const std::vector<char> bytes = read_file(path, vocab_size);
    load(path.string(), std::string_view(bytes.data(), bytes.size()), vocab_size);
  }

  /// The tokenizer held in memory in `bytes` (a whole tokenizer.bin), validated exactly
  /// as the file constructor validates a file; errors name `name` in place of a path.
  ///
  /// ```cpp
  /// std::ifstream in("models/kjv2k-tokenizer.bin", std::ios::binary);  // or any other source
  /// std::string bytes(std::istreambuf_iterator<char>(in), {});
  /// auto tok = specdec::cpu::tokenizer::from_bytes(bytes, 2048, "kjv2k (in memory)");
  /// ```
  [[nodiscard]] static tokenizer from_bytes(std::string_view bytes, std::size_t vocab_size, const std::string& name) {
    check_vocab_size(name, vocab_size);
    tokenizer t;
    t.load(name, bytes, vocab_size);
    return t;
  }

  /// Token ids of `text`, optionally preceded by BOS and followed by EOS.
  ///
  /// ```cpp
  /// auto ids = tok.encode("And God said", /*add_bos=*/false);  // no BOS in front
  /// ```
  [[nodiscard]] std::vector<token_id> encode(std::string_view text, bool add_bos = true,
                                             bool add_eos = false) const {
    std::vector<token_id> out;
    out.reserve(text.size() + 3);
    if (add_bos) out.push_back(bos_token);
    if (!text.empty()) {
      std::string buffer;
      buffer.reserve(text.size() + 1);
      buffer.push_back(' ');  // the dummy prefix
      buffer.append(text);
      encode_into(buffer, out);
    }
    if (add_eos) out.push_back(eos_token);
    return out;
  }

  /// The text of `tok` when it follows `prev`: the piece text, a raw byte for `<0xXX>`,
  /// nothing for BOS and EOS, and without its leading space when `prev` is BOS. `prev` may
  /// be any value (e.g. -1 for "no previous token"); `tok` must lie in [0, vocab_size),
  /// otherwise `token_out_of_range`. Concatenating `decode_piece` over a sequence gives
  /// `decode` of it, so it suits streaming output.
  ///
  /// ```cpp
  /// std::cout << tok.decode_piece(prev, next) << std::flush;
  /// ```
  [[nodiscard]] std::string decode_piece(token_id prev, token_id tok) const {
    check_token_ids(std::span<const token_id>(&tok, 1), pieces_.size(),
                    "specdec::cpu::tokenizer::decode_piece");
    std::string out;
    append_piece(out, prev, tok);
    return out;
  }

  /// The text of a whole sequence (see `decode_piece`); the first id has no predecessor.
  /// Throws `token_out_of_range` for an id outside [0, vocab_size).
  ///
  /// ```cpp
  /// std::string text = tok.decode(tok.encode("The LORD is my shepherd"));
  /// ```
  [[nodiscard]] std::string decode(std::span<const token_id> ids) const {
    check_token_ids(ids, pieces_.size(), "specdec::cpu::tokenizer::decode");
    std::string out;
    token_id prev = -1;
    for (token_id t : ids) {
      append_piece(out, prev, t);
      prev = t;
    }
    return out;
  }

  /// Number of token ids (the model's vocabulary size).
  [[nodiscard]] std::size_t vocab_size() const noexcept { return pieces_.size(); }

  /// The `max_token_length` of the file header: no piece is longer, in bytes.
  [[nodiscard]] std::size_t max_token_length() const noexcept { return max_token_length_; }

  /// The stored text of `id` (e.g. `" the"`, `"<0x0A>"`, `"\n<s>\n"`); `token_out_of_range`
  /// outside [0, vocab_size).
  [[nodiscard]] const std::string& piece(token_id id) const {
    check_token_ids(std::span<const token_id>(&id, 1), pieces_.size(),
                    "specdec::cpu::tokenizer::piece");
    return pieces_[static_cast<std::size_t>(id)];
  }

  /// The merge score of `id` (higher merges first); `token_out_of_range` outside
  /// [0, vocab_size).
  [[nodiscard]] float score(token_id id) const {
    check_token_ids(std::span<const token_id>(&id, 1), pieces_.size(),
                    "specdec::cpu::tokenizer::score");
    return scores_[static_cast<std::size_t>(id)];
  }

  /// The id of the ordinary piece whose text is `text`, if any. Special and byte-fallback
  /// pieces are never found: text cannot spell `<unk>`, BOS, EOS or `<0xXX>`.
  [[nodiscard]] std::optional<token_id> find(std::string_view text) const {
    if (auto it = lookup_.find(text); it != lookup_.end()) return it->second;
    return std::nullopt;
  }

 private:
  struct string_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept {
      return std::hash<std::string_view>{}(s);
    }
  };

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  // Ordinary pieces only (ids >= min_vocab_size); heterogeneous lookup by string_view, so
  // encoding allocates nothing per lookup.
  std::unordered_map<std::string, token_id, string_hash, std::equal_to<>> lookup_;
  std::size_t max_token_length_ = 0;

  tokenizer() = default;

  static std::string where(const std::string& path) { return "specdec::cpu::tokenizer: '" + path + "': "; }
  static std::string where(const std::filesystem::path& path) { return where(path.string()); }

  static void check_vocab_size(const std::string& path, std::size_t vocab_size);

  /// The bytes of the regular file `path`, read only after its size was checked against
  /// the most a tokenizer of `vocab_size` entries can take: a special file (/dev/zero, a
  /// pipe) or an oversized file is rejected before anything is read.
  static std::vector<char> read_file(const std::filesystem::path& path, std::size_t vocab_size);

  template <class T>
  static T read_le(const char* p) noexcept {
    static_assert(sizeof(T) == 4);
    std::uint32_t u = 0;
    for (int i = 3; i >= 0; --i) u = (u << 8) | static_cast<unsigned char>(p[i]);
    return std::bit_cast<T>(u);
  }

  static std::string byte_piece(unsigned b) {
    static constexpr char hex[] = "0123456789ABCDEF";
    return std::string{'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
  }

  void load(const std::string& path, std::string_view bytes, std::size_t vocab_size);

  /// Bytes in the UTF-8 character starting at `s[i]`: the lead byte's length if the
  /// continuation bytes are there, else 1 (a stray byte, encoded through byte fallback).
  static std::size_t utf8_char_length(std::string_view s, std::size_t i) noexcept {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = 1;
    if (c >= 0xF0 && c < 0xF8) {
      n = 4;
    } else if (c >= 0xE0) {
      n = c < 0xF0 ? 3 : 1;
    } else if (c >= 0xC0) {
      n = 2;
    }
    if (i + n > s.size()) return 1;
    for (std::size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 1;
    }
    return n;
  }

  struct symbol {
    std::uint32_t start;
    std::uint32_t len;  // 0 once merged into its left neighbour
    std::int32_t prev;
    std::int32_t next;
    token_id id;  // -1: a character without a piece, emitted as byte-fallback ids
  };
  struct candidate {
    float score;
    std::uint32_t start;  // of the left symbol: orders ties leftmost-first
    std::int32_t left;
    std::int32_t right;
    std::uint32_t len;  // combined length when queued, to detect stale entries
    token_id id;
  };
  struct candidate_order {
    bool operator()(const candidate& a, const candidate& b) const noexcept {
      // priority_queue pops the largest: highest score, then smallest start.
      if (a.score != b.score) return a.score < b.score;
      return a.start > b.start;
    }
  };

  void encode_into(std::string_view s, std::vector<token_id>& out) const;

  /// Appends the text of `tok` (already range-checked) after `prev`.
  void append_piece(std::string& out, token_id prev, token_id tok) const {
    if (tok == bos_token || tok == eos_token) return;
    const std::size_t before = out.size();
    if (tok >= byte_fallback_offset && tok < static_cast<token_id>(min_vocab_size)) {
      out.push_back(static_cast<char>(tok - byte_fallback_offset));
    } else {
      out += pieces_[static_cast<std::size_t>(tok)];
    }
    if (prev == bos_token && out.size() > before && out[before] == ' ') {
      out.erase(before, 1);
    }
  }
};

// The parsing and encoding functions, compiled in every translation unit or once
// (detail/linkage.hpp).
#if SPECDEC_CPU_DEFINITIONS
SPECDEC_CPU_FUNC void tokenizer::check_vocab_size(const std::string& path, std::size_t vocab_size) {
  if (vocab_size < min_vocab_size) {
    throw invalid_argument(where(path) + "vocab_size = " + std::to_string(vocab_size) +
                           " is too small; expected at least " +
                           std::to_string(min_vocab_size) +
                           " (<unk>, BOS, EOS and the 256 byte-fallback pieces)");
  }
  if (vocab_size > static_cast<std::size_t>(std::numeric_limits<token_id>::max())) {
    throw invalid_argument(where(path) + "vocab_size = " + std::to_string(vocab_size) +
                           " does not fit token_id; expected at most " +
                           std::to_string(std::numeric_limits<token_id>::max()));
  }
}

SPECDEC_CPU_FUNC std::vector<char> tokenizer::read_file(const std::filesystem::path& path, std::size_t vocab_size) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    throw tokenizer_error(where(path) +
                          "is a directory; expected a llama2.c tokenizer.bin file");
  }
  // Checked before opening: opening a pipe would block until a writer comes.
  if (std::filesystem::exists(path, ec) && !std::filesystem::is_regular_file(path, ec)) {
    throw tokenizer_error(where(path) + "is not a regular file (a device, pipe or socket); expected a "
                          "llama2.c tokenizer.bin file");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw tokenizer_error(where(path) +
                          "cannot open the file; expected a readable llama2.c tokenizer.bin");
  }
  const std::uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec) throw tokenizer_error(where(path) + "cannot determine the file size: " + ec.message());
  // Header + vocab_size entries of an 8-byte score and length plus at most
  // max_token_length_limit bytes each (vocab_size < 2^31, so this cannot overflow).
  const std::uintmax_t most = 4 + std::uintmax_t(vocab_size) * (8 + max_token_length_limit);
  if (size > most) {
    throw vocabulary_mismatch(where(path) + "file is " + std::to_string(size) + " bytes; expected at most " +
                              std::to_string(most) + " for vocab_size = " + std::to_string(vocab_size) +
                              " entries (the file is not this model's tokenizer)");
  }
  std::vector<char> bytes(static_cast<std::size_t>(size));
  if (!in.read(bytes.data(), static_cast<std::streamsize>(size)) || in.peek() != std::char_traits<char>::eof()) {
    throw tokenizer_error(where(path) + "read " + std::to_string(in.gcount()) + " bytes of the file's " +
                          std::to_string(size) + " (it changed while being read?); expected a readable, "
                          "unchanging llama2.c tokenizer.bin");
  }
  return bytes;
}

SPECDEC_CPU_FUNC void tokenizer::load(const std::string& path, std::string_view bytes, std::size_t vocab_size) {
  const std::size_t size = bytes.size();
  if (size < 4) {
    throw tokenizer_error(where(path) + "file is " + std::to_string(size) +
                          " bytes; expected at least 4 (the uint32 max_token_length header)");
  }
  const std::uint32_t max_len = read_le<std::uint32_t>(bytes.data());
  if (max_len == 0 || max_len > max_token_length_limit) {
    throw tokenizer_error(where(path) + "header max_token_length = " + std::to_string(max_len) +
                          "; expected 1 <= max_token_length <= " +
                          std::to_string(max_token_length_limit) +
                          " (corrupt file or not a llama2.c tokenizer.bin)");
  }
  max_token_length_ = max_len;
  // Each entry takes at least 8 bytes, so this never over-reserves for a short file.
  const std::size_t expect = std::min(vocab_size, (size - 4) / 8 + 1);
  pieces_.reserve(expect);
  scores_.reserve(expect);
  std::size_t off = 4;
  std::size_t entry_off = off;
  const auto entry = [&](std::size_t i) {
    return "entry " + std::to_string(i) + " of vocab_size = " + std::to_string(vocab_size) +
           " (at byte offset " + std::to_string(entry_off) + "): ";
  };
  for (std::size_t i = 0; i < vocab_size; ++i) {
    entry_off = off;
    if (size - off < 8) {
      throw tokenizer_error(where(path) + entry(i) + "file ends with " +
                            std::to_string(size - off) +
                            " bytes left; expected 8 (float32 score + uint32 length). The file "
                            "holds fewer tokens than the model's vocab_size");
    }
    const float score = read_le<float>(bytes.data() + off);
    const std::uint32_t len = read_le<std::uint32_t>(bytes.data() + off + 4);
    if (!std::isfinite(score)) {
      throw tokenizer_error(where(path) + entry(i) + "score is " + std::to_string(score) +
                            "; expected a finite float");
    }
    if (len > max_len) {
      throw tokenizer_error(where(path) + entry(i) + "piece length " + std::to_string(len) +
                            " exceeds the header's max_token_length = " +
                            std::to_string(max_len) + "; expected length <= max_token_length");
    }
    off += 8;
    if (size - off < len) {
      throw tokenizer_error(where(path) + entry(i) + "file ends with " +
                            std::to_string(size - off) + " bytes left; expected " +
                            std::to_string(len) +
                            " bytes of piece text. The file holds fewer tokens than the "
                            "model's vocab_size");
    }
    pieces_.emplace_back(bytes.data() + off, len);
    scores_.push_back(score);
    off += len;
  }
  if (off != size) {
    throw vocabulary_mismatch(where(path) + std::to_string(size - off) +
                              " bytes remain after the vocab_size = " +
                              std::to_string(vocab_size) +
                              " entries; expected the file to end there. The tokenizer holds "
                              "more tokens than the model's vocabulary");
  }
  for (unsigned b = 0; b < 256; ++b) {
    const std::size_t id = b + static_cast<std::size_t>(byte_fallback_offset);
    if (pieces_[id] != byte_piece(b)) {
      throw tokenizer_error(where(path) + "piece " + std::to_string(id) + " is '" +
                            pieces_[id] + "'; expected the byte-fallback piece '" +
                            byte_piece(b) + "' (ids 3..258 must be <0x00>..<0xFF>)");
    }
  }
  lookup_.reserve(vocab_size - min_vocab_size);
  for (std::size_t id = min_vocab_size; id < vocab_size; ++id) {
    // First occurrence wins if a (non-SentencePiece) file repeats a piece.
    lookup_.try_emplace(pieces_[id], static_cast<token_id>(id));
  }
}

SPECDEC_CPU_FUNC void tokenizer::encode_into(std::string_view s, std::vector<token_id>& out) const {
  // Symbols index into s through uint32 offsets.
  if (s.size() > 0xFFFFFFFFu / 2) {
    throw invalid_argument("specdec::cpu::tokenizer::encode: text of " +
                           std::to_string(s.size()) + " bytes; expected less than 2 GiB");
  }
  std::vector<symbol> syms;
  syms.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = utf8_char_length(s, i);
    const auto id = find(s.substr(i, n));
    const auto k = static_cast<std::int32_t>(syms.size());
    syms.push_back({static_cast<std::uint32_t>(i), static_cast<std::uint32_t>(n), k - 1, k + 1,
                    id ? *id : -1});
    i += n;
  }
  if (syms.empty()) return;
  syms.back().next = -1;

  std::vector<candidate> storage;
  storage.reserve(syms.size());
  std::priority_queue<candidate, std::vector<candidate>, candidate_order> queue(
      candidate_order{}, std::move(storage));
  const auto try_pair = [&](std::int32_t l, std::int32_t r) {
    if (l < 0 || r < 0) return;
    const symbol& a = syms[static_cast<std::size_t>(l)];
    const symbol& b = syms[static_cast<std::size_t>(r)];
    if (a.id < 0 || b.id < 0) return;  // byte-fallback characters never merge
    const std::uint32_t len = a.len + b.len;
    if (len > max_token_length_) return;
    if (auto id = find(s.substr(a.start, len))) {
      queue.push({scores_[static_cast<std::size_t>(*id)], a.start, l, r, len, *id});
    }
  };
  for (std::size_t k = 0; k + 1 < syms.size(); ++k) {
    try_pair(static_cast<std::int32_t>(k), static_cast<std::int32_t>(k + 1));
  }
  while (!queue.empty()) {
    const candidate c = queue.top();
    queue.pop();
    symbol& a = syms[static_cast<std::size_t>(c.left)];
    symbol& b = syms[static_cast<std::size_t>(c.right)];
    // Stale if either side has been merged since (the combined span changed).
    if (a.len == 0 || b.len == 0 || a.next != c.right || a.len + b.len != c.len) continue;
    a.len = c.len;
    a.id = c.id;
    a.next = b.next;
    if (b.next >= 0) syms[static_cast<std::size_t>(b.next)].prev = c.left;
    b.len = 0;
    try_pair(a.prev, c.left);
    try_pair(c.left, a.next);
  }
  for (std::int32_t k = 0; k >= 0; k = syms[static_cast<std::size_t>(k)].next) {
    const symbol& x = syms[static_cast<std::size_t>(k)];
    if (x.id >= 0) {
      out.push_back(x.id);
    } else {
      for (std::uint32_t j = 0; j < x.len; ++j) {
        out.push_back(static_cast<token_id>(static_cast<unsigned char>(s[x.start + j])) +
                      byte_fallback_offset);
      }
    }
  }
}
#endif  // SPECDEC_CPU_DEFINITIONS

}  // namespace specdec::cpu
