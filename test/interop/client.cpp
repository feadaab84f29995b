// Interop client: Debian's libcapnp-rpc (the reference C++ implementation) talking to a Conmon
// server over unix:<sock>. Prints one JSON object per line so bun tests can assert on the results.
// RPC exceptions are results, not crashes: they are printed as {"error":<type>,"reason":...}.
//
//   version <sock> [--verbose]          bootstrap, wait for it, call version
//   pipeline <sock>                     call version on the unresolved bootstrap promise
//   unknown-method <sock> [<method> [<interfaceId>]]
//                                       call a method the server does not have (default @42 on
//                                       Conmon), then version on the same connection
//   inflight <sock> <n>                 n version calls at once
//   bench <sock> <seconds> <inflight>   version calls/s with <inflight> calls outstanding
//   call <sock> reopen <id>
//   call <sock> setWindowSize <id> <width> <height>
//   call <sock> startFdSocket
//   call <sock> execSync <id> <arg>...  one exec-sync (cgroupfs, no timeout); "us" is the call's
//                                       round trip, measured after the bootstrap resolved
//   call <sock> create <id> <bundle> <exitPath> [<criLogPath>]
//                                       one createContainer (cgroupfs), "us" as for execSync
//
// Exit status: 0 when the command ran (whatever the RPCs answered), 1 on a client-side failure
// outside any RPC, 2 on bad usage.
#include "conmon.capnp.h"

#include <capnp/ez-rpc.h>
#include <kj/async.h>
#include <kj/exception.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr uint64_t CONMON_INTERFACE_ID = 0xb737e899dd6633f1ull;

// Minimal JSON line writer; keys are fixed ASCII, values may be arbitrary server text.
class Json {
 public:
  Json& str(const char* key, kj::StringPtr v) {
    sep(key);
    out += '"';
    for (char c : v) {
      unsigned char u = static_cast<unsigned char>(c);
      if (c == '"' || c == '\\') {
        out += '\\';
        out += c;
      } else if (u < 0x20) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\u%04x", u);
        out += buf;
      } else {
        out += c;
      }
    }
    out += '"';
    return *this;
  }
  Json& num(const char* key, double v) {
    sep(key);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.15g", v);
    out += buf;
    return *this;
  }
  Json& boolean(const char* key, bool v) {
    sep(key);
    out += v ? "true" : "false";
    return *this;
  }
  void print() {
    std::printf("%s}\n", out.c_str());
    std::fflush(stdout);
  }

 private:
  void sep(const char* key) {
    out += out.size() == 1 ? "\"" : ",\"";
    out += key;
    out += "\":";
  }
  std::string out = "{";
};

const char* typeName(kj::Exception::Type t) {
  switch (t) {
    case kj::Exception::Type::FAILED: return "FAILED";
    case kj::Exception::Type::OVERLOADED: return "OVERLOADED";
    case kj::Exception::Type::DISCONNECTED: return "DISCONNECTED";
    case kj::Exception::Type::UNIMPLEMENTED: return "UNIMPLEMENTED";
  }
  return "UNKNOWN";
}

// libcapnp prefixes exceptions received over the wire; strip it so tests can compare the
// server's own reason text, but say whether it was there.
Json& exception(Json& j, const kj::Exception& e) {
  kj::StringPtr d = e.getDescription();
  constexpr kj::StringPtr REMOTE = "remote exception: "_kj;
  bool remote = d.startsWith(REMOTE);
  return j.str("error", typeName(e.getType())).str("reason", remote ? d.slice(REMOTE.size()) : d).boolean("remote", remote);
}

void printVersion(Json& j, Conmon::VersionResponse::Reader r) {
  j.num("processId", r.getProcessId())
      .str("version", r.getVersion())
      .str("tag", r.getTag())
      .str("commit", r.getCommit())
      .str("buildDate", r.getBuildDate())
      .str("target", r.getTarget())
      .str("rustVersion", r.getRustVersion())
      .str("cargoVersion", r.getCargoVersion())
      .str("cargoTree", r.getCargoTree())
      .print();
}

