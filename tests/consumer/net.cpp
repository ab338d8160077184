// A downstream program using the network clients (specdec::net: sockets, HTTP, JSON)
// through their umbrella header, consumed as a package.
#include <specdec/net.hpp>

#include <cstdio>
#include <string>
#include <vector>

int main() {
  std::vector<std::string> events;
  specdec::hybrid::sse_parser sse([&](std::string_view data) { events.emplace_back(data); });
  sse.feed("data: {\"choices\": []}\n\ndata: [DONE]\n\n");
  std::printf("consumer_net: %zu server-sent events\n", events.size());
  return events.size() == 2 && events[1] == "[DONE]" ? 0 : 1;
}
