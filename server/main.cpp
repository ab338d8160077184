// specdec-serve: serves one target checkpoint to devices and OpenAI clients.
//
//   specdec-serve --model models/kjv-big.bin --tokenizer models/kjv2k-tokenizer.bin --port 8080
//
// HTTP on --port (POST /v1/completions, GET /v1/models, /health, /metrics); the verify
// protocol of split speculative decoding on --verify-port (0 = ephemeral; /health says
// which). With --tls-cert and --tls-key both ports speak TLS only; without them only a
// loopback --host is served, unless --allow-plaintext (docs/security.md). SIGTERM or SIGINT drain in-flight work (--drain-seconds) and exit 0.
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

#include "args.hpp"
#include "specdec/backend/cpu/batched_transformer.hpp"
#include "specdec/backend/cpu/tokenizer.hpp"
#include "specdec_serve/auth.hpp"
#include "specdec_serve/server.hpp"

namespace {


// The signal handler only writes a byte; the main thread waits for it.
int stop_pipe[2] = {-1, -1};
extern "C" void on_signal(int) {
  const char b = 1;
  [[maybe_unused]] const auto n = ::write(stop_pipe[1], &b, 1);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace specdec;
  try {
    std::string model_path, tokenizer_path, model_id, keys_path;
    cpu::transformer_options mo;
    serve::serve_options so;
    serve::engine_options& eo = so.engine;
    std::optional<std::size_t> fixed_draft;
    std::size_t threads = 0;
    bool no_calibrate = false, no_anticipate = false;
    const auto count = cli::between<std::size_t>(0, std::size_t{1} << 30);
    const auto port = cli::between<std::uint16_t>(0, 65535);
    const auto secs = cli::above(0.0);
    cli::parser p("specdec-serve",
                  "Serves one target model: an OpenAI-compatible HTTP API and the verify protocol of split "
                  "speculative decoding, continuous batching over all clients (docs/hybrid.md).");
    p.add("--model", "PATH", "target checkpoint (llama2.c format)", cli::store(model_path), cli::required)
        .add("--tokenizer", "PATH", "its tokenizer.bin (without it prompts must be token ids)", cli::store(tokenizer_path))
        .add("--model-id", "NAME", "the id /v1/models reports (default: the checkpoint's file stem)", cli::store(model_id))
        .add("--host", "ADDR", "numeric address both ports bind (default 127.0.0.1; 0.0.0.0 = all)", cli::store(so.host))
        .add("--port", "N", "HTTP port (default 8080; 0 = ephemeral)", cli::store(so.http_port, port))
        .add("--verify-port", "N", "verify-protocol port (default 0 = ephemeral, announced in /health)",
             cli::store(so.verify_port, port))
        .add("--threads", "N", "threads of the batched forward, 0 = all cores (default 0)",
             cli::store(threads, cli::between<std::size_t>(0, 4095)))
        .add("--format", "F", "weights: fp32, bf16, fp16, q8_0 or w8a8 (default fp32)", cli::store_format(mo.format))
        .add("--kv-format", "F", "KV cache: fp32, bf16 or fp16 (default fp32)", cli::store_format(mo.kv_format, true))
        .add("--max-sessions", "N", "open verify sessions at most (default 64)", cli::store(eo.max_sessions, count))
        .add("--session-ttl", "S", "seconds an idle session lives (default 300)", cli::store(eo.session_ttl_seconds, secs))
        .add("--draft-limit", "N", "drafts one verify request may carry (default 16)", cli::store(eo.draft_limit, count))
        .add("--max-draft", "N", "most drafts the server announces per round (default 8)",
             cli::store(eo.speculation.max_draft, count))
        .add("--fixed-draft", "N", "always announce N drafts (no dynamic speculation)", cli::store(fixed_draft, count))
        .add("--min-draft-gain", "G",
             "announce drafts only when they promise G times the tokens per second of none (default 1.2)",
             cli::store(eo.speculation.min_gain, cli::range<double>{.lo = 1, .hi = 100}))
        .add("--keep-draft-gain", "G",
             "once drafting, go on announcing drafts while they promise G times the tokens per second of none "
             "(1 <= G <= --min-draft-gain; default 1)",
             cli::store(eo.speculation.keep_gain, cli::range<double>{.lo = 1, .hi = 100}))
        .add("--switch-draft-gain", "G",
             "while drafting, change the draft length only for G times the last one's tokens per second (default 1.1)",
             cli::store(eo.speculation.switch_gain, cli::range<double>{.lo = 1, .hi = 100}))
        .add("--device-draft-gain", "G",
             "announce no drafts while the devices would get their tokens G times faster without (default 2; "
             "off: by the server's tokens per second alone)",
             [&eo](std::string_view name, std::string_view v) {
               if (v == "off") {
                 eo.speculation.device_gain.reset();
                 return;
               }
               double g = 0;
               cli::store(g, cli::range<double>{.lo = 1, .hi = 100})(name, v);
               eo.speculation.device_gain = g;
             })
        .add("--hold-fraction", "F",
             "hold a verify block at most F of a step's time for other sessions' blocks (default 1; 0 = never)",
             cli::store(eo.hold.hold_fraction, cli::range<double>{.lo = 0, .hi = 100}))
        .add("--max-hold-ms", "MS", "never hold a verify block longer than this (default 10)",
             [&eo](std::string_view name, std::string_view v) {
               double ms = 0;
               cli::store(ms, cli::range<double>{.lo = 0, .hi = 10000})(name, v);
               eo.hold.max_hold_seconds = ms / 1e3;
             })
        .add("--busy-gap-ms", "MS",
             "the step-time curve learns only from forwards starting within MS of the previous one (default 1)",
             [&eo](std::string_view name, std::string_view v) {
               double ms = 0;
               cli::store(ms, cli::range<double>{.lo = 0, .hi = 1e6})(name, v);
               eo.speculation.busy_gap_seconds = ms / 1e3;
             })
        .add("--calibration-position", "N",
             "cached tokens each start-up calibration sequence attends to (default 32)",
             cli::store(eo.speculation.calibration_position, cli::between<std::size_t>(0, 1 << 20)))
        .flag("--no-calibrate", "learn the step-time curve online only (faster start)", no_calibrate)
        .flag("--no-anticipate", "do not decode ahead for sessions told to send no drafts (docs/hybrid.md)", no_anticipate)
        .add("--run-ahead", "N",
             "tokens decoded ahead of a session told to send no drafts, sent with its next verdict (default 32)",
             cli::store(eo.speculation.run_ahead, cli::between<std::size_t>(1, 1025)))
        .add("--run-ahead-reply", "N",
             "a request of a session run ahead waits until N tokens are decoded ahead (default 4)",
             cli::store(eo.speculation.run_ahead_reply, cli::between<std::size_t>(1, std::size_t{1} << 20)))
        .add("--max-step-rows", "N", "rows of one batched forward (default 256)", cli::store(eo.max_step_rows, count))
        .add("--prefill-chunk", "N", "prompt tokens one sequence feeds per step (default 128)",
             cli::store(eo.prefill_chunk, count))
        .add("--first-block-wait-ms", "MS",
             "a new session's prefix waits this long for its first verify block, to be fed with it (default 2)",
             [&eo](std::string_view name, std::string_view v) {
               double ms = 0;
               cli::store(ms, cli::range<double>{.lo = 0, .hi = 1e4})(name, v);
               eo.first_block_wait_seconds = ms / 1e3;
             })
        .add("--max-completions", "N", "completions running at once (default 64)", cli::store(eo.max_completions, count))
        .add("--http-threads", "N", "HTTP worker threads (default 16)", cli::store(so.http_threads, count))
        .add("--http-backlog", "N", "connections the HTTP port queues before they are accepted (default 512)",
             cli::store(so.http_backlog, cli::between<int>(1, 1 << 20)))
        .add("--max-body-bytes", "N", "largest request body (default 1048576)", cli::store(so.http.max_body_bytes, count))
        .add("--drain-seconds", "S", "graceful-stop wait for in-flight work (default 10)", cli::store(so.drain_seconds, secs))
        .add("--tls-cert", "PATH", "PEM certificate chain: both ports speak TLS only (with --tls-key)",
             cli::store(so.tls.cert_file))
        .add("--tls-key", "PATH", "PEM private key of --tls-cert", cli::store(so.tls.key_file))
        .add("--tls-client-ca", "PATH", "PEM CA certificates: require client certificates they issued (mutual TLS)",
             cli::store(so.tls.client_ca_file))
        .add("--tls-client-crl", "PATH", "PEM CRLs of the --tls-client-ca CAs: refuse revoked client certificates",
             cli::store(so.tls.client_crl_file))
        .add("--tls-handshake-timeout", "S", "seconds a client has to finish the TLS handshake on the verify port (default 10)",
             cli::store(so.tls.handshake_timeout_seconds, secs))
        .flag("--allow-plaintext", "serve without TLS on a non-loopback --host (e.g. behind a TLS proxy)",
              so.allow_plaintext)
        .add("--api-keys", "FILE", "require these API keys, with per-key limits (docs/security.md); default: open",
             cli::store(keys_path))
        .add("--http-request-timeout", "S", "seconds a connection has to send a whole HTTP request (default 30)",
             cli::store(so.watchdog.request_timeout_seconds, secs))
        .add("--verify-idle-seconds", "S", "an attached verify connection without a frame is closed (default 300)",
             cli::store(so.listener.idle_timeout_seconds, secs))
        .add("--verify-handshake-seconds", "S", "a new verify connection must send its first frame (default 10)",
             cli::store(so.listener.handshake_timeout_seconds, secs));
    if (!p.parse(argc, argv)) return 0;
    mo.threads = threads;
    if (fixed_draft) eo.speculation.fixed = *fixed_draft;
    eo.speculation.calibrate = !no_calibrate;
    eo.speculation.anticipate = !no_anticipate;
    eo.model_id = model_id.empty() ? std::filesystem::path(model_path).stem().string() : model_id;
    if (!keys_path.empty()) so.api_keys = serve::load_api_keys(keys_path);
    const std::size_t key_count = so.api_keys.size();

    cpu::batched_transformer model(model_path, mo);
    std::unique_ptr<cpu::tokenizer> tok;
    serve::text_codec codec;
    if (!tokenizer_path.empty()) {
      tok = std::make_unique<cpu::tokenizer>(tokenizer_path, model.vocab_size());
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
    std::fprintf(stderr, "specdec-serve: model %s (vocab %zu, context %zu) on %s://%s:%u, verify port %u\n",
                 eo.model_id.c_str(), model.vocab_size(), model.context_length(),
                 so.tls.cert_file.empty() ? "http" : "https", so.host.c_str(),
                 static_cast<unsigned>(srv.http_port()), static_cast<unsigned>(srv.verify_port()));
    if (!so.tls.cert_file.empty())
      std::fprintf(stderr, "specdec-serve: TLS public key pin %s (a device's tls_client_options::pinned_keys)\n",
                   hybrid::public_key_pin(so.tls.cert_file).c_str());
    std::string curve;
    for (const auto& [rows, secs] : srv.core().cost_points())
      curve.append(" ").append(std::to_string(static_cast<int>(rows + 0.5))).append(":").append(
          std::to_string(secs * 1e3).substr(0, 6));
    if (!curve.empty()) std::fprintf(stderr, "specdec-serve: step time (rows:ms)%s\n", curve.c_str());
    if (key_count > 0)
      std::fprintf(stderr, "specdec-serve: %zu API keys from %s; both ports require one\n", key_count, keys_path.c_str());
    else
      std::fprintf(stderr, "specdec-serve: no --api-keys: both ports are open to anyone who can reach %s "
                           "(for loopback development)\n", so.host.c_str());
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
