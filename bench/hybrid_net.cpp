// specdec-hybrid-net: every device/cloud route over real sockets. Starts specdec-serve as a
// child process on ephemeral loopback ports, puts the test proxy (testing/link_proxy.hpp)
// in front of both of its ports to pay real round trips, and runs the held-out prompts
// through each route at each RTT: per-token latency, time to first token, tokens/s, bytes
// at the socket, server forwards per token, and beside each the simulator's prediction
// (hybrid/link.hpp + hybrid/session.hpp on the virtual clock) for the same configuration.
// Then the server under load: N concurrent device clients doing split decoding against
// N doing cloud-only decoding, tokens per server-second read from the server's /metrics.
// Output: CSV on stdout or --csv; a reduced run by default, --full for the documented one.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "args.hpp"
#include "cpu_affinity.hpp"
#include "held_out_prompts.hpp"
#include "specdec/backend/cpu/tokenizer.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/hybrid/completion_client.hpp"
#include "specdec/hybrid/net_session.hpp"
#include "specdec/hybrid/session.hpp"
#include "specdec/hybrid/transport.hpp"
#include "specdec/testing/link_proxy.hpp"

namespace {
using specdec::token_id;
namespace hy = specdec::hybrid;
using specdec::cpu::transformer;

/// A session's options, built as a named object: GCC 12 warns that the std::function
/// members of a designated-initializer temporary "may be used uninitialized" when it
/// inlines their destructors (a false positive).
hy::net_session_options session_options(std::uint64_t seed, bool pipelined) {
  hy::net_session_options o;
  o.seed = seed;
  o.pipelined = pipelined;
  return o;
}

struct options {
  std::string serve = SPECDEC_SERVE_BINARY;
  std::string models = SPECDEC_MODELS_DIR;
  std::string csv;
  std::size_t prompts = 6, tokens = 32, words = 6, gamma = 4, prefix = 8, load_prompts = 2;
  std::size_t server_threads = 1;
  std::vector<double> rtts_ms{0, 10, 30, 60, 150};
  std::vector<std::size_t> clients{1, 4, 16, 32};
  double load_rtt_ms = 0.0;
  std::vector<std::string> routes;  ///< empty = all
  bool full = false;
  std::size_t load_repeats = 1;
  double overhead_ms = -1;  ///< the simulator's per-message overhead; < 0 = calibrate at RTT 0
  double request_overhead_ms = -1;  ///< the simulator's per-HTTP-request overhead; < 0 = calibrate at RTT 0
  double stream_message_ms = -1;    ///< the simulator's per-streamed-token cloud handling; < 0 = calibrate at RTT 0
  std::size_t calibration_prompts = 12;
  bool pin = true;            ///< server on one CPU, this process on another (if there are two)
  int server_cpu = -1, client_cpu = -1;  ///< chosen when pinning
  std::string hold_fraction;  ///< the server's --hold-fraction (empty: its default)
  bool anticipate = true;     ///< off: the server runs with --no-anticipate
  std::vector<std::string> server_args;  ///< more arguments for specdec-serve, verbatim
  /// The devices' kjv-little. w8a8, the draft format a device would run (docs/performance.md):
  /// 1.2 MB of weights where fp32 has 4.3 MB, whose drafting streams through the L3 the
  /// devices share with the server and slows the server's split steps, a cost that devices
  /// on their own machines do not put on a server (measured: docs/hybrid.md, the 4-client
  /// goal).
  specdec::cpu::weight_format draft_format = specdec::cpu::weight_format::w8a8;
};

using specdec::bench::allowed_cpus;
using specdec::bench::pin_to;

/// specdec-serve as a child process; SIGTERM and wait on destruction.
class child_server {
 public:
  child_server(const options& o) {
    int err[2];
    if (::pipe(err) != 0) throw specdec::error("pipe failed");
    pid_ = ::fork();
    if (pid_ < 0) throw specdec::error("fork failed");
    if (pid_ == 0) {
      if (o.server_cpu >= 0) pin_to(o.server_cpu);
      ::dup2(err[1], 2);
      ::close(err[0]);
      ::close(err[1]);
      const std::string threads = std::to_string(o.server_threads);
      const std::string model = o.models + "/kjv-big.bin", tok = o.models + "/kjv2k-tokenizer.bin";
      std::vector<const char*> args{o.serve.c_str(), "--model", model.c_str(), "--tokenizer", tok.c_str(),
                                    "--port", "0", "--verify-port", "0", "--threads", threads.c_str(),
                                    "--max-sessions", "128", "--max-completions", "128", "--http-threads", "48"};
      if (!o.anticipate) args.push_back("--no-anticipate");
      if (!o.hold_fraction.empty()) {
        args.push_back("--hold-fraction");
        args.push_back(o.hold_fraction.c_str());
      }
      for (const std::string& a : o.server_args) args.push_back(a.c_str());
      args.push_back(nullptr);
      ::execv(o.serve.c_str(), const_cast<char* const*>(args.data()));
      std::perror("exec specdec-serve");
      ::_exit(127);
    }
    ::close(err[1]);
    // Read stderr until the ports are printed; then keep draining it so the child never blocks.
    std::string line;
    char c;
    while (::read(err[0], &c, 1) == 1) {
      if (c != '\n') {
        line += c;
        continue;
      }
      std::cerr << line << '\n';
      unsigned http = 0, verify = 0;
      if (const auto at = line.find("on http://"); at != std::string::npos) {
        const auto colon = line.find(':', at + 10);
        if (std::sscanf(line.c_str() + colon + 1, "%u, verify port %u", &http, &verify) == 2) {
          http_port = static_cast<std::uint16_t>(http);
          verify_port = static_cast<std::uint16_t>(verify);
          break;
        }
      }
      line.clear();
    }
    if (http_port == 0) throw specdec::error("specdec-serve did not start (" + o.serve + ")");
    drain_ = std::thread([fd = err[0]] {
      char buf[4096];
      while (::read(fd, buf, sizeof buf) > 0) {
      }
      ::close(fd);
    });
  }
  ~child_server() {
    ::kill(pid_, SIGTERM);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    if (drain_.joinable()) drain_.join();
  }
  std::uint16_t http_port = 0, verify_port = 0;
  /// CPU seconds the server process used so far, all its threads (those that ended
  /// included): forwards, message handling, HTTP and JSON, everything the server pays for.
  [[nodiscard]] double cpu_seconds() const {
    std::ifstream f("/proc/" + std::to_string(pid_) + "/stat");
    std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const auto close = stat.rfind(')');  // the command name may hold spaces
    if (close == std::string::npos) throw specdec::error("cannot read /proc/" + std::to_string(pid_) + "/stat");
    std::istringstream in(stat.substr(close + 2));
    std::string field;
    double ticks = 0.0;
    for (int i = 3; i <= 15 && in >> field; ++i)  // fields 14 and 15: utime, stime (clock ticks)
      if (i >= 14) ticks += std::stod(field);
    return ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
  }

