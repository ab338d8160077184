// Tests for cli/args.hpp, the argument parser of the command-line tools: values parsed
// whole (negative numbers as numbers), bounds checked before a value is used, every error
// naming its option, and --help generated from the option table.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "args.hpp"

namespace {
namespace cli = specdec::cli;

// The message of the invalid_argument `f()` throws ("" if none).
template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const specdec::invalid_argument& e) {
    return e.what();
  }
  return "";
}

TEST(args, numbers_parse_whole_and_negative_numbers_fail_their_range_not_the_parse) {
  EXPECT_EQ(cli::parse_number<std::size_t>("--n", "42"), 42u);
  EXPECT_EQ(cli::parse_number<int>("--k", "-3", cli::between(-5, 5)), -3);
  EXPECT_FLOAT_EQ(cli::parse_number<float>("--t", "-0.5"), -0.5f);
  EXPECT_DOUBLE_EQ(cli::parse_number<double>("--x", "1e-3"), 1e-3);
  const auto threads = cli::between<std::size_t>(0, 4095);
  EXPECT_EQ(error_of([&] { (void)cli::parse_number("--threads", "-1", threads); }),
            "--threads: '-1' is out of range; expected a whole number in [0, 4095]");
  EXPECT_EQ(error_of([&] { (void)cli::parse_number("--threads", "18446744073709551615", threads); }),
            "--threads: '18446744073709551615' is out of range; expected a whole number in [0, 4095]");
  EXPECT_EQ(error_of([&] { (void)cli::parse_number("--threads", "99999999999999999999999", threads); }),
            "--threads: '99999999999999999999999' is out of range; expected a whole number in [0, 4095]");
  EXPECT_EQ(error_of([&] { (void)cli::parse_number("--threads", "1e12", threads); }),
            "--threads: '1e12' is not a whole number; expected a whole number in [0, 4095]");
  EXPECT_EQ(error_of([&] { (void)cli::parse_number("--threads", "", threads); }),
            "--threads: '' is not a whole number; expected a whole number in [0, 4095]");
  EXPECT_EQ(error_of([&] { (void)cli::parse_number("--threads", "4 ", threads); }),
            "--threads: '4 ' is not a whole number; expected a whole number in [0, 4095]");
  EXPECT_EQ(error_of([&] { (void)cli::parse_number<int>("--k", "3000000000"); }),
            "--k: '3000000000' is out of range; expected a whole number in [-2147483648, 2147483647]");
  EXPECT_EQ(error_of([&] { (void)cli::parse_number("--t", "x", cli::non_negative<float>()); }),
            "--t: 'x' is not a number; expected a finite number >= 0");
  EXPECT_EQ(error_of([&] { (void)cli::parse_number("--t", "-1", cli::non_negative<float>()); }),
            "--t: '-1' is out of range; expected a finite number >= 0");
  EXPECT_EQ(error_of([&] { (void)cli::parse_number("--b", "inf", cli::above(0.0)); }),
            "--b: 'inf' is out of range; expected a finite number > 0");
  EXPECT_EQ(error_of([&] { (void)cli::parse_number("--b", "nan", cli::above(0.0)); }),
            "--b: 'nan' is out of range; expected a finite number > 0");
  EXPECT_EQ(error_of([&] { (void)cli::parse_number<float>("--t", "1e40"); }).substr(0, 30), "--t: '1e40' is out of range; e");
  EXPECT_EQ(error_of([&] { (void)cli::parse_number("--p", "0", cli::range<float>{.lo = 0, .hi = 1, .lo_open = true}); }),
            "--p: '0' is out of range; expected a number in (0, 1]");
  EXPECT_EQ(error_of([&] { (void)cli::parse_number("--p", "1", cli::range<double>{.lo = 0, .hi = 1, .hi_open = true}); }),
            "--p: '1' is out of range; expected a number in [0, 1)");
}

TEST(args, lists_and_tuples) {
  EXPECT_EQ(cli::parse_list<std::size_t>("--b", "1,2,,16"), (std::vector<std::size_t>{1, 2, 16}));
  EXPECT_EQ(error_of([] { (void)cli::parse_list("--b", "1,x", cli::at_least<std::size_t>(1)); }),
            "--b: 'x' is not a whole number; expected a whole number >= 1");
  EXPECT_EQ(error_of([] { (void)cli::parse_list("--b", "4,-1", cli::at_least<std::size_t>(1)); }),
            "--b: '-1' is out of range; expected a whole number >= 1");
  EXPECT_EQ(error_of([] { (void)cli::parse_list("--b", "", cli::at_least<std::size_t>(1)); }),
            "--b: '' is empty; expected a comma-separated list, each item a whole number >= 1");
  EXPECT_TRUE(cli::parse_list("--c", "", cli::between(0.0f, 1.0f), /*allow_empty=*/true).empty());
  EXPECT_EQ(cli::parse_tuple<double>("--cost", "1.5,0", 2), (std::vector<double>{1.5, 0.0}));
  EXPECT_EQ(error_of([] { (void)cli::parse_tuple("--cost", "1,2,3", 2, cli::non_negative<double>()); }),
            "--cost: '1,2,3' has 3 items; expected 2 comma-separated items, each a finite number >= 0");
  EXPECT_EQ(cli::split_list("a,,b,"), (std::vector<std::string>{"a", "b"}));
}

TEST(args, formats_name_the_option) {
  EXPECT_EQ(cli::parse_format("--format", "w8a8"), specdec::cpu::weight_format::w8a8);
  EXPECT_NE(error_of([] { (void)cli::parse_format("--format", "q4"); }).find("--format: "), std::string::npos);
  EXPECT_NE(error_of([] { (void)cli::parse_format("--kv-format", "q8_0", true); }).find("--kv-format: 'q8_0' cannot hold"),
            std::string::npos);
}

