// The session store behind the streaming URLs: single use, 25 at most (oldest evicted), one hour.
import { expect, test } from "bun:test";
import { SESSION_CAPACITY, SESSION_MAX_AGE_MS, SessionStore } from "../../src/streaming/sessions.ts";

const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

test("upstream's limits", () => {
  expect(SESSION_CAPACITY).toBe(25);
  expect(SESSION_MAX_AGE_MS).toBe(3_600_000);
});

test("tokens are random UUIDv4s; a session is claimed once", () => {
  const store = new SessionStore<string>();
  const a = store.add("a");
  const b = store.add("b");
  expect(a).toMatch(UUID_V4);
  expect(a).not.toBe(b);
  expect(store.peek(a)).toBe("a");
  expect(store.peek(a)).toBe("a"); // peeking does not claim
  expect(store.take(a)).toBe("a");
  expect(store.take(a)).toBeUndefined();
  expect(store.peek(a)).toBeUndefined();
  expect(store.take("not-a-token")).toBeUndefined();
  expect(store.size).toBe(1);
});

test("the 26th session evicts the oldest, and only it", () => {
  const store = new SessionStore<number>();
  const tokens = Array.from({ length: 26 }, (_, i) => store.add(i));
  expect(store.size).toBe(25);
  expect(store.peek(tokens[0]!)).toBeUndefined();
  for (let i = 1; i < 26; i++) expect(store.peek(tokens[i]!)).toBe(i);
});

test("sessions expire after an hour (injected clock)", () => {
  let now = 1_000;
  const store = new SessionStore<string>({ now: () => now });
  const old = store.add("old");
  now += SESSION_MAX_AGE_MS - 1;
  const young = store.add("young");
  expect(store.peek(old)).toBe("old");
  now += 1;
  expect(store.peek(old)).toBeUndefined();
  expect(store.take(old)).toBeUndefined();
  expect(store.peek(young)).toBe("young");
  now += SESSION_MAX_AGE_MS;
  expect(store.take(young)).toBeUndefined();
  expect(store.size).toBe(0);
});

test("expired sessions do not count against the capacity", () => {
  let now = 0;
  const store = new SessionStore<number>({ capacity: 2, maxAgeMs: 10, now: () => now });
  store.add(1);
  now = 5;
  const second = store.add(2);
  now = 10; // the first expired
  const third = store.add(3);
  expect(store.peek(second)).toBe(2);
  expect(store.peek(third)).toBe(3);
});
