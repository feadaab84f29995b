// Results of a call as bytes: the segments of the capnp-es message a handler filled, spliced by
// the connection into its hand-built Return frame (envelope.ts), and results encoded once and
// sent again for every call whose answer cannot change (the `version` RPC).

import type { Struct } from "capnp-es";
import { messageSegments, newMessage } from "./messages.ts";

/** Results encoded once; sending them copies bytes and builds nothing. */
export class EncodedResults {
  private constructor(readonly segments: readonly Uint8Array[]) {}

  /** Results written by hand (SegmentBuilder): segment 0 starts with the root pointer. Not copied. */
  static fromSegments(segments: readonly Uint8Array[]): EncodedResults {
    return new EncodedResults(segments);
  }

  /** Snapshots the message `results` lives in (a copy: later writes to it are not seen). */
  static capture(results: Struct | LazyResults): EncodedResults {
    return new EncodedResults(messageSegments(results.segment.message).map((s) => s.slice()));
  }

  /** Builds results of `ResultsClass` with `fill` and keeps their bytes. */
  static build<T extends Struct>(ResultsClass: new (...args: any[]) => T, fill: (results: T) => void): EncodedResults {
    const message = newMessage();
    fill(message.initRoot(ResultsClass as any) as T);
    return EncodedResults.capture(message.getRoot(ResultsClass as any));
  }

  get byteLength(): number {
    let n = 0;
    for (const s of this.segments) n += s.byteLength;
    return n;
  }
}

/**
 * The results a handler fills, as the connection hands them over: the capnp-es message is made
 * on first use, so a handler that answers with replyWith() (version) never pays for one.
 * Handlers use `_initResponse()`; `struct` is the message's root for the rest.
 */
export class LazyResults {
  private made?: Struct;
  /** Set by replyWith(): the bytes to answer with instead of the struct. */
  reply?: EncodedResults;

  constructor(private readonly make: () => Struct) {}

  get struct(): Struct {
    return (this.made ??= this.make());
  }

  get segment(): Struct["segment"] {
    return this.struct.segment;
  }

  _initResponse(): any {
    return (this.struct as any)._initResponse();
  }
}

/**
 * Answers the current call with `encoded` instead of what `results` holds. For handlers whose
 * results are the same for every call (and must be identical byte for byte to what filling
 * `results` would produce); the connection checks this after the handler settles.
 */
export function replyWith(results: LazyResults, encoded: EncodedResults): void {
  results.reply = encoded;
}
