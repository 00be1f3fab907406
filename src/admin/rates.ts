/**
 * Ingress and delivery rates for GET /api/stats, computed from the Prometheus counters (the
 * same numbers /metrics exports), over a sliding window: the counters are sampled every few
 * seconds, and a rate is (now − the oldest sample in the window) / elapsed time. Nothing is
 * counted twice and no stage has to report rates separately.
 */
import type { Counter } from 'prom-client';
import type { Rates } from '../api-types.js';
import type { Metrics } from '../metrics.js';

export type { Rates };

interface Sample {
  at: number;
  accepted: number;
  delivered: number;
  deferred: number;
  bounced: number;
  /** spoolhouse_rejected_total by its reason label (their sum: the refusals). */
  refusedBy: Record<string, number>;
}

async function total(counter: Counter<string>): Promise<number> {
  const { values } = await counter.get();
  return values.reduce((sum, v) => sum + v.value, 0);
}

async function byLabel(counter: Counter<string>, label: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const v of (await counter.get()).values) {
    const key = String(v.labels[label] ?? 'other');
    out[key] = (out[key] ?? 0) + v.value;
  }
  return out;
}

export class RateWindow {
  readonly windowMs: number;
  #samples: Sample[] = [];
  #timer: NodeJS.Timeout | undefined;

  constructor(private readonly o: { metrics: Metrics; windowMs?: number; sampleEveryMs?: number; now?: () => number }) {
    this.windowMs = o.windowMs ?? 60_000;
  }

  start(): void {
    void this.sample();
    this.#timer = setInterval(() => void this.sample(), this.o.sampleEveryMs ?? 5_000);
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  async sample(): Promise<Sample> {
    const m = this.o.metrics;
    const s: Sample = {
      at: (this.o.now ?? Date.now)(),
      accepted: await total(m.acceptedTotal),
      delivered: await total(m.deliveredTotal),
      deferred: await total(m.deferredTotal),
      bounced: await total(m.bouncedTotal),
      refusedBy: await byLabel(m.rejectedTotal, 'reason'),
    };
    this.#samples.push(s);
    // Keep one sample older than the window so the window is always fully covered.
    while (this.#samples.length > 2 && this.#samples[1]!.at <= s.at - this.windowMs) this.#samples.shift();
    return s;
  }

  async rates(): Promise<Rates> {
    return (await this.window()).rates;
  }

  /**
   * The rates, the refusals by reason (per minute; only reasons seen in the window), and the
   * seconds the rates were measured over: the window, or less while the server is younger than it
   * (a rate from a few seconds is extrapolated to a minute, and says so).
   */
  async window(): Promise<{ rates: Rates; refusedByReason: Record<string, number>; seconds: number }> {
    const now = await this.sample();
    // The newest sample at least a window old; until the server has run that long, the oldest.
    const base = [...this.#samples].reverse().find((s) => s.at <= now.at - this.windowMs) ?? this.#samples[0]!;
    // At least a second, so a burst right after start-up does not read as millions per minute.
    const elapsed = Math.max(now.at - base.at, 1_000);
    const minutes = elapsed / 60_000;
    const perMinute = (n: number) => Math.round((n / minutes) * 100) / 100;
    const per = (k: 'accepted' | 'delivered' | 'deferred' | 'bounced') => perMinute(now[k] - base[k]);
    const sum = (by: Record<string, number>) => Object.values(by).reduce((a, b) => a + b, 0);
    const refusedByReason: Record<string, number> = {};
    for (const [reason, n] of Object.entries(now.refusedBy)) {
      const d = n - (base.refusedBy[reason] ?? 0);
      if (d > 0) refusedByReason[reason] = perMinute(d);
    }
    return {
      rates: {
        acceptedPerMinute: per('accepted'),
        deliveredPerMinute: per('delivered'),
        deferredPerMinute: per('deferred'),
        bouncedPerMinute: per('bounced'),
        refusedPerMinute: perMinute(sum(now.refusedBy) - sum(base.refusedBy)),
      },
      refusedByReason,
      seconds: Math.round(Math.min(elapsed, this.windowMs) / 1000),
    };
  }
}
