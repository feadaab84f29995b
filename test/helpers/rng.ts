// Deterministic randomness for table-heavy unit tests (mulberry32): the same seed gives the same
// cases on every run, so a failure can be replayed.

export function rng(seed: number) {
  let s = seed >>> 0;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (n: number) => Math.floor(next() * n),
    u32: () => Math.floor(next() * 4294967296),
    bool: () => next() < 0.5,
    pick: <T>(xs: readonly T[]) => xs[Math.floor(next() * xs.length)]!,
  };
}

export type Rng = ReturnType<typeof rng>;
