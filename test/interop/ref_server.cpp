// Reference Conmon server on Debian's libcapnp-rpc: the baseline our Bun server is compared to
// (interop client development, bench/). It implements only `version`; reopenLogContainer and
// setWindowSizeContainer answer as upstream does for an unknown container; everything else is
// left to the generated base class, which answers UNIMPLEMENTED.
//
//   conmon-ref-server <socket-path>
//
// Prints {"listening":"<path>","pid":<pid>} once the socket accepts connections; runs until killed.
#include "conmon.capnp.h"

#include <capnp/ez-rpc.h>
#include <kj/async.h>
#include <kj/debug.h>

#include <cstdio>
#include <unistd.h>

namespace {

class RefConmon final : public Conmon::Server {
 protected:
  kj::Promise<void> version(VersionContext ctx) override {
    bool verbose = ctx.getParams().getRequest().getVerbose();
    auto r = ctx.getResults().initResponse();
    r.setProcessId(static_cast<uint32_t>(getpid()));
    r.setVersion("0.0.0-ref");
    r.setTag("ref");
    r.setCommit("0000000000000000000000000000000000000000");
    r.setBuildDate("1970-01-01 00:00:00");
    r.setTarget("x86_64-unknown-linux-gnu");
    r.setRustVersion("none (C++ reference server)");
    r.setCargoVersion("none (C++ reference server)");
    r.setCargoTree(verbose ? "conmon-ref-server (libcapnp-rpc)" : "");
    return kj::READY_NOW;
  }

  kj::Promise<void> reopenLogContainer(ReopenLogContainerContext) override {
    return KJ_EXCEPTION(FAILED, "child not available");
  }

  kj::Promise<void> setWindowSizeContainer(SetWindowSizeContainerContext) override {
    return KJ_EXCEPTION(FAILED, "child not available");
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: conmon-ref-server <socket-path>\n");
    return 2;
  }
  unlink(argv[1]);  // a stale socket file would make bind() fail
  capnp::EzRpcServer server(kj::heap<RefConmon>(), kj::str("unix:", argv[1]));
  auto& ws = server.getWaitScope();
  server.getPort().wait(ws);  // resolves once bound and listening
  std::printf("{\"listening\":\"%s\",\"pid\":%d}\n", argv[1], static_cast<int>(getpid()));
  std::fflush(stdout);
  kj::NEVER_DONE.wait(ws);
}
