// Tests for include/specdec/privacy/redaction.hpp: placeholders replace exactly the
// detected spans, equal values share a placeholder, numbering skips placeholder-like text
// already in the prompt, and restore() inverts redact() on every corpus line - also when
// the model's output repeats, drops, reorders or mangles placeholders or invents new ones.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "pii_corpus.hpp"
#include "specdec/privacy/detector.hpp"
#include "specdec/privacy/redaction.hpp"

namespace {
namespace pv = specdec::privacy;
using pv::pii_kind;

TEST(redact, replaces_spans_and_numbers_values_per_kind) {
  const pv::pii_detector d;
  const std::string prompt =
      "Mail jane@example.org or bob@example.org, call +44 20 7946 0958; again: jane@example.org.";
  const auto red = pv::redact(prompt, d.find(prompt));
  EXPECT_EQ(red.text, "Mail <EMAIL_1> or <EMAIL_2>, call <PHONE_1>; again: <EMAIL_1>.");
  ASSERT_EQ(red.entries.size(), 3u);
  EXPECT_EQ(red.entries[0].original, "jane@example.org");
  EXPECT_EQ(red.entries[1].placeholder, "<EMAIL_2>");
  EXPECT_EQ(red.entries[2].kind, pii_kind::phone);
  EXPECT_EQ(red.entries[2].number, 1u);
  EXPECT_EQ(red.lookup(pii_kind::email, 2)->original, "bob@example.org");
  EXPECT_EQ(red.lookup(pii_kind::email, 3), nullptr);
  EXPECT_EQ(pv::redact("no spans", {}).text, "no spans");
}

TEST(redact, skips_numbers_the_prompt_already_uses) {
  const std::string prompt = "Template <EMAIL_1> and [email 2]; real one: jane@example.org";
  const auto red = pv::redact(prompt, pv::pii_detector{}.find(prompt));
  ASSERT_EQ(red.entries.size(), 1u);
  EXPECT_EQ(red.entries[0].placeholder, "<EMAIL_3>");
  // The user's own placeholders come back untouched (and are reported as unknown).
  const auto back = pv::restore(red.text, red);
  EXPECT_EQ(back.text, prompt);
  EXPECT_EQ(back.unknown, (std::vector<std::string>{"<EMAIL_1>", "[email 2]"}));
}

TEST(redact, rejects_unsorted_overlapping_or_outside_spans) {
  const std::string t = "0123456789";
  using spans = std::vector<pv::pii_span>;
  EXPECT_THROW((void)pv::redact(t, spans{{.begin = 5, .end = 7}, {.begin = 1, .end = 3}}), specdec::invalid_argument);
  EXPECT_THROW((void)pv::redact(t, spans{{.begin = 1, .end = 5}, {.begin = 4, .end = 6}}), specdec::invalid_argument);
  EXPECT_THROW((void)pv::redact(t, spans{{.begin = 8, .end = 11}}), specdec::invalid_argument);
  EXPECT_THROW((void)pv::redact(t, spans{{.begin = 3, .end = 3}}), specdec::invalid_argument);
  try {
    (void)pv::redact(t, spans{{.begin = 2, .end = 4}, {.begin = 3, .end = 5}});
    FAIL();
  } catch (const specdec::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("span 1 [3, 5)"), std::string::npos) << e.what();
  }
}

