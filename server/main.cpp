// specdec-serve: serves one target checkpoint to devices and OpenAI clients.
//
//   specdec-serve --model models/kjv-big.bin --tokenizer models/kjv2k-tokenizer.bin --port 8080
//
// HTTP on --port (POST /v1/completions, GET /v1/models, /health, /metrics); the verify
// protocol of split speculative decoding on --verify-port (0 = ephemeral; /health says
// which). SIGTERM or SIGINT drain in-flight work (--drain-seconds) and exit 0.
// docs/hybrid.md is the deployment guide.
#include <signal.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "cli_args.hpp"
#include "specdec/backend/cpu/batched_transformer.hpp"
#include "specdec/backend/cpu/tokenizer.hpp"
#include "specdec_serve/server.hpp"

namespace {

constexpr std::string_view usage = R"(usage: specdec-serve --model PATH [options]
  --model PATH              target checkpoint (llama2.c format)
  --tokenizer PATH          its tokenizer.bin (without it prompts must be token ids)
  --model-id NAME           the id /v1/models reports (default: the checkpoint's file stem)
  --host ADDR               numeric address both ports bind (default 127.0.0.1; 0.0.0.0 = all)
  --port N                  HTTP port (default 8080; 0 = ephemeral)
  --verify-port N           verify-protocol port (default 0 = ephemeral, announced in /health)
  --threads N               threads of the batched forward, 0 = all cores (default 0)
  --format F                weights: fp32, bf16, fp16, q8_0 or w8a8 (default fp32)
  --kv-format F             KV cache: fp32, bf16 or fp16 (default fp32)
  --max-sessions N          open verify sessions at most (default 64)
  --session-ttl S           seconds an idle session lives (default 300)
  --draft-limit N           drafts one verify request may carry (default 16)
  --max-draft N             most drafts the server announces per round (default 8)
  --fixed-draft N           always announce N drafts (no dynamic speculation)
  --no-calibrate            learn the step-time curve online only (faster start)
  --max-step-rows N         rows of one batched forward (default 256)
  --prefill-chunk N         prompt tokens one sequence feeds per step (default 128)
  --max-completions N       completions running at once (default 64)
  --http-threads N          HTTP worker threads (default 16)
  --max-body-bytes N        largest request body (default 1048576)
  --drain-seconds S         graceful-stop wait for in-flight work (default 10)
)";

// The signal handler only writes a byte; the main thread waits for it.
int stop_pipe[2] = {-1, -1};
extern "C" void on_signal(int) {
  const char b = 1;
  [[maybe_unused]] const auto n = ::write(stop_pipe[1], &b, 1);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace specdec;
  namespace b = specdec::bench;
  try {
    std::map<std::string, std::string> args;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--help" || a == "-h") {
        std::cout << usage;
        return 0;
      }
      if (a == "--no-calibrate") {
        args[a] = "1";
        continue;
      }
      if (a.rfind("--", 0) != 0 || i + 1 >= argc)
        throw invalid_argument("specdec-serve: unexpected argument '" + a + "'; expected --option VALUE (see --help)");
      args[a] = argv[++i];
    }
    const auto take = [&](const char* name) -> std::optional<std::string> {
      const auto it = args.find(name);
      if (it == args.end()) return std::nullopt;
      std::string v = it->second;
      args.erase(it);
      return v;
    };
    const auto count = [&](const char* name, std::size_t def) {
      const auto v = take(name);
      return v ? b::parse_count(name, *v) : def;
    };
    const auto seconds = [&](const char* name, double def) {
      const auto v = take(name);
      return v ? b::parse_positive(name, *v) : def;
    };
    const auto port = [&](const char* name, std::size_t def) {
      const std::size_t p = count(name, def);
      if (p > 65535) throw invalid_argument(std::string(name) + ": " + std::to_string(p) + " is not a port (0..65535)");
      return static_cast<std::uint16_t>(p);
    };