// Waits for a version call and prints its response or exception, tagged with `step`.
void waitVersion(kj::WaitScope& ws, kj::Promise<capnp::Response<Conmon::VersionResults>> p, const char* step) {
  Json j;
  j.str("step", step);
  try {
    auto resp = p.wait(ws);
    printVersion(j.boolean("ok", true), resp.getResponse());
  } catch (const kj::Exception& e) {
    exception(j.boolean("ok", false), e).print();
  }
}

Conmon::Client resolvedMain(capnp::EzRpcClient& client) {
  auto cap = client.getMain<Conmon>();
  cap.whenResolved().wait(client.getWaitScope());
  return cap;
}

int cmdVersion(capnp::EzRpcClient& client, bool verbose) {
  auto cap = resolvedMain(client);
  auto req = cap.versionRequest();
  req.initRequest().setVerbose(verbose);
  waitVersion(client.getWaitScope(), req.send(), "version");
  return 0;
}

int cmdPipeline(capnp::EzRpcClient& client) {
  // The request goes out before the event loop has run, so the bootstrap Return cannot have
  // arrived: the Call targets promisedAnswer(bootstrap question), as go-capnp does.
  auto req = client.getMain<Conmon>().versionRequest();
  waitVersion(client.getWaitScope(), req.send(), "pipeline");
  return 0;
}

int cmdUnknownMethod(capnp::EzRpcClient& client, uint16_t methodId, uint64_t interfaceId) {
  auto& ws = client.getWaitScope();
  auto cap = resolvedMain(client);
  auto req = cap.typelessRequest(interfaceId, methodId, nullptr);
  // Shaped like every real Conmon params struct (one pointer, `request`), so only the unknown
  // method id can be the reason for the failure.
  req.initAsAnyStruct(0, 1).getPointerSection()[0].initAsAnyStruct(1, 1);
  Json j;
  j.str("step", "unknown-method").num("methodId", methodId).str("interfaceId", kj::str("0x", kj::hex(interfaceId)));
  try {
    req.send().wait(ws);
    j.boolean("ok", true).print();
  } catch (const kj::Exception& e) {
    exception(j.boolean("ok", false), e).print();
  }
  waitVersion(ws, cap.versionRequest().send(), "version-after");
  return 0;
}

int cmdInflight(capnp::EzRpcClient& client, unsigned n) {
  auto& ws = client.getWaitScope();
  auto cap = resolvedMain(client);
  unsigned ok = 0, failed = 0;
  kj::Maybe<kj::Exception> firstError;
  auto promises = kj::heapArrayBuilder<kj::Promise<void>>(n);
  for (unsigned i = 0; i < n; i++) {
    promises.add(cap.versionRequest().send().then(
        [&](capnp::Response<Conmon::VersionResults>&& r) {
          if (r.getResponse().getVersion().size() > 0) ok++; else failed++;
        },
        [&](kj::Exception&& e) {
          failed++;
          if (firstError == nullptr) firstError = kj::mv(e);
        }));
  }
  kj::joinPromises(promises.finish()).wait(ws);
  Json j;
  j.str("step", "inflight").num("sent", n).num("ok", ok).num("failed", failed);
  KJ_IF_MAYBE(e, firstError) { exception(j, *e); }
  j.print();
  return 0;
}

struct Bench {
  explicit Bench(Conmon::Client cap) : cap(kj::mv(cap)) {}
  Conmon::Client cap;
  std::chrono::steady_clock::time_point deadline;
  uint64_t calls = 0;
  uint64_t errors = 0;
  std::vector<double> latencyUs;
  kj::Maybe<kj::Exception> firstError;
};

