// specdec-audit: summarises uplink audit logs (JSON Lines from specdec/privacy/audit.hpp):
// messages, bytes and tokens per destination, per route and per privacy class.
//
//   specdec-audit [--json] LOG...      ("-" reads standard input)
//
// Exit status: 0 on success, 1 if a record is malformed (the message names file:line),
// 2 on a usage error.
#include <fstream>
#include <iomanip>
#include <iostream>
#include <string>
#include <vector>

#include "audit_summary.hpp"

namespace {

void usage(std::ostream& o) {
  o << "usage: specdec-audit [--json] LOG...\n"
       "  Summarises uplink audit logs: messages, bytes and tokens per destination,\n"
       "  per route and per privacy class. LOG '-' is standard input.\n"
       "  --json   print the summary as one JSON object\n";
}

void table(std::ostream& o, const char* title, const std::map<std::string, specdec::audit_tool::totals>& m) {
  o << title << ":\n";
  for (const auto& [k, v] : m)
    o << "  " << std::left << std::setw(32) << k << std::right << std::setw(10) << v.messages << " msgs"
      << std::setw(14) << v.bytes << " bytes" << std::setw(12) << v.tokens << " tokens\n";
}

}  // namespace

int main(int argc, char** argv) {
  bool json = false;
  std::vector<std::string> logs;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json") {
      json = true;
    } else if (a == "--help" || a == "-h") {
      usage(std::cout);
      return 0;
    } else if (a.size() > 1 && a[0] == '-') {
      std::cerr << "specdec-audit: unknown option '" << a << "'\n";
      usage(std::cerr);
      return 2;
    } else {
      logs.push_back(a);
    }
  }
  if (logs.empty()) {
    std::cerr << "specdec-audit: no log given\n";
    usage(std::cerr);
    return 2;
  }
  specdec::audit_tool::summary s;
  try {
    for (const auto& path : logs) {
      if (path == "-") {
        s.read(std::cin, "<stdin>");
        continue;
      }
      std::ifstream in(path);
      if (!in) {
        std::cerr << "specdec-audit: cannot open '" << path << "'\n";
        return 1;
      }
      s.read(in, path);
    }
  } catch (const specdec::error& e) {
    std::cerr << "specdec-audit: " << e.what() << '\n';
    return 1;
  }
  if (json) {
    std::cout << s.to_json().dump() << '\n';
    return 0;
  }
  std::cout << "uplink audit: " << s.all.messages << " messages, " << s.all.bytes << " bytes, " << s.all.tokens
            << " tokens (" << s.with_pii << " from requests with personal data, " << s.redacted << " redacted)\n";
  table(std::cout, "by destination", s.by_destination);
  table(std::cout, "by route", s.by_route);
  table(std::cout, "by privacy class", s.by_class);
  return 0;
}