    const auto model_path = take("--model");
    if (!model_path) throw invalid_argument("specdec-serve: --model PATH is required (see --help)");
    const auto tokenizer_path = take("--tokenizer");
    cpu::transformer_options mo;
    mo.threads = count("--threads", 0);
    if (const auto f = take("--format")) mo.format = b::parse_format("--format", *f);
    if (const auto f = take("--kv-format")) mo.kv_format = b::parse_format("--kv-format", *f, true);

    serve::serve_options so;
    so.host = take("--host").value_or("127.0.0.1");
    so.http_port = port("--port", 8080);
    so.verify_port = port("--verify-port", 0);
    so.http_threads = count("--http-threads", 16);
    so.drain_seconds = seconds("--drain-seconds", 10.0);
    so.http.max_body_bytes = count("--max-body-bytes", so.http.max_body_bytes);
    serve::engine_options& eo = so.engine;
    eo.model_id = take("--model-id").value_or(std::filesystem::path(*model_path).stem().string());
    eo.max_sessions = count("--max-sessions", eo.max_sessions);
    eo.session_ttl_seconds = seconds("--session-ttl", eo.session_ttl_seconds);
    eo.draft_limit = count("--draft-limit", eo.draft_limit);
    eo.speculation.max_draft = count("--max-draft", eo.speculation.max_draft);
    if (const auto f = take("--fixed-draft")) eo.speculation.fixed = b::parse_count("--fixed-draft", *f);
    eo.speculation.calibrate = !take("--no-calibrate");
    eo.max_step_rows = count("--max-step-rows", eo.max_step_rows);
    eo.prefill_chunk = count("--prefill-chunk", eo.prefill_chunk);
    eo.max_completions = count("--max-completions", eo.max_completions);
    if (!args.empty())
      throw invalid_argument("specdec-serve: unknown option " + args.begin()->first + " (see --help)");

    cpu::batched_transformer model(*model_path, mo);
    std::unique_ptr<cpu::tokenizer> tok;
    serve::text_codec codec;
    if (tokenizer_path) {
      tok = std::make_unique<cpu::tokenizer>(*tokenizer_path, model.vocab_size());
      codec = {[&tok](std::string_view s) { return tok->encode(s); },
               [&tok](token_id prev, token_id t) { return tok->decode_piece(prev, t); }};
    }

    if (::pipe(stop_pipe) != 0) throw error("specdec-serve: pipe() failed");
    struct sigaction sa{};
    sa.sa_handler = on_signal;
    ::sigemptyset(&sa.sa_mask);
    ::sigaction(SIGTERM, &sa, nullptr);
    ::sigaction(SIGINT, &sa, nullptr);
    ::signal(SIGPIPE, SIG_IGN);

    serve::server<cpu::batched_transformer> srv(model, codec, so);
    srv.start();
    std::fprintf(stderr, "specdec-serve: model %s (vocab %zu, context %zu) on http://%s:%u, verify port %u\n",
                 eo.model_id.c_str(), model.vocab_size(), model.context_length(), so.host.c_str(),
                 static_cast<unsigned>(srv.http_port()), static_cast<unsigned>(srv.verify_port()));
    std::string curve;
    for (const auto& [rows, secs] : srv.core().cost_points())
      curve += " " + std::to_string(static_cast<int>(rows + 0.5)) + ":" + std::to_string(secs * 1e3).substr(0, 6);
    if (!curve.empty()) std::fprintf(stderr, "specdec-serve: step time (rows:ms)%s\n", curve.c_str());
    char c = 0;
    while (::read(stop_pipe[0], &c, 1) < 0 && errno == EINTR) {
    }
    std::fprintf(stderr, "specdec-serve: draining (up to %.1f s)\n", so.drain_seconds);
    srv.stop();
    std::fprintf(stderr, "specdec-serve: stopped\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "specdec-serve: %s\n", e.what());
    return 1;
  }
}