 private:
  pid_t pid_ = -1;
  std::thread drain_;
};

/// Sum of the samples of Prometheus metric `name` (any labels) in `text`.
double metric(const std::string& text, const std::string& name) {
  double sum = 0.0;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (line.compare(0, name.size(), name) == 0 && line.size() > name.size() &&
        (line[name.size()] == ' ' || line[name.size()] == '{'))
      sum += std::stod(line.substr(line.rfind(' ') + 1));
  return sum;
}

struct server_counters {
  double step_seconds = 0.0, steps = 0.0;
  double sequences = 0.0;     ///< sequences (blocks) summed over the steps
  double hold_seconds = 0.0;  ///< time the scheduler held steps for other sessions' verify blocks
  double step_cpu_seconds = 0.0;  ///< the server's CPU time during its batched forwards
  double rows = 0.0;              ///< rows (tokens) summed over the steps
  double drafted = 0.0;           ///< draft tokens verify requests carried
  double misses = 0.0;            ///< anticipated rows no request used
};
server_counters read_metrics(std::uint16_t port) {
  auto c = hy::tcp_connection::connect("127.0.0.1", port, 2.0, hy::privacy::may_leave_device);
  c.send_all(std::string_view("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), hy::deadline_after(5.0));
  std::string text;
  std::vector<std::uint8_t> buf(65536);
  try {
    for (;;) {
      const std::size_t n = c.recv_some(buf, hy::deadline_after(5.0));
      text.append(reinterpret_cast<const char*>(buf.data()), n);
    }
  } catch (const hy::link_unavailable&) {  // closed: the whole answer is in
  }
  return {metric(text, "specdec_step_seconds_sum"), metric(text, "specdec_step_seconds_count"),
          metric(text, "specdec_batch_sequences_sum"), metric(text, "specdec_step_hold_seconds_total"),
          metric(text, "specdec_step_cpu_seconds_total"), metric(text, "specdec_batch_rows_sum"),
          metric(text, "specdec_tokens_total{kind=\"drafted\"}"), metric(text, "specdec_anticipations_total{result=\"miss\"}")};
}

double quantile(std::vector<double> v, double q) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(q * static_cast<double>(v.size() - 1) + 0.5))];
}