// One lane: keeps exactly one call outstanding until the deadline. A failing lane stops, so a
// dead server ends the run instead of spinning.
kj::Promise<void> benchLane(Bench& b) {
  auto t0 = std::chrono::steady_clock::now();
  if (t0 >= b.deadline) return kj::READY_NOW;
  return b.cap.versionRequest().send().then(
      [&b, t0](capnp::Response<Conmon::VersionResults>&&) -> kj::Promise<void> {
        b.latencyUs.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
        b.calls++;
        return benchLane(b);
      },
      [&b](kj::Exception&& e) -> kj::Promise<void> {
        b.errors++;
        if (b.firstError == nullptr) b.firstError = kj::mv(e);
        return kj::READY_NOW;
      });
}

int cmdBench(capnp::EzRpcClient& client, double seconds, unsigned inflight) {
  auto& ws = client.getWaitScope();
  Bench b(resolvedMain(client));
  auto start = std::chrono::steady_clock::now();
  b.deadline = start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(seconds));
  auto lanes = kj::heapArrayBuilder<kj::Promise<void>>(inflight);
  for (unsigned i = 0; i < inflight; i++) lanes.add(benchLane(b));
  kj::joinPromises(lanes.finish()).wait(ws);
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  auto pct = [&](double q) {
    if (b.latencyUs.empty()) return 0.0;
    auto k = std::min(b.latencyUs.size() - 1, static_cast<size_t>(q * b.latencyUs.size()));
    std::nth_element(b.latencyUs.begin(), b.latencyUs.begin() + k, b.latencyUs.end());
    return b.latencyUs[k];
  };
  Json j;
  j.str("step", "bench").num("inflight", inflight).num("calls", b.calls).num("seconds", elapsed)
      .num("rate", b.calls / elapsed).num("p50us", pct(0.5)).num("p90us", pct(0.9)).num("p99us", pct(0.99))
      .num("errors", b.errors);
  KJ_IF_MAYBE(e, b.firstError) { exception(j, *e); }
  j.print();
  return 0;
}

// Sends a request and prints {"step":..,"ok":true,"us":..,...} or the exception; `onOk` adds
// result fields. "us" is the round trip of this call alone (the capability is already resolved).
template <typename Req, typename F>
void callAndPrint(kj::WaitScope& ws, const char* step, Req& req, F onOk) {
  Json j;
  j.str("step", step);
  try {
    auto t0 = std::chrono::steady_clock::now();
    auto resp = req.send().wait(ws);
    double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    onOk(j.boolean("ok", true).num("us", us), resp.getResponse());
  } catch (const kj::Exception& e) {
    exception(j.boolean("ok", false), e);
  }
  j.print();
}

kj::String bytesText(capnp::Data::Reader d) {
  return kj::heapString(reinterpret_cast<const char*>(d.begin()), d.size());
}

int usage() {
  std::fprintf(stderr,
               "usage: conmon-interop-client version <sock> [--verbose]\n"
               "       conmon-interop-client pipeline <sock>\n"
               "       conmon-interop-client unknown-method <sock> [<method> [<interfaceId>]]\n"
               "       conmon-interop-client inflight <sock> <n>\n"
               "       conmon-interop-client bench <sock> <seconds> <inflight>\n"
               "       conmon-interop-client call <sock> reopen <id>\n"
               "       conmon-interop-client call <sock> setWindowSize <id> <width> <height>\n"
               "       conmon-interop-client call <sock> startFdSocket\n"
               "       conmon-interop-client call <sock> execSync <id> <arg>...\n"
               "       conmon-interop-client call <sock> create <id> <bundle> <exitPath> [<criLogPath>]\n");
  return 2;
}