TEST(restore, handles_repeated_dropped_invented_and_mangled_placeholders) {
  const pv::redaction red{"To <EMAIL_1>, card <CARD_1>, ssn <US_SSN_1>",
                          {{"<EMAIL_1>", "jane@example.org", pii_kind::email, 1},
                           {"<CARD_1>", "4111 1111 1111 1111", pii_kind::payment_card, 1},
                           {"<US_SSN_1>", "536-22-1492", pii_kind::us_ssn, 1}}};
  struct example {
    std::string output, restored;
  };
  const example cases[] = {
      {"Dear <EMAIL_1>, <EMAIL_1>!", "Dear jane@example.org, jane@example.org!"},  // repeated
      {"[email_1] {Email 1} (EMAIL-1) <  EMAIL_1 > &lt;EMAIL_1&gt; \\<EMAIL_1\\>",
       "jane@example.org jane@example.org jane@example.org jane@example.org jane@example.org jane@example.org"},
      {"<EMAIL1> and <EMAIL_1 then", "jane@example.org and jane@example.org then"},  // glued, unclosed
      {"EMAIL_1 wrote", "jane@example.org wrote"},                                   // brackets dropped
      {"<us ssn 1>, <US-SSN_1>, US_SSN_1", "536-22-1492, 536-22-1492, 536-22-1492"},
      {"card <CARD_1>.", "card 4111 1111 1111 1111."},
      {"\\<EMAIL_1> &lt;<EMAIL_1>", "\\jane@example.org &lt;jane@example.org"},  // an escape, then a placeholder
      // Not placeholders: ordinary words, other numbers, parts of words.
      {"send an email 1 more time", "send an email 1 more time"},
      {"XEMAIL_1 EMAIL_10 EMAIL_1x email_1", "XEMAIL_1 EMAIL_10 EMAIL_1x email_1"},
      {"<EMAIL_01> <EMAIL_>", "<EMAIL_01> <EMAIL_>"},
  };
  for (const auto& c : cases) {
    const auto r = pv::restore(c.output, red);
    EXPECT_EQ(r.text, c.restored) << c.output;
  }
  const auto r = pv::restore("Hi <EMAIL_1>, see <EMAIL_2> and <email_1>", red);
  EXPECT_EQ(r.text, "Hi jane@example.org, see <EMAIL_2> and jane@example.org");
  EXPECT_EQ(r.restored, 2u);
  EXPECT_EQ(r.unknown, std::vector<std::string>{"<EMAIL_2>"});
  EXPECT_EQ(r.missing, (std::vector<std::string>{"<CARD_1>", "<US_SSN_1>"}));  // dropped by the output
}

TEST(restore, inverts_redact_on_every_corpus_line) {
  const auto rows = specdec::testing::read_pii_corpus(SPECDEC_TEST_DATA_DIR "/pii_corpus.tsv");
  const pv::pii_detector d;
  std::mt19937_64 rng(11);
  std::size_t redacted_lines = 0;
  for (const auto& row : rows) {
    const auto spans = d.find(row.text);
    const auto red = pv::redact(row.text, spans);
    // No detected value is left in the text that would leave the device.
    for (const auto& e : red.entries) EXPECT_EQ(red.text.find(e.original), std::string::npos) << row.id;
    EXPECT_TRUE(d.find(red.text).empty()) << row.id << ": " << red.text;
    // Identity "model": the exact text comes back.
    const auto back = pv::restore(red.text, red);
    EXPECT_EQ(back.text, row.text) << row.id;
    EXPECT_TRUE(back.missing.empty()) << row.id;
    // A model that echoes the placeholders in another order, mangled and repeated.
    std::string echo;
    std::string expected;
    for (auto e = red.entries.rbegin(); e != red.entries.rend(); ++e) {
      const bool square = rng() % 2;
      std::string form(1, square ? '[' : '<');
      for (char c : to_string(e->kind))  // random letter case
        form.push_back(c >= 'A' && c <= 'Z' && rng() % 2 ? static_cast<char>(c - 'A' + 'a') : c);
      form.append("_").append(std::to_string(e->number)).push_back(square ? ']' : '>');
      echo.append("x ").append(form).append(" ").append(form).append(". ");
      expected.append("x ").append(e->original).append(" ").append(e->original).append(". ");
    }
    const auto r = pv::restore(echo, red);
    EXPECT_EQ(r.text, expected) << row.id << ": " << echo;
    EXPECT_EQ(r.restored, 2 * red.entries.size()) << row.id;
    redacted_lines += !red.entries.empty();
  }
  EXPECT_GT(redacted_lines, 1400u);
}

TEST(restore, inverts_redact_on_random_placeholder_heavy_text) {
  // Texts full of placeholder fragments, brackets and values: whatever the prompt holds,
  // the identity model gets the prompt back.
  const std::string pieces[] = {"<", ">", "[", "]", "EMAIL", "email", "_", " ", "1", "2", "&lt;", "&gt;",
                                "a@b.org", "c@d.net", "PHONE_1", "+44 20 7946 0958", "\\<", "x", "US", "SSN"};
  const pv::pii_detector d;
  std::mt19937_64 rng(23);
  for (int n = 0; n < 2000; ++n) {
    std::string t;
    for (std::size_t k = rng() % 24; k > 0; --k) t += pieces[rng() % std::size(pieces)];
    const auto red = pv::redact(t, d.find(t));
    EXPECT_EQ(pv::restore(red.text, red).text, t) << t;
  }
}

}  // namespace
