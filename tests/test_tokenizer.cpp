// Tests for include/specdec/backend/cpu/tokenizer.hpp: loading both bundled tokenizers,
// known-answer encodings, exact round trips, agreement with llama2.c's quadratic merge
// loop, agreement with SentencePiece's own spm_encode, and every bad-input error.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fuzz/reference_encode.hpp"
#include "specdec/backend/cpu/tokenizer.hpp"

namespace {
using specdec::token_id;
using specdec::cpu::tokenizer;
namespace fs = std::filesystem;

const fs::path models_dir{SPECDEC_MODELS_DIR};
const fs::path tok512_path = models_dir / "tok512.bin";
const fs::path kjv_path = models_dir / "kjv2k-tokenizer.bin";
const fs::path kjv_spm_model = models_dir / "kjv2k.model";

const tokenizer& tok512() {
  static const tokenizer t(tok512_path, 512);
  return t;
}
const tokenizer& kjv() {
  static const tokenizer t(kjv_path, 2048);
  return t;
}

// ---------------------------------------------------------------------------------------
// Loading and known answers

TEST(tokenizer, loads_both_bundled_tokenizers) {
  EXPECT_EQ(tok512().vocab_size(), 512u);
  EXPECT_EQ(tok512().max_token_length(), 7u);
  EXPECT_EQ(kjv().vocab_size(), 2048u);
  EXPECT_EQ(kjv().max_token_length(), 14u);
  for (const tokenizer* t : {&tok512(), &kjv()}) {
    EXPECT_EQ(t->piece(0), "<unk>");
    EXPECT_EQ(t->piece(1), "\n<s>\n");
    EXPECT_EQ(t->piece(2), "\n</s>\n");
    EXPECT_EQ(t->piece(3), "<0x00>");
    EXPECT_EQ(t->piece(3 + 0x41), "<0x41>");
    EXPECT_EQ(t->piece(258), "<0xFF>");
  }
  EXPECT_EQ(tok512().piece(259), " t");
  EXPECT_EQ(tok512().score(260), -1.0f);
  EXPECT_EQ(kjv().piece(261), " the");
  EXPECT_EQ(kjv().score(261), -2.0f);
  // Special and byte pieces cannot be spelled by text.
  EXPECT_FALSE(kjv().find("<unk>").has_value());
  EXPECT_FALSE(kjv().find("<0x41>").has_value());
  EXPECT_EQ(kjv().find(" the"), std::optional<token_id>(261));
}

TEST(tokenizer, empty_text_gives_only_the_requested_specials) {
  EXPECT_EQ(kjv().encode(""), (std::vector<token_id>{1}));
  EXPECT_EQ(kjv().encode("", true, true), (std::vector<token_id>{1, 2}));
  EXPECT_EQ(kjv().encode("", false, true), (std::vector<token_id>{2}));
  EXPECT_TRUE(kjv().encode("", false, false).empty());
}

TEST(tokenizer, known_answer_encodings) {
  // "a" with its dummy prefix is " a", a piece of its own (id 261 in tok512, 262 in kjv2k).
  EXPECT_EQ(tok512().encode("a", false), (std::vector<token_id>{261}));
  EXPECT_EQ(kjv().encode("a", false), (std::vector<token_id>{262}));
  EXPECT_EQ(kjv().encode("a"), (std::vector<token_id>{1, 262}));
  EXPECT_EQ(kjv().encode("a", true, true), (std::vector<token_id>{1, 262, 2}));
  // "[" has a piece in tok512 (508) but " [" does not: dummy-prefix space (410) + "[".
  EXPECT_EQ(tok512().encode("[", false), (std::vector<token_id>{410, 508}));
  // "é" (U+00E9 = C3 A9) is a piece in tok512 (485) but not in kjv2k, where it falls back
  // to its two bytes as <0xC3> <0xA9> = byte + 3.
  EXPECT_EQ(tok512().encode("\xC3\xA9", false), (std::vector<token_id>{410, 485}));
  EXPECT_EQ(kjv().encode("\xC3\xA9", false), (std::vector<token_id>{1986, 0xC3 + 3, 0xA9 + 3}));
  // A newline has no piece in either vocabulary: byte 0x0A -> id 13.
  EXPECT_EQ(kjv().encode("a\n", false), (std::vector<token_id>{262, 0x0A + 3}));
  // 🙂 = F0 9F 99 82 through byte fallback.
  EXPECT_EQ(kjv().encode("\xF0\x9F\x99\x82", false),
            (std::vector<token_id>{1986, 0xF0 + 3, 0x9F + 3, 0x99 + 3, 0x82 + 3}));
  // Genesis 1:1, as spm_encode gives it (see the cross-check below).
  EXPECT_EQ(kjv().encode("In the beginning God created the heaven and the earth.", false),
            (std::vector<token_id>{1043, 261, 1791, 1243, 391, 282, 560, 285, 261, 739, 270,
                                   261, 624, 2009}));
}

TEST(tokenizer, decode_piece_rules) {
  const tokenizer& t = kjv();
  EXPECT_EQ(t.decode_piece(1, 261), "the");   // leading space dropped right after BOS
  EXPECT_EQ(t.decode_piece(-1, 261), " the"); // kept otherwise
  EXPECT_EQ(t.decode_piece(261, 261), " the");
  EXPECT_EQ(t.decode_piece(261, 0x0A + 3), "\n");  // <0x0A> is the raw byte
  EXPECT_EQ(t.decode_piece(261, 0x00 + 3), std::string(1, '\0'));
  EXPECT_EQ(t.decode_piece(261, 0xFF + 3), std::string(1, '\xFF'));
  EXPECT_EQ(t.decode_piece(1, 0x20 + 3), "");  // a byte-fallback space after BOS is dropped too
  EXPECT_EQ(t.decode_piece(261, 1), "");       // BOS and EOS produce nothing
  EXPECT_EQ(t.decode_piece(261, 2), "");
  EXPECT_EQ(t.decode_piece(261, 0), "<unk>");
  EXPECT_EQ(t.decode_piece(1, 1990), "a");  // no leading space: unchanged
  const std::vector<token_id> ids{1, 262, 2, 1, 262, 261};
  EXPECT_EQ(t.decode(ids), "aa the");
  std::string streamed;
  token_id prev = -1;
  for (token_id id : ids) {
    streamed += t.decode_piece(prev, id);
    prev = id;
  }
  EXPECT_EQ(streamed, t.decode(ids));
  // Without BOS the dummy-prefix space survives.
  EXPECT_EQ(t.decode(t.encode("And God said", false)), " And God said");
}

// ---------------------------------------------------------------------------------------
// Round trips

const std::vector<std::string>& round_trip_texts() {
  static const std::vector<std::string> texts{
      "In the beginning God created the heaven and the earth.",
      "And God said, Let there be light: and there was light.",
      "The LORD is my shepherd; I shall not want.",
      "Once upon a time, there was a little girl named Lily. She loved to play outside!",
      "Hello, World! How's it going? (Fine.) [ok] {x} <tag> a|b ~ ^ `code` @me #1 $5 %6 &7 *8",
      "0123456789 42 3.14159 -17 1,000,000 1e-5 0x1F",
      "multiple   spaces    here     and\ttabs\t\tand trailing   ",
      "   leading spaces",
      " one leading space",
      "trailing space ",
      " ",
      "  ",
      "\n",
      "line one\nline two\n\nline four\r\nwindows\r\n",
      "caf\xC3\xA9 na\xC3\xAFve \xC3\xBC" "ber Zo\xC3\xAB",
      "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E",                       // 日本語
      "smile \xF0\x9F\x99\x82 thumbs \xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD",  // 🙂 👍🏽
      "\xCE\x95\xCE\xBB\xCE\xBB\xCE\xB7\xCE\xBD\xCE\xB9\xCE\xBA\xCE\xAC and "
      "\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82",  // Ελληνικά, Привет
      "\xE2\x96\x81 the SentencePiece space mark itself",  // ▁
      "x",
      "I",
      "aaaaaaaaaaaaaaaaaaaaaaaaa",
      "thththththththth the the the the",
      "And it came to pass, when men began to multiply on the face of the earth, and "
      "daughters were born unto them,\nThat the sons of God saw the daughters of men that "
      "they were fair; and they took them wives of all which they chose.",
      std::string("embedded\0nul", 12),
      "invalid utf-8: \xFF \xC3 \xE6\x97 \x80\x80 \xF8\x88\x80\x80\x80 end\xE6",
      "<unk> <s> </s> <0x41> \n<s>\n",
  };
  return texts;
}

TEST(tokenizer, round_trip_is_exact_on_varied_text) {
  for (const tokenizer* t : {&tok512(), &kjv()}) {
    for (const std::string& text : round_trip_texts()) {
      const auto ids = t->encode(text);
      ASSERT_FALSE(ids.empty());
      EXPECT_EQ(ids.front(), specdec::bos_token);
      EXPECT_EQ(t->decode(ids), text) << "vocab " << t->vocab_size();
      const auto with_eos = t->encode(text, true, true);
      EXPECT_EQ(with_eos.back(), specdec::eos_token);
      EXPECT_EQ(t->decode(with_eos), text);
      for (token_id id : ids) {
        EXPECT_GE(id, 0);
        EXPECT_LT(static_cast<std::size_t>(id), t->vocab_size());
      }
    }
  }
}

TEST(tokenizer, round_trip_is_exact_on_random_bytes) {
  std::mt19937 rng(12345);
  for (const tokenizer* t : {&tok512(), &kjv()}) {
    for (int iter = 0; iter < 300; ++iter) {
      std::string text(std::uniform_int_distribution<int>(0, 64)(rng), '\0');
      for (char& c : text) c = static_cast<char>(std::uniform_int_distribution<int>(0, 255)(rng));
      EXPECT_EQ(t->decode(t->encode(text)), text);
    }
  }
}

// ---------------------------------------------------------------------------------------
// The priority-queue encoder against llama2.c's quadratic merge loop (fuzz/reference_encode.hpp).

std::vector<token_id> llama2c_encode(const tokenizer& t, std::string_view text) {
  return specdec::testing::reference_encode(t, text, specdec::testing::llama2c_char_length);
}

TEST(tokenizer, matches_llama2c_merge_loop_on_random_text) {
  // Valid UTF-8 from an alphabet rich in mergeable pairs, plus characters without pieces.
  const std::vector<std::string> alphabet{
      "a", "e", "t", "h", "n", "d", "s", "o", "i", "r", "l", "L", "O", "R", "D", " ", " ",
      " ", ",", ".", ";", ":", "\n", "0", "7", "\xC3\xA9", "\xE6\x97\xA5", "\xF0\x9F\x99\x82"};
  const std::vector<std::string> words{"the", "and", "LORD", "God", "said", "unto", "them",
                                       "beginning", "shall", "thou", "Once", "upon", "time"};
  std::mt19937 rng(2024);
  for (const tokenizer* t : {&tok512(), &kjv()}) {
    for (int iter = 0; iter < 400; ++iter) {
      std::string text;
      const int n = std::uniform_int_distribution<int>(0, 60)(rng);
      for (int k = 0; k < n; ++k) {
        if (rng() % 3 == 0) {
          text += words[rng() % words.size()];
        } else {
          text += alphabet[rng() % alphabet.size()];
        }
      }
      ASSERT_EQ(t->encode(text, false), llama2c_encode(*t, text)) << "text: [" << text << "]";
    }
  }
}

TEST(tokenizer, long_prompt_encodes_and_round_trips) {
  std::string text;
  for (int i = 0; i < 400; ++i) {
    text += "And God said, Let the waters under the heaven be gathered together unto one "
            "place, and let the dry land appear: and it was so. ";
  }
  ASSERT_GT(text.size(), 40000u);
  const auto ids = kjv().encode(text);
  EXPECT_LT(ids.size(), text.size() / 2);  // the BPE does compress
  EXPECT_EQ(kjv().decode(ids), text);
  // A smaller prompt (a few thousand characters) against the quadratic reference.
  const std::string prompt = text.substr(0, 3000);
  EXPECT_EQ(kjv().encode(prompt, false), llama2c_encode(kjv(), prompt));
}

// ---------------------------------------------------------------------------------------
// Cross-check against SentencePiece's spm_encode on the same vocabulary (kjv2k.model).
//
// Intentional differences between llama2.c's algorithm (ours) and spm with this model,
// whose normalizer is "identity" with add_dummy_prefix and remove_extra_whitespaces:
//  * spm strips leading and trailing spaces and collapses runs of spaces into one before
//    encoding; we keep every byte (so that decode(encode(text)) == text). Lines below have
//    single spaces between words and none at either end.
//  * spm maps a literal U+2581 "▁" to a space; we keep it as its three bytes.
//  * spm_encode reads one line at a time, so newlines cannot be compared; whitespace-only
//    or empty lines encode to nothing in spm but to space tokens in ours.
//  * Invalid UTF-8 is replaced by U+FFFD in spm; we encode the raw bytes via byte fallback.
// On everything else (ASCII, punctuation, digits, tabs, mixed case, non-ASCII through byte
// fallback) the two must agree id for id.

const std::vector<std::string>& spm_lines() {
  static const std::vector<std::string> lines{
      "In the beginning God created the heaven and the earth.",
      "And the earth was without form, and void; and darkness was upon the face of the deep.",
      "And the Spirit of God moved upon the face of the waters.",
      "And God said, Let there be light: and there was light.",
      "And God saw the light, that it was good: and God divided the light from the darkness.",
      "The LORD is my shepherd; I shall not want.",
      "He maketh me to lie down in green pastures: he leadeth me beside the still waters.",
      "Yea, though I walk through the valley of the shadow of death, I will fear no evil: "
      "for thou art with me; thy rod and thy staff they comfort me.",
      "In the beginning was the Word, and the Word was with God, and the Word was God.",
      "For God so loved the world, that he gave his only begotten Son, that whosoever "
      "believeth in him should not perish, but have everlasting life.",
      "And it came to pass, when men began to multiply on the face of the earth,",
      "Blessed are the meek: for they shall inherit the earth.",
      "Jesus wept.",
      "Selah.",
      "AND GOD SAID UNTO MOSES, I AM THAT I AM",
      "and god said unto moses, i am that i am",
      "aNd GoD sAiD, lEt ThErE bE lIgHt",
      "Genesis 1:1 and Exodus 20:13 and Psalm 119:105",
      "In the six hundredth year of Noah's life, in the second month, the 17th day",
      "0123456789 42 3.14159 -17 1,000,000 2024",
      "Hello, World! How's it going? (Fine.) [ok] {x} <tag> a|b ~ ^ `code` @me #1 $5 %6 &7 *8",
      "\"Quoted,\" she said; 'single' -- dash... ellipsis?! (parenthetical)",
      "Once upon a time, there was a little girl named Lily.",
      "The quick brown fox jumps over the lazy dog.",
      "tab\tseparated\tvalues",
      "caf\xC3\xA9 na\xC3\xAFve \xC3\xBC" "ber Zo\xC3\xAB",
      "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E\xE3\x81\xAE\xE3\x83\x86\xE3\x82\xAD\xE3\x82\xB9"
      "\xE3\x83\x88",  // 日本語のテキスト
      "smile \xF0\x9F\x99\x82 thumbs \xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD",
      "\xCE\x95\xCE\xBB\xCE\xBB\xCE\xB7\xCE\xBD\xCE\xB9\xCE\xBA\xCE\xAC and "
      "\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82 \xD0\xBC\xD0\xB8\xD1\x80",
      "\xE2\x80\x9Csmart quotes\xE2\x80\x9D and \xE2\x80\x94 em dash \xE2\x80\xA6",
      "a",
      "I",
      ".",
      "aaaaaaaaaaaaaaaaaaaaaaaaa",
      "thththththththth the the the the",
      "eeeeeeeeeee sssssss lllllll",
      "x = y + 1; // not scripture",
      "https://example.com/path?query=1&b=2",
      "<unk> <s> </s> <0x41>",
      "thou shalt not kill. Thou shalt not commit adultery. THOU SHALT NOT STEAL.",
      "Abraham begat Isaac; and Isaac begat Jacob; and Jacob begat Judas and his brethren;",
      "Nebuchadnezzar, Melchizedek, Methuselah, Zerubbabel, Mahershalalhashbaz",
  };
  return lines;
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

struct temp_file {
  fs::path path;
  explicit temp_file(const std::string& name)
      : path(fs::temp_directory_path() /
             ("specdec_test_tokenizer_" + std::to_string(::getpid()) + "_" + name)) {}
  temp_file(const temp_file&) = delete;
  temp_file& operator=(const temp_file&) = delete;
  ~temp_file() {
    std::error_code ec;
    fs::remove(path, ec);
  }
  void write(const std::string& bytes) const {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    ASSERT_TRUE(out.good()) << "cannot write " << path;
  }
};

// Random lines that obey the rules above: words, punctuation, digits and non-ASCII
// characters joined by single spaces (or glued), never a space at either end.
std::vector<std::string> random_spm_lines(std::size_t count) {
  const std::vector<std::string> words{
      "the", "and", "of", "LORD", "God", "said", "unto", "them", "beginning", "shall",
      "thou", "thee", "Israel", "Jerusalem", "begat", "THE", "And", "wherefore", "Lily",
      "happy", "dog", "x", "I", "a", "Zq", "qwxz", "123", "7", "2024", "3.5", "caf\xC3\xA9",
      "\xE6\x97\xA5\xE6\x9C\xAC", "\xF0\x9F\x99\x82", "\xD0\xBC\xD0\xB8\xD1\x80", "\t"};
  const std::vector<std::string> glue{",", ".", ";", ":", "!", "?", "'s", "-", "(", ")", "\"",
                                      "\xE2\x80\x94"};
  std::mt19937 rng(77);
  std::vector<std::string> out;
  for (std::size_t i = 0; i < count; ++i) {
    std::string line = words[rng() % words.size()];
    const int n = std::uniform_int_distribution<int>(0, 25)(rng);
    for (int k = 0; k < n; ++k) {
      const unsigned r = rng() % 10;
      if (r < 2) line += glue[rng() % glue.size()];
      if (r < 8) line += ' ';
      line += words[rng() % words.size()];
    }
    out.push_back(std::move(line));
  }
  return out;
}

TEST(tokenizer, agrees_with_sentencepiece_spm_encode) {
  const char* env = std::getenv("SPECDEC_SPM_ENCODE");
  const std::string spm = (env && *env) ? env : "spm_encode";
  std::vector<std::string> all = spm_lines();
  const std::size_t fixed = all.size();
  for (std::string& line : random_spm_lines(500)) all.push_back(std::move(line));
  temp_file input("spm_input.txt");
  std::string joined;
  for (const std::string& line : all) joined += line + "\n";
  input.write(joined);
  const std::string cmd = shell_quote(spm) + " --model " + shell_quote(kjv_spm_model.string()) +
                          " --output_format=id " + shell_quote(input.path.string()) +
                          " 2>/dev/null";
  FILE* pipe = ::popen(cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr) << "popen failed for: " << cmd;
  std::string output;
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, pipe)) > 0;) output.append(buf, n);
  const int status = ::pclose(pipe);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 127) {
    GTEST_SKIP() << "'" << spm << "' is not installed (apt-get install sentencepiece, or set "
                 << "SPECDEC_SPM_ENCODE to its path): SentencePiece cross-check skipped";
  }
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "command failed (status " << status << "): " << cmd;

  std::istringstream lines(output);
  std::string line;
  std::size_t i = 0;
  for (; std::getline(lines, line); ++i) {
    ASSERT_LT(i, all.size()) << "spm_encode printed more lines than it was given";
    std::vector<token_id> expected;
    std::istringstream fields(line);
    for (token_id id; fields >> id;) expected.push_back(id);
    ASSERT_FALSE(expected.empty()) << "line " << i;
    EXPECT_EQ(kjv().encode(all[i], false), expected)
        << (i < fixed ? "fixed" : "random") << " line " << i << ": [" << all[i] << "]";
  }
  EXPECT_EQ(i, all.size()) << "spm_encode printed fewer lines than it was given";
}