/// One CSV row's numbers.
struct cell {
  std::string section, route;
  double rtt_ms = 0;
  std::size_t clients = 1, requests = 0, tokens = 0;
  int identical = -1;  ///< greedy split vs cloud-only: 1 all prompts equal, 0 not, -1 n/a
  std::vector<double> per_token, ttft;
  double seconds = 0, bytes_up = 0, bytes_down = 0, forwards = 0, server_seconds = 0;
  double sequences = 0, hold_seconds = 0;  ///< the server's sequences over its steps, and its holds
  double server_cpu_seconds = 0;           ///< the server's CPU time during its forwards
  double server_process_cpu_seconds = 0;   ///< the server process's CPU time over the whole cell
  double server_rows = 0;                  ///< rows of the server's forwards during the cell
  double server_drafted = 0, server_misses = 0;  ///< drafts verified, anticipations unused
  double hidden_seconds = 0;  ///< pipelined: drafting overlapped with rounds whose guess held
  double rounds = 0;
  std::size_t fallbacks = 0;  ///< requests that lost the link and finished on the device
  double physics_per_token = NAN;  ///< split, drafting: the route's per-token time at RTT 0 + RTT / tokens per round
  // The simulator's prediction for the same route and RTT.
  std::vector<double> sim_per_token, sim_ttft;
  double sim_bytes = 0, sim_forwards = 0;
  std::size_t sim_tokens = 0;
  double sim_overhead = NAN;  ///< the simulator's per-message overhead, seconds
  double sim_request_overhead = NAN;  ///< the simulator's per-request overhead (HTTP route), seconds
  double sim_stream_message = NAN;    ///< the simulator's per-streamed-token cloud handling, seconds
  std::size_t repeat = 0;     ///< load test: which repeat
};

void header(std::ostream& out) {
  out << "section,route,rtt_ms,clients,requests,tokens,greedy_identical_to_cloud,fallbacks,per_token_p50_ms,per_token_p95_ms,"
         "ttft_p50_ms,tokens_per_s,bytes_up_per_token,bytes_down_per_token,forwards_per_token,tokens_per_round,"
         "hidden_ms_per_token,physics_per_token_ms,server_tokens_per_server_s,sim_per_token_p50_ms,sim_ttft_p50_ms,sim_bytes_per_token,"
         "sim_forwards_per_token,sim_error_pct,sim_message_overhead_ms,repeat,sequences_per_step,hold_ms_per_token,server_tokens_per_server_cpu_s,sim_request_overhead_ms,sim_stream_message_ms,"
         "server_tokens_per_process_cpu_s,server_rows_per_token,drafted_per_token,anticipation_misses_per_token\n";
}
void row(std::ostream& out, const cell& c) {
  const double n = std::max<double>(1.0, static_cast<double>(c.tokens));
  const double p50 = quantile(c.per_token, 0.5) * 1e3, sim = quantile(c.sim_per_token, 0.5) * 1e3;
  char buf[1024];
  std::snprintf(buf, sizeof buf,
                "%s,%s,%g,%zu,%zu,%zu,%d,%zu,%.2f,%.2f,%.1f,%.1f,%.1f,%.1f,%.3f,%.2f,%.3f,%.2f,%.1f,%.2f,%.1f,%.1f,%.3f,%.1f,%.3f,%zu,%.2f,%.3f,%.1f,%.3f,%.4f,%.1f,%.3f,%.3f,%.3f\n",
                c.section.c_str(), c.route.c_str(), c.rtt_ms, c.clients, c.requests, c.tokens, c.identical, c.fallbacks, p50,
                quantile(c.per_token, 0.95) * 1e3, quantile(c.ttft, 0.5) * 1e3, n / std::max(1e-9, c.seconds),
                c.bytes_up / n, c.bytes_down / n, c.forwards / n, c.rounds > 0 ? n / c.rounds : NAN,
                c.hidden_seconds / n * 1e3, c.physics_per_token * 1e3, c.server_seconds > 0 ? n / c.server_seconds : NAN, sim,
                quantile(c.sim_ttft, 0.5) * 1e3, c.sim_tokens ? c.sim_bytes / static_cast<double>(c.sim_tokens) : NAN,
                c.sim_tokens ? c.sim_forwards / static_cast<double>(c.sim_tokens) : NAN,
                c.sim_per_token.empty() ? NAN : 100.0 * (sim - p50) / p50, c.sim_overhead * 1e3, c.repeat,
                c.forwards > 0 ? c.sequences / c.forwards : NAN, c.hold_seconds / n * 1e3,
                c.server_cpu_seconds > 0 ? n / c.server_cpu_seconds : NAN, c.sim_request_overhead * 1e3,
                c.sim_stream_message * 1e3,
                c.server_process_cpu_seconds > 0 ? n / c.server_process_cpu_seconds : NAN,
                c.forwards > 0 ? c.server_rows / n : NAN, c.forwards > 0 ? c.server_drafted / n : NAN,
                c.forwards > 0 ? c.server_misses / n : NAN);
  out << buf << std::flush;
}

struct route_spec {
  std::string name;
  hy::route r;
  bool sampled = false, pipelined = false, cuts = false;
};

/// A command-line handler storing "on" / "off" in `target`.
auto on_off(bool& target) {
  return [&target](std::string_view name, std::string_view v) {
    if (v != "on" && v != "off")
      throw specdec::invalid_argument(std::string(name) + " must be on or off, got \"" + std::string(v) + "\"");
    target = v == "on";
  };
}

}  // namespace

