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

  /** `onEvict` sees each body pushed out by newer ones (not those deleted): a backend may spill it to disk. */
  constructor(readonly maxBytes: number, private readonly onEvict?: (id: string, body: Buffer) => void) {}

  get bytes(): number {
    return this.#bytes;
  }

  /** Keeps `body` for `id`; false when it is too big to be kept (the caller stores it elsewhere). */
  put(id: string, body: Buffer): boolean {
    if (body.length > this.maxBytes / 8) return false;
    this.delete(id);
    this.#entries.set(id, body);
    this.#bytes += body.length;
    for (const [oldest, b] of this.#entries) {
      if (this.#bytes <= this.maxBytes) break;
      this.#entries.delete(oldest);
      this.#bytes -= b.length;
      this.onEvict?.(oldest, b);
    }
    return true;
  }

  has(id: string): boolean {
    return this.#entries.has(id);
  }

  /** The cached body, or undefined (its place in the eviction order unchanged). */
  peek(id: string): Buffer | undefined {
    return this.#entries.get(id);
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