// ---------------------------------------------------------------------------------------
// Bad input

struct entry {
  float score;
  std::string text;
};

void put_u32(std::string& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

std::string serialize(std::uint32_t max_len, const std::vector<entry>& entries) {
  std::string out;
  put_u32(out, max_len);
  for (const entry& e : entries) {
    put_u32(out, std::bit_cast<std::uint32_t>(e.score));
    put_u32(out, static_cast<std::uint32_t>(e.text.size()));
    out += e.text;
  }
  return out;
}

std::vector<entry> tok512_entries() {
  std::vector<entry> out;
  for (token_id id = 0; id < 512; ++id) out.push_back({tok512().score(id), tok512().piece(id)});
  return out;
}

std::string file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Expects `make()` to throw exactly E with every fragment in what().
template <class E, class F>
void expect_error(F make, const std::vector<std::string>& fragments) {
  try {
    make();
    ADD_FAILURE() << "no exception thrown";
  } catch (const E& e) {
    const std::string what = e.what();
    for (const std::string& f : fragments) {
      EXPECT_NE(what.find(f), std::string::npos) << "'" << f << "' not in: " << what;
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

TEST(tokenizer_errors, serialize_reproduces_the_real_file) {
  // The corrupt files below are built by this writer: it must reproduce tok512.bin exactly.
  EXPECT_EQ(serialize(7, tok512_entries()), file_bytes(tok512_path));
  temp_file f("roundtrip.bin");
  f.write(serialize(7, tok512_entries()));
  EXPECT_EQ(tokenizer(f.path, 512).encode("Once upon a time"), tok512().encode("Once upon a time"));
}

TEST(tokenizer_errors, missing_file) {
  const fs::path missing = fs::temp_directory_path() / "specdec_no_such_tokenizer.bin";
  expect_error<specdec::tokenizer_error>([&] { tokenizer(missing, 512); },
                                         {missing.string(), "cannot open", "expected"});
  const fs::path dir = fs::temp_directory_path();
  expect_error<specdec::tokenizer_error>([&] { tokenizer(dir, 512); },
                                         {dir.string(), "is a directory", "expected"});
}

// --tokenizer /dev/zero grew to gigabytes before failing with std::bad_alloc: special files
// are refused before anything is read, and a regular file larger than vocab_size entries
// can be is refused from its size alone.
TEST(tokenizer_errors, special_and_oversized_files_are_refused_before_reading) {
  expect_error<specdec::tokenizer_error>([&] { tokenizer("/dev/zero", 512); },
                                         {"/dev/zero", "is not a regular file", "expected"});
  temp_file fifo("fifo");
  ASSERT_EQ(::mkfifo(fifo.path.c_str(), 0600), 0);  // opening it for reading would block
  expect_error<specdec::tokenizer_error>([&] { tokenizer(fifo.path, 512); },
                                         {fifo.path.string(), "is not a regular file"});
  temp_file sparse("sparse.bin");
  sparse.write(serialize(7, tok512_entries()));
  fs::resize_file(sparse.path, std::uintmax_t{1} << 34);  // 16 GiB, sparse: never read
  const std::string most = std::to_string(4 + 512 * (8 + (std::uintmax_t{1} << 16)));
  expect_error<specdec::vocabulary_mismatch>([&] { tokenizer(sparse.path, 512); },
                                             {sparse.path.string(), "17179869184 bytes", "expected at most " + most});
}

TEST(tokenizer_errors, bytes_in_memory_load_like_the_file) {
  const tokenizer t = tokenizer::from_bytes(file_bytes(kjv_path), 2048, "kjv in memory");
  EXPECT_EQ(t.encode("In the beginning God created"), kjv().encode("In the beginning God created"));
  expect_error<specdec::tokenizer_error>(
      [&] { (void)tokenizer::from_bytes(file_bytes(kjv_path).substr(0, 1000), 2048, "cut copy"); },
      {"'cut copy'", "fewer tokens"});
  expect_error<specdec::invalid_argument>([&] { (void)tokenizer::from_bytes("", 3, "tiny"); },
                                          {"'tiny'", "vocab_size = 3"});
}

TEST(tokenizer_errors, vocab_size_below_the_fixed_layout) {
  expect_error<specdec::invalid_argument>([&] { tokenizer(tok512_path, 100); },
                                          {"tok512.bin", "vocab_size = 100", "at least 259"});
  expect_error<specdec::invalid_argument>([&] { tokenizer(tok512_path, 0); },
                                          {"tok512.bin", "vocab_size = 0", "at least 259"});
  expect_error<specdec::invalid_argument>([&] { tokenizer(tok512_path, std::size_t{1} << 40); },
                                          {"tok512.bin", "does not fit token_id"});
}

TEST(tokenizer_errors, file_too_short_for_header) {
  temp_file f("short.bin");
  f.write(std::string("\x07\x00", 2));
  expect_error<specdec::tokenizer_error>([&] { tokenizer(f.path, 512); },
                                         {f.path.string(), "2 bytes", "expected at least 4"});
  f.write("");
  expect_error<specdec::tokenizer_error>([&] { tokenizer(f.path, 512); },
                                         {f.path.string(), "0 bytes", "expected at least 4"});
}

TEST(tokenizer_errors, absurd_max_token_length) {
  temp_file f("maxlen.bin");
  for (std::uint32_t bad : {0u, 0x10001u, 0xFFFFFFFFu}) {
    f.write(serialize(bad, tok512_entries()));
    expect_error<specdec::tokenizer_error>(
        [&] { tokenizer(f.path, 512); },
        {f.path.string(), "max_token_length = " + std::to_string(bad), "expected 1 <="});
  }
}

TEST(tokenizer_errors, file_ends_before_vocab_size_entries) {
  temp_file f("truncated.bin");
  // The real tok512 read as a 2048-token vocabulary runs out at entry 512.
  expect_error<specdec::tokenizer_error>(
      [&] { tokenizer(tok512_path, 2048); },
      {"tok512.bin", "entry 512 of vocab_size = 2048", "0 bytes left", "expected 8"});
  const std::string full = serialize(7, tok512_entries());
  // Cut inside entry 300's score/length header.
  auto entries = tok512_entries();
  entries.resize(300);
  const std::size_t at300 = serialize(7, entries).size();
  f.write(full.substr(0, at300 + 5));
  expect_error<specdec::tokenizer_error>(
      [&] { tokenizer(f.path, 512); },
      {f.path.string(), "entry 300 of vocab_size = 512", "5 bytes left", "expected 8",
       "fewer tokens"});
  // Cut inside entry 300's piece text (" th..." pieces are at least 2 bytes).
  f.write(full.substr(0, at300 + 9));
  expect_error<specdec::tokenizer_error>(
      [&] { tokenizer(f.path, 512); },
      {f.path.string(), "entry 300 of vocab_size = 512", "1 bytes left",
       "expected " + std::to_string(tok512().piece(300).size()) + " bytes of piece text"});
  // Cut in the middle of the byte-fallback block.
  f.write(full.substr(0, 4 + 100 * 14 + 3));
  expect_error<specdec::tokenizer_error>(
      [&] { tokenizer(f.path, 512); }, {f.path.string(), "entry ", "of vocab_size = 512"});
}

TEST(tokenizer_errors, bytes_remaining_after_vocab_size_entries) {
  // The real kjv2k tokenizer given a smaller model vocabulary.
  expect_error<specdec::vocabulary_mismatch>(
      [&] { tokenizer(kjv_path, 512); },
      {"kjv2k-tokenizer.bin", "vocab_size = 512", "bytes remain", "more tokens"});
  // One trailing byte after a complete 512-entry file.
  temp_file f("extra.bin");
  f.write(serialize(7, tok512_entries()) + "x");
  expect_error<specdec::vocabulary_mismatch>(
      [&] { tokenizer(f.path, 512); },
      {f.path.string(), "1 bytes remain after the vocab_size = 512 entries", "expected"});
  // vocabulary_mismatch is not a tokenizer_error, but both are specdec::error.
  EXPECT_THROW(tokenizer(f.path, 512), specdec::error);
}

TEST(tokenizer_errors, piece_longer_than_max_token_length) {
  temp_file f("long_piece.bin");
  auto entries = tok512_entries();
  entries[400].text = "abcdefgh";  // 8 > 7
  f.write(serialize(7, entries));
  expect_error<specdec::tokenizer_error>(
      [&] { tokenizer(f.path, 512); },
      {f.path.string(), "entry 400", "piece length 8", "max_token_length = 7", "expected"});
  // An absurd length field is caught before anything is read or allocated.
  std::string bytes = serialize(7, tok512_entries());
  const std::uint32_t huge = 0xFFFFFFF0u;
  for (int i = 0; i < 4; ++i) bytes[8 + i] = static_cast<char>((huge >> (8 * i)) & 0xFF);  // entry 0's length
  f.write(bytes);
  expect_error<specdec::tokenizer_error>(
      [&] { tokenizer(f.path, 512); },
      {f.path.string(), "entry 0", "piece length " + std::to_string(huge), "expected"});
}

TEST(tokenizer_errors, non_finite_scores) {
  temp_file f("nan.bin");
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    auto entries = tok512_entries();
    entries[321].score = bad;
    f.write(serialize(7, entries));
    expect_error<specdec::tokenizer_error>(
        [&] { tokenizer(f.path, 512); },
        {f.path.string(), "entry 321", "expected a finite float"});
  }
}

TEST(tokenizer_errors, byte_fallback_pieces_out_of_place) {
  temp_file f("bytes.bin");
  auto entries = tok512_entries();
  entries[3 + 0x41].text = "A";
  f.write(serialize(7, entries));
  expect_error<specdec::tokenizer_error>(
      [&] { tokenizer(f.path, 512); },
      {f.path.string(), "piece 68", "expected the byte-fallback piece '<0x41>'"});
}

TEST(tokenizer_errors, out_of_range_ids) {
  const tokenizer& t = tok512();
  const std::vector<token_id> bad_high{1, 300, 512};
  const std::vector<token_id> bad_low{-1};
  expect_error<specdec::token_out_of_range>([&] { (void)t.decode(bad_high); },
                                            {"decode", "512", "position 2", "vocab_size = 512"});
  expect_error<specdec::token_out_of_range>([&] { (void)t.decode(bad_low); },
                                            {"decode", "-1", "expected 0 <= id"});
  expect_error<specdec::token_out_of_range>([&] { (void)t.decode_piece(1, 9999); },
                                            {"decode_piece", "9999"});
  EXPECT_THROW((void)t.piece(512), specdec::token_out_of_range);
  EXPECT_THROW((void)t.score(-3), specdec::token_out_of_range);
  EXPECT_NO_THROW((void)t.decode_piece(-1, 511));  // prev may be anything
}

}  // namespace