int main(int argc, char** argv) try {
  options o;
  namespace cli = specdec::cli;
  using cli::store;
  const auto count = cli::between<std::size_t>(1, 1 << 16);
  cli::parser p("specdec-hybrid-net",
                "Every device/cloud route over real sockets through a delaying proxy, against specdec-serve "
                "started as a child process; beside each measurement the simulator's prediction; then the server "
                "under N concurrent clients (docs/hybrid.md, Measurements).");
  p.add("--serve", "PATH", "the specdec-serve binary", store(o.serve))
      .add("--models", "DIR", "directory of kjv-big.bin, kjv-little.bin, kjv2k-tokenizer.bin, kjv_val_openings.tsv",
           store(o.models))
      .add("--csv", "PATH", "write the CSV here (default: stdout)", store(o.csv))
      .add("--prompts", "N", "held-out prompts per cell (6; --full: 24)", store(o.prompts, count))
      .add("--tokens", "N", "tokens per request (32; --full: 64)", store(o.tokens, count))
      .add("--gamma", "G", "drafts per split round (4)", store(o.gamma, cli::between<std::size_t>(1, 16)))
      .add("--prefix", "K", "tokens the cloud writes on the prefix route (8)", store(o.prefix, count))
      .add("--rtts", "MS,...", "round-trip times through the proxy (0,10,30,60,150)",
           store(o.rtts_ms, cli::range<double>{.lo = 0, .hi = 10000}))
      .add("--clients", "N,...", "concurrent clients of the load test (1,4,16,32; 0 = none)",
           store(o.clients, cli::between<std::size_t>(0, 256)))
      .add("--load-prompts", "N", "requests per client in the load test (2; --full: 4)", store(o.load_prompts, count))
      .add("--load-rtt", "MS", "RTT of the load test (0)", store(o.load_rtt_ms, cli::range<double>{.lo = 0, .hi = 10000}))
      .add("--server-threads", "N", "threads of the server's forward (1)",
           store(o.server_threads, cli::between<std::size_t>(1, 64)))
      .add("--routes", "NAME,...", "only these routes (cloud is the greedy reference; default: all)",
           [&o](std::string_view, std::string_view v) { o.routes = cli::split_list(v); })
      .add("--load-repeats", "N", "repeats of each load-test cell, ratios within one run (1; --full: 3)",
           store(o.load_repeats, count))
      .add("--message-overhead-ms", "MS",
           "the simulator's per-message overhead (default: measured at RTT 0 before the table, then held fixed)",
           store(o.overhead_ms, cli::range<double>{.lo = 0, .hi = 1000}))
      .add("--hold-fraction", "F", "the server's --hold-fraction (default: the server's own default)",
           store(o.hold_fraction))
      .add("--request-overhead-ms", "MS",
           "the simulator's per-request overhead of the HTTP route (default: measured at RTT 0 on cloud-only "
           "requests' times to first token after the per-message overhead, then held fixed)",
           store(o.request_overhead_ms, cli::range<double>{.lo = 0, .hi = 1000}))
      .add("--stream-message-ms", "MS",
           "the simulator's per-streamed-token handling on the cloud (default: measured at RTT 0 on cloud-only "
           "requests with the per-request overhead, then held fixed)",
           store(o.stream_message_ms, cli::range<double>{.lo = 0, .hi = 1000}))
      .add("--pin-cpus", "on|off",
           "server child on one CPU, this process (clients, proxy, simulator) on another (on when >= 2 CPUs)",
           on_off(o.pin))
      .add("--draft-format", "F", "the devices' kjv-little weights: fp32, bf16, fp16, q8_0 or w8a8 (w8a8)",
           cli::store_format(o.draft_format))
      .add("--server-arg", "ARG", "one more argument for specdec-serve, verbatim (repeatable, e.g. --server-arg --fixed-draft --server-arg 1)",
           [&o](std::string_view, std::string_view v) { o.server_args.emplace_back(v); })
      .add("--anticipate", "on|off", "the server's anticipation at 0 announced drafts (on; off: --no-anticipate)",
           on_off(o.anticipate))
      .flag("--full", "the documented run: 24 prompts, 64 tokens, 4 requests per load client, 3 load repeats", o.full);
  if (!p.parse(argc, argv)) return 0;
  if (o.full) {
    o.prompts = std::max<std::size_t>(o.prompts, 24);
    o.tokens = std::max<std::size_t>(o.tokens, 64);
    o.load_prompts = std::max<std::size_t>(o.load_prompts, 4);
    o.load_repeats = std::max<std::size_t>(o.load_repeats, 3);
  }
  if (const auto cpus = allowed_cpus(); o.pin && cpus.size() >= 2) {
    o.server_cpu = cpus[0];
    o.client_cpu = cpus[1];
    pin_to(o.client_cpu);  // before any thread: every thread of this process inherits it
    std::cerr << "specdec-hybrid-net: server pinned to CPU " << o.server_cpu << ", clients to CPU " << o.client_cpu << '\n';
  } else {
    std::cerr << "specdec-hybrid-net: not pinned (" << cpus.size() << " CPUs allowed)\n";
  }
  if (o.prefix >= o.tokens) throw specdec::invalid_argument("--prefix must be < --tokens, got " + std::to_string(o.prefix));
  std::ofstream file;
  cli::open_output("--csv", o.csv, file);
  std::ostream& out = o.csv.empty() ? std::cout : file;
  ::signal(SIGPIPE, SIG_IGN);

  const specdec::cpu::transformer_options device_options{.threads = 1, .format = o.draft_format};
  transformer little(o.models + "/kjv-little.bin", device_options);
  transformer big(o.models + "/kjv-big.bin", {.threads = 1});
  transformer sim_little(o.models + "/kjv-little.bin", device_options);
  const specdec::cpu::tokenizer tok(o.models + "/kjv2k-tokenizer.bin", little.vocab_size());
  std::vector<std::vector<token_id>> prompts;
  for (const auto& text : specdec::bench::held_out_prompts(o.models + "/kjv_val_openings.tsv", o.prompts, o.words))
    prompts.push_back(tok.encode(text));
  const specdec::generation_options gen{.max_new_tokens = o.tokens};
  const specdec::sampling_params sampled{.temperature = 0.8f, .top_p = 0.9f};

  child_server server(o);
  header(out);
  const std::vector<route_spec> routes{
      {"device", hy::route::on_device()},
      {"cloud", hy::route::in_cloud()},
      {"split_greedy", hy::route::speculative(o.gamma), false, false},
      {"split_greedy_pipelined", hy::route::speculative(o.gamma), false, true},
      {"split_sampled", hy::route::speculative(o.gamma), true, false},
      {"cloud_prefix", hy::route::cloud_prefix(o.prefix)},
      {"split_greedy_pipelined_cuts", hy::route::speculative(o.gamma), false, true, true},
  };
  // The simulator's configuration: the link of an RTT over loopback (no serialisation to
  // speak of) with the per-message overhead, and the cloud charged the server's own
  // step-time curve as /health reports it (the server's load, not this process's),
  // refreshed before every simulated request: the curve is an exponentially weighted
  // estimate that moves with the server's load, and the request simulated next is the one
  // the server has just served.
  const auto sim_link = [](double rtt_ms, double overhead, double request_overhead, double stream_message) {
    hy::link_config lc;
    lc.stream_message_seconds = stream_message;
    lc.rtt_seconds = rtt_ms / 1e3;
    lc.up_bps = lc.down_bps = 1e10;
    lc.message_overhead_seconds = overhead;
    lc.request_overhead_seconds = request_overhead;
    return lc;
  };
  const auto curve = std::make_shared<hy::step_time_cost>();
  std::optional<hy::run_ahead_rule> run_ahead;  // the server's, as /health reports it
  const auto refresh_curve = [&] {
    hy::server_health h = hy::completion_client("127.0.0.1", server.http_port).health();
    if (!h.step_time_curve.empty()) curve->points = std::move(h.step_time_curve);
    run_ahead = h.run_ahead;
  };
  const auto sim_options = [&](bool is_sampled) {
    hy::session_options so{.sampling = is_sampled ? sampled : specdec::sampling_params{}, .seed = 1};
    so.charge_probe = false;
    // Both split routes send their first block right behind open_session
    // (verify_client::open_and_verify): the open costs no round trip of its own, only the
    // prefix's bytes, which the simulator leaves out.
    so.wire.opens_session = false;
    // The in-process decoder's sampling and verification (top-p over the vocabulary for q
    // and p) is work the device and the server do in series with every round.
    so.charge_decoder_work = true;
    refresh_curve();
    if (!curve->points.empty()) {
      so.cloud_cost = [curve](std::size_t b, std::size_t c) { return (*curve)(b, c); };
      so.run_ahead = run_ahead;  // the server's choice between drafting and running ahead
    }
    return so;
  };
  // The per-message overhead (proxy hops, the server's listener and scheduler hand-offs,
  // framing): measured once at RTT 0 as the excess of real split greedy decoding over the
  // simulator without it, per simulated message (the median over the calibration
  // requests: other tenants of the host stall single requests), then held fixed for every
  // route and RTT.
  double overhead = o.overhead_ms / 1e3;
  if (overhead < 0) {
    specdec::testing::link_proxy http("127.0.0.1", server.http_port), verify("127.0.0.1", server.verify_port);
    const hy::net_endpoint ep{"127.0.0.1", http.port(), verify.port()};
    const hy::route r = hy::route::speculative(o.gamma);
    hy::net_session s(little, hy::fixed_arbiter{r}, ep, session_options(1, false));
    hy::simulated_link link(sim_link(0, 0, 0, 0), 1);
    hy::session sim(sim_little, big, hy::fixed_arbiter{r}, link, sim_options(false));
    // Warm-up: connections, the server's session caches and its step-time curve, this
    // process's models (the first requests after the server starts run measurably slower).
    for (std::size_t i = 0; i < std::min(o.calibration_prompts, prompts.size()); ++i) {
      (void)s.execute(prompts[i], gen, r);
      (void)sim.execute(prompts[i], gen, r);
    }
    // The curve as it stands after the warm-up, as every cell of the table reads it.
    hy::session calibrated(sim_little, big, hy::fixed_arbiter{r}, link, sim_options(false));
    std::vector<double> excess;  // per request: (real - simulated) seconds per simulated message
    for (std::size_t i = 0; i < std::min(o.calibration_prompts, prompts.size()); ++i) {
      const double real = s.execute(prompts[i], gen, r).latency_seconds;
      const auto k0 = link.counters();
      refresh_curve();
      const double simulated = calibrated.execute(prompts[i], gen, r).latency_seconds;
      const auto messages = link.counters().messages_up + link.counters().messages_down - k0.messages_up - k0.messages_down;
      excess.push_back((real - simulated) / static_cast<double>(std::max<std::size_t>(1, messages)));
    }
    overhead = std::max(0.0, quantile(excess, 0.5));
    std::cerr << "specdec-hybrid-net: simulator per-message overhead " << overhead * 1e3 << " ms (median over "
              << excess.size() << " requests at RTT 0)\n";
  }
  // The per-request overhead of the HTTP route (a new connection through the proxy, the
  // server's worker hand-off, parsing): paid before the first token, so measured on
  // cloud-only requests, after the per-message overhead, as the excess of the real time to
  // first token over the simulated one with the message overhead only (the median), then
  // held fixed. (A whole request's excess would also count the stream's per-token costs,
  // which a request of a few cloud tokens does not pay.)
  double request_overhead = o.request_overhead_ms / 1e3, stream_message = o.stream_message_ms / 1e3;
  if (request_overhead < 0 || stream_message < 0) {
    specdec::testing::link_proxy http("127.0.0.1", server.http_port), verify("127.0.0.1", server.verify_port);
    const hy::net_endpoint ep{"127.0.0.1", http.port(), verify.port()};
    const hy::route r = hy::route::in_cloud();
    hy::net_session s(little, hy::fixed_arbiter{r}, ep, session_options(1, false));
    hy::simulated_link link(sim_link(0, overhead, 0, 0), 1);
    hy::session sim(sim_little, big, hy::fixed_arbiter{r}, link, sim_options(false));
    const std::size_t n = std::min(o.calibration_prompts, prompts.size());
    for (std::size_t i = 0; i < std::min<std::size_t>(4, n); ++i) (void)s.execute(prompts[i], gen, r);  // warm-up
    std::vector<double> excess, rest;  // per request: real - simulated time to first token, and whole
    std::vector<double> tokens;
    for (std::size_t i = 0; i < n; ++i) {
      const hy::net_result real = s.execute(prompts[i], gen, r);
      refresh_curve();
      const hy::request_result q = sim.execute(prompts[i], gen, r);
      excess.push_back(real.ttft_seconds - q.ttft_seconds);
      rest.push_back(real.latency_seconds - q.latency_seconds);
      tokens.push_back(static_cast<double>(std::max<std::size_t>(1, real.tokens.size())));
    }
    if (request_overhead < 0) request_overhead = std::max(0.0, quantile(excess, 0.5));
    // What the stream loses per token beyond that: (whole excess - the request's) per token.
    for (std::size_t i = 0; i < rest.size(); ++i) rest[i] = (rest[i] - request_overhead) / tokens[i];
    if (stream_message < 0) stream_message = std::max(0.0, quantile(rest, 0.5));
    std::cerr << "specdec-hybrid-net: simulator per-request overhead " << request_overhead * 1e3 << " ms (median over "
              << excess.size() << " cloud-only requests' times to first token at RTT 0), per streamed token "
              << stream_message * 1e3 << " ms\n";
  }
  std::map<std::string, double> at_zero;  // per-token p50 of each route at RTT 0
  for (const double rtt_ms : o.rtts_ms) {
    const specdec::testing::link_proxy_options shape{.one_way_delay_seconds = rtt_ms / 2e3};
    specdec::testing::link_proxy http("127.0.0.1", server.http_port, shape), verify("127.0.0.1", server.verify_port, shape);
    const hy::net_endpoint ep{"127.0.0.1", http.port(), verify.port()};
    std::vector<std::vector<token_id>> cloud_tokens;
    for (const route_spec& rs : routes) {
      if (!o.routes.empty() && std::find(o.routes.begin(), o.routes.end(), rs.name) == o.routes.end()) continue;
      hy::net_session_options so = session_options(1, rs.pipelined);
      so.sampling = rs.sampled ? sampled : specdec::sampling_params{};
      so.verify.retries = rs.cuts ? 4u : 1u;
      hy::net_session s(little, hy::fixed_arbiter{rs.r}, ep, so);
      cell c;
      c.section = "routes";
      c.route = rs.name;
      c.rtt_ms = rtt_ms;
      c.sim_overhead = overhead;
      c.sim_request_overhead = request_overhead;
      c.sim_stream_message = stream_message;
      // The simulator: the same route on the virtual clock, the same models in process
      // (the device's compute charged as it ran, the cloud's from the server's curve), the
      // link's RTT set to the proxy's. Run prompt by prompt alternately with the real
      // route, so both see the same machine load.
      hy::simulated_link link(sim_link(rtt_ms, overhead, request_overhead, stream_message), 1);
      hy::session sim(sim_little, big, hy::fixed_arbiter{rs.r}, link, sim_options(rs.sampled));
      // Faults: the verify connection is cut every max(250 ms, 5 RTT) (a client needs two
      // round trips to resume and resend); it reconnects, resumes and resends.
      std::atomic<bool> cutting{rs.cuts};
      std::thread cutter([&] {
        const auto period = std::chrono::duration<double>(std::max(0.25, 5.0 * rtt_ms / 1e3));
        auto next = std::chrono::steady_clock::now() + period;
        while (cutting.load()) {
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
          if (std::chrono::steady_clock::now() < next) continue;
          verify.disconnect_all();
          next += std::chrono::duration_cast<std::chrono::steady_clock::duration>(period);
        }
      });
      const server_counters m0 = read_metrics(server.http_port);
      bool identical = true, compared = false;
      for (std::size_t i = 0; i < prompts.size(); ++i) {
        const hy::net_result r = s.execute(prompts[i], gen, rs.r);
        if (r.tokens.empty()) continue;
        ++c.requests;
        c.tokens += r.tokens.size();
        c.per_token.push_back(r.latency_seconds / static_cast<double>(r.tokens.size()));
        c.ttft.push_back(r.ttft_seconds);
        c.seconds += r.latency_seconds;
        c.bytes_up += static_cast<double>(r.bytes_up);
        c.bytes_down += static_cast<double>(r.bytes_down);
        c.rounds += static_cast<double>(r.verify_rounds);
        if (rs.name == "cloud") cloud_tokens.push_back(r.tokens);
        if (rs.r.kind == hy::route_kind::speculative && !rs.sampled && i < cloud_tokens.size()) {
          // What the routes it used must produce: the cloud's greedy tokens, and after a
          // fallback the device's greedy continuation of them.
          std::vector<token_id> want(cloud_tokens[i].begin(),
                                     cloud_tokens[i].begin() + static_cast<std::ptrdiff_t>(
                                                                   std::min(r.cloud_tokens, cloud_tokens[i].size())));
          if (r.fell_back_to_device) {
            ++c.fallbacks;
            std::vector<token_id> ctx = prompts[i];
            ctx.insert(ctx.end(), want.begin(), want.end());
            specdec::generation_options rest = gen;
            rest.max_new_tokens = gen.max_new_tokens - want.size();
            const auto more = specdec::autoregressive_decoder(sim_little).generate(ctx, rest).tokens;
            want.insert(want.end(), more.begin(), more.end());
          } else {
            want = cloud_tokens[i];
          }
          identical = identical && r.tokens == want;
          compared = true;
        }
        if (rs.pipelined || rs.cuts) continue;  // the simulator has neither
        refresh_curve();
        const hy::request_result q = sim.execute(prompts[i], gen, rs.r);
        if (q.tokens.empty()) continue;
        c.sim_per_token.push_back(q.latency_seconds / static_cast<double>(q.tokens.size()));
        c.sim_ttft.push_back(q.ttft_seconds);
        c.sim_bytes += static_cast<double>(q.bytes_up + q.bytes_down);
        c.sim_forwards += static_cast<double>(q.cloud_calls);
        c.sim_tokens += q.tokens.size();
      }
      cutting = false;
      cutter.join();
      const server_counters m1 = read_metrics(server.http_port);
      c.forwards = m1.steps - m0.steps;
      c.server_seconds = m1.step_seconds - m0.step_seconds;
      c.sequences = m1.sequences - m0.sequences;
      c.hold_seconds = m1.hold_seconds - m0.hold_seconds;
      c.server_cpu_seconds = m1.step_cpu_seconds - m0.step_cpu_seconds;
      c.server_rows = m1.rows - m0.rows;
      c.server_drafted = m1.drafted - m0.drafted;
      c.server_misses = m1.misses - m0.misses;
      // -1 without a cloud-only reference to compare with (--routes without cloud): not
      // checked, which a 0 would report as a mismatch.
      if (rs.r.kind == hy::route_kind::speculative && !rs.sampled && compared) c.identical = identical ? 1 : 0;
      if (rs.pipelined && s.pipeline() != nullptr) c.hidden_seconds = s.pipeline()->hidden_draft_seconds;
      if (rtt_ms == 0.0) at_zero[rs.name] = quantile(c.per_token, 0.5);
      // The physics of drafting rounds, each a round trip after the compute: not of a session
      // the server ran ahead (rounds of more than gamma + 1 tokens), whose round trips
      // overlap the server's decoding (the simulator models that regime).
      const bool drafting = c.rounds > 0 && static_cast<double>(c.tokens) <= c.rounds * static_cast<double>(o.gamma + 1);
      if (drafting && at_zero.count(rs.name) != 0)
        c.physics_per_token = at_zero[rs.name] + rtt_ms / 1e3 * c.rounds / static_cast<double>(c.tokens);
      row(out, c);
    }
  }

  // The server under load: N clients at once, split greedy vs cloud-only.
  const specdec::testing::link_proxy_options shape{.one_way_delay_seconds = o.load_rtt_ms / 2e3};
  specdec::testing::link_proxy http("127.0.0.1", server.http_port, shape), verify("127.0.0.1", server.verify_port, shape);
  const hy::net_endpoint ep{"127.0.0.1", http.port(), verify.port()};
  std::vector<std::unique_ptr<transformer>> drafts;
  {
    std::cerr << "specdec-hybrid-net: the server's step-time curve before the load test (rows:ms)";
    for (const auto& [rows, seconds] : hy::completion_client("127.0.0.1", server.http_port).health().step_time_curve)
      std::cerr << ' ' << rows << ':' << seconds * 1e3;
    std::cerr << '\n';
  }
  // Per client count and route (0 split, 1 cloud-only): tokens, forward seconds and process
  // CPU seconds summed over the repeats, for the pooled ratios printed at the end.
  struct pooled {
    double tokens = 0, server_seconds = 0, process_cpu_seconds = 0;
  };
  std::map<std::size_t, std::array<pooled, 2>> pool;
  for (std::size_t repeat = 0; repeat < o.load_repeats; ++repeat)
  for (const std::size_t n : o.clients) {
    if (n == 0) continue;  // --clients 0: no load test
    while (drafts.size() < n) drafts.push_back(std::make_unique<transformer>(o.models + "/kjv-little.bin", device_options));
    // Which route goes first alternates, so that a drift of the server's speed over the run
    // does not favour one route in every repeat.
    for (const bool split : repeat % 2 == 0 ? std::array{true, false} : std::array{false, true}) {
      cell c;
      c.section = o.server_cpu >= 0 ? "load_pinned" : "load";
      c.route = split ? "split_greedy" : "cloud";
      c.rtt_ms = o.load_rtt_ms;
      c.clients = n;
      c.repeat = repeat;
      std::mutex mu;
      const server_counters m0 = read_metrics(server.http_port);
      const double cpu0 = server.cpu_seconds();
      const auto t0 = std::chrono::steady_clock::now();
      std::vector<std::thread> threads;
      for (std::size_t k = 0; k < n; ++k)
        threads.emplace_back([&, k] {
          hy::net_session s(*drafts[k], hy::fixed_arbiter{}, ep, session_options(0, false));
          for (std::size_t j = 0; j < o.load_prompts; ++j) {
            const auto& prompt = prompts[(k + j) % prompts.size()];
            const hy::net_result r =
                s.execute(prompt, gen, split ? hy::route::speculative(o.gamma) : hy::route::in_cloud());
            std::lock_guard lock(mu);
            if (r.tokens.empty()) continue;
            ++c.requests;
            c.tokens += r.tokens.size();
            c.per_token.push_back(r.latency_seconds / static_cast<double>(r.tokens.size()));
            c.ttft.push_back(r.ttft_seconds);
            c.bytes_up += static_cast<double>(r.bytes_up);
            c.bytes_down += static_cast<double>(r.bytes_down);
            c.rounds += static_cast<double>(r.verify_rounds);
          }
        });
      for (auto& t : threads) t.join();
      c.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const server_counters m1 = read_metrics(server.http_port);
      c.forwards = m1.steps - m0.steps;
      c.server_seconds = m1.step_seconds - m0.step_seconds;
      c.sequences = m1.sequences - m0.sequences;
      c.hold_seconds = m1.hold_seconds - m0.hold_seconds;
      c.server_cpu_seconds = m1.step_cpu_seconds - m0.step_cpu_seconds;
      c.server_process_cpu_seconds = server.cpu_seconds() - cpu0;
      c.server_rows = m1.rows - m0.rows;
      c.server_drafted = m1.drafted - m0.drafted;
      c.server_misses = m1.misses - m0.misses;
      pooled& p = pool[n][split ? 0 : 1];
      p.tokens += static_cast<double>(c.tokens);
      p.server_seconds += c.server_seconds;
      p.process_cpu_seconds += c.server_process_cpu_seconds;
      row(out, c);
    }
  }
  // A repeat that another tenant of the host stalled moves its own ratio by
  // several percent; the pooled ratio weighs every repeat by its tokens.
  for (const auto& [n, p] : pool) {
    const auto ratio = [&](double pooled::*seconds) {
      return p[0].tokens / (p[0].*seconds) / (p[1].tokens / (p[1].*seconds));
    };
    std::fprintf(stderr,
                 "specdec-hybrid-net: %zu client(s), %zu repeat(s) pooled: split / cloud-only server tokens per "
                 "forward-second %.3fx, per process CPU second %.3fx\n",
                 n, o.load_repeats, ratio(&pooled::server_seconds), ratio(&pooled::process_cpu_seconds));
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "specdec-hybrid-net: " << e.what() << '\n';
  return 1;
}