int cmdCall(capnp::EzRpcClient& client, int argc, char** argv) {
  if (argc < 1) return usage();
  auto& ws = client.getWaitScope();
  std::string m = argv[0];
  auto ignore = [](Json&, auto) {};
  if (m == "reopen" && argc == 2) {
    auto cap = resolvedMain(client);
    auto req = cap.reopenLogContainerRequest();
    req.initRequest().setId(argv[1]);
    callAndPrint(ws, "reopen", req, ignore);
  } else if (m == "setWindowSize" && argc == 4) {
    auto cap = resolvedMain(client);
    auto req = cap.setWindowSizeContainerRequest();
    auto r = req.initRequest();
    r.setId(argv[1]);
    r.setWidth(static_cast<uint16_t>(std::strtoul(argv[2], nullptr, 10)));
    r.setHeight(static_cast<uint16_t>(std::strtoul(argv[3], nullptr, 10)));
    callAndPrint(ws, "setWindowSize", req, ignore);
  } else if (m == "startFdSocket" && argc == 1) {
    auto cap = resolvedMain(client);
    auto req = cap.startFdSocketRequest();
    req.initRequest();
    callAndPrint(ws, "startFdSocket", req, [](Json& j, Conmon::StartFdSocketResponse::Reader r) { j.str("path", r.getPath()); });
  } else if (m == "execSync" && argc >= 3) {
    auto cap = resolvedMain(client);
    auto req = cap.execSyncContainerRequest();
    auto r = req.initRequest();
    r.setId(argv[1]);
    auto command = r.initCommand(static_cast<unsigned>(argc - 2));
    for (int i = 2; i < argc; i++) command.set(static_cast<unsigned>(i - 2), argv[i]);
    r.setCgroupManager(Conmon::CgroupManager::CGROUPFS);
    callAndPrint(ws, "execSync", req, [](Json& j, Conmon::ExecSyncContainerResponse::Reader r) {
      j.num("exitCode", r.getExitCode()).boolean("timedOut", r.getTimedOut());
      j.str("stdout", bytesText(r.getStdout())).str("stderr", bytesText(r.getStderr()));
    });
  } else if (m == "create" && (argc == 4 || argc == 5)) {
    auto cap = resolvedMain(client);
    auto req = cap.createContainerRequest();
    auto r = req.initRequest();
    r.setId(argv[1]);
    r.setBundlePath(argv[2]);
    r.initExitPaths(1).set(0, argv[3]);
    if (argc == 5) {
      auto driver = r.initLogDrivers(1)[0];
      driver.setType(Conmon::LogDriver::Type::CONTAINER_RUNTIME_INTERFACE);
      driver.setPath(argv[4]);
    }
    r.setCgroupManager(Conmon::CgroupManager::CGROUPFS);
    callAndPrint(ws, "create", req, [](Json& j, Conmon::CreateContainerResponse::Reader r) {
      j.num("containerPid", r.getContainerPid());
    });
  } else {
    return usage();
  }
  return 0;
}

int run(int argc, char** argv) {
  if (argc < 3) return usage();
  std::string cmd = argv[1];
  // Connection setup errors (no such socket, refused) surface as exceptions from the first wait.
  capnp::EzRpcClient client(kj::str("unix:", argv[2]));
  if (cmd == "version" && (argc == 3 || (argc == 4 && std::strcmp(argv[3], "--verbose") == 0))) {
    return cmdVersion(client, argc == 4);
  } else if (cmd == "pipeline" && argc == 3) {
    return cmdPipeline(client);
  } else if (cmd == "unknown-method" && argc >= 3 && argc <= 5) {
    uint16_t method = argc >= 4 ? static_cast<uint16_t>(std::strtoul(argv[3], nullptr, 0)) : 42;
    uint64_t iface = argc >= 5 ? std::strtoull(argv[4], nullptr, 0) : CONMON_INTERFACE_ID;
    return cmdUnknownMethod(client, method, iface);
  } else if (cmd == "inflight" && argc == 4) {
    return cmdInflight(client, static_cast<unsigned>(std::strtoul(argv[3], nullptr, 10)));
  } else if (cmd == "bench" && argc == 5) {
    unsigned inflight = static_cast<unsigned>(std::strtoul(argv[4], nullptr, 10));
    if (inflight == 0) return usage();
    return cmdBench(client, std::strtod(argv[3], nullptr), inflight);
  } else if (cmd == "call") {
    return cmdCall(client, argc - 3, argv + 3);
  }
  return usage();
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const kj::Exception& e) {
    // Outside any single RPC: connecting or bootstrapping failed.
    Json j;
    exception(j.str("step", "connect").boolean("ok", false), e).print();
    return 1;
  }
}
