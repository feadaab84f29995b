#!/usr/bin/python3
"""An independent client of conmonrs' streaming server, on Debian's python3-websockets.

It speaks the Kubernetes channel protocols from their description, not from our TypeScript,
asserts the framing itself, and prints one JSON object for the bun test to check further.

  streaming_client.py exec URL [--protocol P]... [--stdin TEXT] [--close-stdin]
                      [--expect-stdout S] [--expect-stderr S] [--expect-exit N]
  streaming_client.py port-forward URL --port N [--protocol P]... [--send TEXT] [--close-send]

Exit status 0 with the JSON on stdout, or non-zero with the failed assertion on stderr.
"""

import argparse
import asyncio
import json
import struct
import sys

import websockets

STDIN, STDOUT, STDERR, STATUS, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
TIMEOUT = 30


def fail(message):
    raise AssertionError(message)


def check(condition, message):
    if not condition:
        fail(message)


async def receive_all(ws):
    """Every message until the server closes; returns (messages, close code, close reason)."""
    messages = []
    while True:
        try:
            message = await asyncio.wait_for(ws.recv(), TIMEOUT)
        except websockets.exceptions.ConnectionClosed:
            return messages, ws.close_code, ws.close_reason
        check(isinstance(message, bytes), f"text message from the server: {message!r}")
        check(len(message) >= 1, "empty binary message (no channel byte)")
        messages.append(message)


def check_status(status, expect_exit):
    """The metav1.Status client-go's v4/v5 error decoder reads from channel 3."""
    check(status.get("metadata") == {}, f"status without empty metadata: {status}")
    if expect_exit == 0:
        check(status == {"metadata": {}, "status": "Success"}, f"success status: {status}")
        return
    check(status.get("status") == "Failure", f"failure status: {status}")
    check(status.get("reason") == "NonZeroExitCode", f"reason: {status}")
    causes = status.get("details", {}).get("causes", [])
    check(causes == [{"reason": "ExitCode", "message": str(expect_exit)}], f"causes: {causes}")
    check(status.get("message", "").startswith("command terminated with non-zero exit code"), f"message: {status}")


async def run_exec(args):
    async with websockets.connect(args.url, subprotocols=args.protocol or None, max_size=None) as ws:
        if args.protocol:
            check(ws.subprotocol == args.protocol[0], f"negotiated {ws.subprotocol!r}, offered {args.protocol}")
        if args.stdin is not None:
            await ws.send(bytes([STDIN]) + args.stdin.encode())
        if args.close_stdin:
            await ws.send(bytes([CLOSE, STDIN]))
        messages, code, reason = await receive_all(ws)

    streams = {STDOUT: b"", STDERR: b""}
    statuses = []
    channels = []
    for message in messages:
        channel, payload = message[0], message[1:]
        channels.append(channel)
        if channel in streams:
            check(not statuses, f"output on channel {channel} after the status")
            streams[channel] += payload
        elif channel == STATUS:
            statuses.append(json.loads(payload))
        else:
            fail(f"message on unexpected channel {channel}")
    check(len(statuses) == 1, f"expected one status message, got {len(statuses)}")
    check(channels[-1] == STATUS, "the status is not the last message")
    check(code == 1000, f"close code {code} {reason!r}")
    if args.expect_exit is not None:
        check_status(statuses[0], args.expect_exit)
    stdout, stderr = streams[STDOUT].decode(), streams[STDERR].decode()
    if args.expect_stdout is not None:
        check(stdout == args.expect_stdout, f"stdout {stdout!r} != {args.expect_stdout!r}")
    if args.expect_stderr is not None:
        check(stderr == args.expect_stderr, f"stderr {stderr!r} != {args.expect_stderr!r}")
    return {
        "protocol": ws.subprotocol,
        "stdout": stdout,
        "stderr": stderr,
        "status": statuses[0],
        "channels": channels,
        "closeCode": code,
        "closeReason": reason,
    }


async def run_port_forward(args):
    async with websockets.connect(args.url, subprotocols=args.protocol or None, max_size=None) as ws:
        if args.send is not None:
            await ws.send(bytes([0]) + args.send.encode())
        if args.close_send:
            await ws.send(bytes([CLOSE, 0]))
        messages, code, reason = await receive_all(ws)

    data, errors = b"", b""
    prefix = struct.pack("<H", args.port)
    seen_prefix = {0: False, 1: False}
    for message in messages:
        channel, payload = message[0], message[1:]
        check(channel in (0, 1), f"message on channel {channel} with one port forwarded")
        if not seen_prefix[channel]:
            # Kubernetes' websocket port-forward: the first message of each channel is the port.
            check(payload == prefix, f"first message on channel {channel} is {payload!r}, not the port")
            seen_prefix[channel] = True
            continue
        if channel == 0:
            data += payload
        else:
            errors += payload
    check(all(seen_prefix.values()), "a channel never announced its port")
    check(code == 1000, f"close code {code} {reason!r}")
    return {"protocol": ws.subprotocol, "data": data.decode(errors="replace"), "error": errors.decode(), "closeCode": code}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["exec", "port-forward"])
    parser.add_argument("url")
    parser.add_argument("--protocol", action="append", default=[])
    parser.add_argument("--stdin")
    parser.add_argument("--close-stdin", action="store_true")
    parser.add_argument("--expect-stdout")
    parser.add_argument("--expect-stderr")
    parser.add_argument("--expect-exit", type=int)
    parser.add_argument("--port", type=int)
    parser.add_argument("--send")
    parser.add_argument("--close-send", action="store_true")
    args = parser.parse_args()
    url = args.url.replace("http://", "ws://", 1)
    if args.mode == "port-forward":
        check(args.port is not None, "--port is required for port-forward")
        url += ("&" if "?" in url else "?") + f"port={args.port}"
    args.url = url
    runner = run_exec if args.mode == "exec" else run_port_forward
    try:
        result = asyncio.run(asyncio.wait_for(runner(args), TIMEOUT * 2))
    except AssertionError as err:
        print(f"streaming_client: {err}", file=sys.stderr)
        sys.exit(1)
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
