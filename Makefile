# conmon-ts. On a fresh Debian/Ubuntu machine, as root:
#   make demo   build, then run a busybox container through a monitor (installs what is missing)
#   make test   unit and integration suites (installs what is missing)

BUN_VERSION  := 1.4.4
# What the tests drive: the OCI runtimes, a busybox rootfs, the C++ Cap'n Proto reference for the
# interop client, journald for the journald driver test, a WebSocket client for the streaming test.
APT_PACKAGES := runc crun busybox-static capnproto libcapnp-dev g++ pkg-config systemd python3-websockets iproute2 util-linux
# Only the benchmarks compare against these.
BENCH_PACKAGES := conmon hyperfine

BUN := $(shell command -v bun 2>/dev/null || echo /usr/local/bin/bun)
export PATH := /usr/local/bin:/usr/sbin:/sbin:$(PATH)

.PHONY: all deps bench-deps build schema test demo release bench clean

all: build

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@if ! command -v bun >/dev/null 2>&1; then \
	  command -v npm >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; }; \
	  echo "installing bun $(BUN_VERSION) from the npm registry"; \
	  npm install -g --silent bun@$(BUN_VERSION); \
	fi
	@bun --version >/dev/null
	@bun install --frozen-lockfile --silent

bench-deps: deps
	@missing=""; for p in $(BENCH_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

build: deps
	bun build.ts

schema: deps
	bun schema/generate.ts

test: deps build
	bun test --timeout 60000

demo: deps build
	bun contrib/demo.ts

release: deps
	bun build.ts --release

bench: bench-deps build
	bun bench/run.ts

clean:
	rm -rf dist .cache
