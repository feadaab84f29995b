// The network-namespace switch of port-forward: sockaddr layout, the main thread always back in
// its own namespace, and a connection made inside a namespace from `ip netns add` (root only).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { readlinkSync } from "node:fs";
import { LoopbackConnection, NetNamespace, loopbackSockaddr } from "../../ffi/netns-tcp.ts";

const ownNs = () => readlinkSync("/proc/thread-self/ns/net");

test("sockaddr_in / sockaddr_in6 for the loopback", () => {
  expect([...loopbackSockaddr("ipv4", 8080)]).toEqual([2, 0, 0x1f, 0x90, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
  const v6 = loopbackSockaddr("ipv6", 443);
  expect(v6.length).toBe(28);
  expect([...v6.subarray(0, 4)]).toEqual([10, 0, 0x01, 0xbb]);
  expect([...v6.subarray(8, 24)]).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
});

test("an empty path is the server's own namespace; a missing one fails to open", () => {
  const host = NetNamespace.open("");
  expect(host.run(() => ownNs())).toBe(ownNs());
  host.close();
  expect(() => NetNamespace.open("/nonexistent/netns")).toThrow(/ENOENT/);
});

const canMakeNetns = process.getuid?.() === 0 && Bun.spawnSync(["ip", "-V"]).exitCode === 0;

describe.skipIf(!canMakeNetns)("inside a namespace from `ip netns add`", () => {
  const name = `conmon-ts-unit-${randomBytes(4).toString("hex")}`;
  const path = `/var/run/netns/${name}`;
  let listener: Bun.Subprocess<"ignore", "pipe", "inherit"> | undefined;
  let port = 0;

  beforeAll(async () => {
    expect(Bun.spawnSync(["ip", "netns", "add", name]).exitCode).toBe(0);
    expect(Bun.spawnSync(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"]).exitCode).toBe(0);
    // A one-shot server on ::1 only, inside the namespace: answers the pod's netns inode.
    listener = Bun.spawn(
      [
        "ip", "netns", "exec", name, "/usr/bin/python3", "-c",
        [
          "import os, socket",
          "s = socket.socket(socket.AF_INET6); s.bind(('::1', 0)); s.listen()",
          "print(s.getsockname()[1], flush=True)",
          "c, _ = s.accept(); c.sendall(os.readlink('/proc/self/ns/net').encode()); c.close()",
        ].join("\n"),
      ],
      { stdout: "pipe", stderr: "inherit" },
    );
    const reader = listener.stdout.getReader();
    const { value } = await reader.read();
    reader.releaseLock();
    port = Number(new TextDecoder().decode(value).trim());
    expect(port).toBeGreaterThan(0);
  });

  afterAll(() => {
    listener?.kill();
    Bun.spawnSync(["ip", "netns", "delete", name]);
  });

  test("run() switches the calling thread and always switches back, also when fn throws", () => {
    const ns = NetNamespace.open(path);
    try {
      const before = ownNs();
      const inside = ns.run(() => ownNs());
      expect(inside).not.toBe(before);
      expect(ownNs()).toBe(before);
      expect(() =>
        ns.run(() => {
          throw new Error("inside");
        }),
      ).toThrow("inside");
      expect(ownNs()).toBe(before);
    } finally {
      ns.close();
    }
  });

  test("a connection to ::1 inside the namespace (IPv4 refused first), driven from outside", async () => {
    const ns = NetNamespace.open(path);
    const received: Uint8Array[] = [];
    let family = "";
    const done = new Promise<void>((resolve, reject) => {
      const conn = new LoopbackConnection(ns, port, {
        onConnected: (f) => (family = f),
        onData: (chunk) => {
          received.push(chunk.slice());
          return true;
        },
        onEnd: () => resolve(),
        onError: reject,
        onWriteDrained: () => {},
      });
      conn.connect();
    });
    try {
      await done;
      expect(family).toBe("ipv6");
      const podNs = new TextDecoder().decode(Buffer.concat(received));
      expect(podNs).toMatch(/^net:\[\d+\]$/);
      expect(podNs).not.toBe(ownNs());
    } finally {
      ns.close();
    }
  });
});
