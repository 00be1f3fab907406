import { describe, expect, it } from 'vitest';
import { createMetrics } from '../../src/metrics.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function lag(metrics: ReturnType<typeof createMetrics>): Promise<Record<string, number>> {
  const text = await metrics.registry.metrics();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^spoolhouse_process_nodejs_eventloop_lag_(\w+)_seconds (\S+)$/gm)) out[m[1]!] = Number(m[2]);
  return out;
}

describe('event-loop lag metrics', () => {
  it('read about 0 on an idle loop, not the 100 ms sampling interval', async () => {
    const metrics = createMetrics();
    await sleep(700);
    const idle = await lag(metrics);
    // prom-client's own gauges read the timer's whole interval: min and median 0.1 s here.
    expect(idle.min).toBeLessThan(0.05);
    expect(idle.p50).toBeLessThan(0.05);
    expect(idle.mean).toBeLessThan(0.05);
  });

  it('show a blocked loop, and only in the window it happened in', async () => {
    const metrics = createMetrics();
    await sleep(300);
    await lag(metrics);
    await sleep(250);
    const until = Date.now() + 400;
    while (Date.now() < until) { /* the loop is blocked */ }
    await sleep(300);
    const blocked = await lag(metrics);
    expect(blocked.max).toBeGreaterThan(0.2);
    expect(blocked.max).toBeLessThan(1);
    expect(blocked.p99).toBeGreaterThan(0.2);
    await sleep(500);
    const after = await lag(metrics);
    expect(after.max).toBeLessThan(0.1);
  });
});
