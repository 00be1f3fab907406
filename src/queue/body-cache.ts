/**
 * Bodies of recently enqueued mail, kept in memory so that the delivery which usually follows
 * within milliseconds does not read them back from disk (open, read, close per mail was a tenth
 * of the CPU of end-to-end delivery). Only a cache: the stored copy stays the truth, a miss
 * reads it, and a backend drops a mail's entry when its body goes (finished, removed).
 *
 * Bounded by bytes; the oldest entry goes first (a Map keeps insertion order). Bodies larger
 * than an eighth of the budget are not kept: a few big mails must not push out many small ones.
 */
import { Readable } from 'node:stream';

export class BodyCache {
  readonly #entries = new Map<string, Buffer>();
  #bytes = 0;

  constructor(readonly maxBytes: number) {}

  get bytes(): number {
    return this.#bytes;
  }

  put(id: string, body: Buffer): void {
    if (body.length > this.maxBytes / 8) return;
    this.delete(id);
    this.#entries.set(id, body);
    this.#bytes += body.length;
    for (const [oldest, b] of this.#entries) {
      if (this.#bytes <= this.maxBytes) break;
      this.#entries.delete(oldest);
      this.#bytes -= b.length;
    }
  }

  /** A stream over the cached body, or undefined on a miss. */
  stream(id: string): NodeJS.ReadableStream | undefined {
    const body = this.#entries.get(id);
    return body ? Readable.from([body], { objectMode: false }) : undefined;
  }

  delete(id: string): void {
    const body = this.#entries.get(id);
    if (!body) return;
    this.#entries.delete(id);
    this.#bytes -= body.length;
  }

  clear(): void {
    this.#entries.clear();
    this.#bytes = 0;
  }
}
