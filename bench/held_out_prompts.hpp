#pragma once
// Prompts for the benchmarks: the opening words of the held-out KJV chapters
// (models/kjv_val_openings.tsv, see models/README.md), so no benchmark prompts the models
// with text they were trained on.
#include <cstddef>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "specdec/error.hpp"

namespace specdec::bench {

/// The first `words` words of the first verse of up to `count` held-out chapters, read from
/// the tab-separated file at `path` (comment lines start with '#'; the verse is the last field).
inline std::vector<std::string> held_out_prompts(const std::string& path, std::size_t count, std::size_t words) {
  std::ifstream in(path);
  if (!in) throw specdec::invalid_argument("prompts file '" + path + "' cannot be opened");
  std::vector<std::string> out;
  std::string line;
  while (out.size() < count && std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ws(line.substr(line.rfind('\t') + 1));
    std::string w, prompt;
    for (std::size_t i = 0; i < words && ws >> w; ++i) prompt += (i ? " " : "") + w;
    out.push_back(prompt);
  }
  if (out.empty()) throw specdec::invalid_argument("prompts file '" + path + "' has no prompts");
  return out;
}

}  // namespace specdec::bench
