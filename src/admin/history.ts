/**
 * Queue depth over time, kept by the admin server so the console's chart starts with the last
 * day instead of an empty plot (and so a script can fetch it): every `everyMs` (default 10 s)
 * the counts by state and the rates are sampled; a day of samples is kept in memory (8,640 at
 * the default), oldest dropped first. Memory only: a restart starts a new history.
 */
import type { DepthSample, Rates } from '../api-types.js';
import type { Logger } from '../logger.js';
import type { Queue } from '../queue/types.js';

export class DepthHistory {
  readonly everyMs: number;
  readonly keepMs: number;
  #samples: DepthSample[] = [];
  #timer: NodeJS.Timeout | undefined;

  constructor(private readonly o: { queue: Queue; rates: () => Promise<Rates>; logger: Logger; everyMs?: number; keepMs?: number }) {
    this.everyMs = o.everyMs ?? 10_000;
    this.keepMs = o.keepMs ?? 24 * 3_600_000;
  }

  start(): void {
    void this.sample();
    this.#timer = setInterval(() => void this.sample(), this.everyMs);
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  /** Samples at or after `since` (ms), oldest first. */
  since(since = 0): DepthSample[] {
    if (since <= 0) return [...this.#samples];
    return this.#samples.filter((s) => s.at >= since);
  }

  async sample(): Promise<DepthSample | undefined> {
    try {
      const [stats, rates] = await Promise.all([this.o.queue.stats({ topN: 1 }), this.o.rates()]);
      const s: DepthSample = { at: stats.at, byState: stats.byState, rates };
      this.#samples.push(s);
      const cutoff = s.at - this.keepMs;
      while (this.#samples.length && this.#samples[0]!.at < cutoff) this.#samples.shift();
      return s;
    } catch (err) {
      // The queue may be briefly unavailable (Kafka down): a gap in the chart, not an error page.
      this.o.logger.debug({ err }, 'admin: depth sample failed');
      return undefined;
    }
  }
}