TEST(args, outputs_open_only_when_given_and_bad_paths_fail_first) {
  std::ofstream out;
  cli::open_output("--csv", "", out);
  EXPECT_FALSE(out.is_open());
  const std::string bad = "/nonexistent-specdec-dir/out.csv";
  EXPECT_EQ(error_of([&] { cli::open_output("--csv", bad, out); }),
            "--csv: cannot write '" + bad + "': No such file or directory; expected a writable file path");
  const std::string good = testing::TempDir() + "specdec_args_out.csv";
  cli::open_output("--csv", good, out);
  EXPECT_TRUE(out.is_open());
  out.close();
  std::remove(good.c_str());
}

struct tool_options {
  std::string model, method = "ar";
  std::size_t threads = 0;
  std::optional<std::size_t> gamma;
  float temperature = 0;
  bool adaptive = false;
  std::vector<std::size_t> batches{1};
};

cli::parser make_parser(tool_options& o) {
  cli::parser p("tool", "Does things.");
  p.add("--model", "PATH", "checkpoint", cli::store(o.model), cli::required)
      .add("--threads", "N", "threads, 0 = all", cli::store(o.threads, cli::between<std::size_t>(0, 4095)))
      .add("--gamma", "K", "draft length;\n0 = no cap for bild", cli::store(o.gamma, cli::between<std::size_t>(0, 64)))
      .add("--temperature", "T", "0 = greedy",
           [&o](std::string_view opt, std::string_view v) {
             o.temperature = cli::parse_number(opt, v, cli::non_negative<float>());
             if (o.temperature > 100) throw specdec::invalid_argument("temperature above 100");
           })
      .add("--method", "ar|sd", "method", cli::store_choice(o.method, {"ar", "sd"}))
      .add("--batches", "1,2", "batch sizes", cli::store(o.batches, cli::between<std::size_t>(1, 1024)))
      .flag("--adaptive", "choose the draft length online", o.adaptive);
  return p;
}

bool parse(cli::parser& p, std::vector<const char*> args, std::ostream& out) {
  args.insert(args.begin(), "tool");
  return p.parse(static_cast<int>(args.size()), args.data(), out);
}

TEST(args, parser_applies_the_table_and_names_the_option_in_every_error) {
  tool_options o;
  cli::parser p = make_parser(o);
  std::ostringstream out;
  ASSERT_TRUE(parse(p, {"--model", "m.bin", "--threads", "2", "--gamma", "0", "--temperature", "0.5", "--adaptive",
                        "--method", "sd", "--batches", "1,4"},
                    out));
  EXPECT_EQ(o.model, "m.bin");
  EXPECT_EQ(o.threads, 2u);
  EXPECT_EQ(o.gamma, std::size_t{0});
  EXPECT_FLOAT_EQ(o.temperature, 0.5f);
  EXPECT_TRUE(o.adaptive);
  EXPECT_EQ(o.method, "sd");
  EXPECT_EQ(o.batches, (std::vector<std::size_t>{1, 4}));
  EXPECT_TRUE(out.str().empty());

  const auto fails = [&](std::vector<const char*> args) {
    tool_options fresh;
    cli::parser q = make_parser(fresh);
    return error_of([&] { (void)parse(q, std::move(args), out); });
  };
  EXPECT_EQ(fails({"--model", "m", "--gamma", "-2"}), "--gamma: '-2' is out of range; expected a whole number in [0, 64]");
  EXPECT_EQ(fails({"--model", "m", "--threads"}), "--threads: expected a value (N)");
  EXPECT_EQ(fails({"--model", "m", "--bogus"}), "unknown option '--bogus'; expected an option listed by tool --help");
  EXPECT_EQ(fails({"--model", "m", "stray"}), "unexpected argument 'stray'; expected an option listed by tool --help");
  EXPECT_EQ(fails({"--threads", "1"}), "--model: required; expected --model PATH (see tool --help)");
  EXPECT_EQ(fails({"--model", "m", "--method", "bild"}), "--method: 'bild' is not a choice; expected one of ar, sd");
  // A handler's own error gets the option's name in front.
  EXPECT_EQ(fails({"--model", "m", "--temperature", "200"}), "--temperature: temperature above 100");
  // A value that looks like an option is still the value (negative numbers).
  EXPECT_EQ(fails({"--model", "m", "--threads", "--gamma"}),
            "--threads: '--gamma' is not a whole number; expected a whole number in [0, 4095]");
}

TEST(args, help_comes_from_the_option_table) {
  std::ostringstream out;
  tool_options o2;
  cli::parser q = make_parser(o2);
  EXPECT_FALSE(parse(q, {"--help"}, out));  // no --model needed for --help
  const std::string h = out.str();
  EXPECT_EQ(h.rfind("usage: tool [options]\nDoes things.\n", 0), 0u) << h;
  for (const char* line : {"  --model PATH", "checkpoint (required)", "  --gamma K", "draft length;\n",
                           "0 = no cap for bild", "  --adaptive", "  --help, -h"})
    EXPECT_NE(h.find(line), std::string::npos) << "'" << line << "' not in:\n" << h;
  // Continuation lines are indented under the first.
  const std::size_t first = h.find("draft length;"), second = h.find("0 = no cap for bild");
  EXPECT_EQ(first - h.rfind('\n', first), second - h.rfind('\n', second));
  EXPECT_EQ(o2.model, "");
}

}  // namespace
