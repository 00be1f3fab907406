/** The sliding-window rates of GET /api/stats, from real prom-client counters and a test clock. */
import { expect, it } from 'vitest';
import { RateWindow } from '../../src/admin/rates.js';
import { createMetrics } from '../../src/metrics.js';

it('rates are per minute over the window, from the counters', async () => {
  const metrics = createMetrics();
  let t = 1_000_000;
  const w = new RateWindow({ metrics, windowMs: 60_000, now: () => t });
  await w.sample();
  metrics.acceptedTotal.inc({ listener: 'a' }, 100);
  metrics.acceptedTotal.inc({ listener: 'b' }, 20);
  metrics.deliveredTotal.inc({ via: 'mx' }, 30);
  t += 30_000;
  await w.sample();
  t += 30_000;
  // One minute since the first sample: 120 accepted, 30 delivered.
  expect(await w.rates()).toEqual({ acceptedPerMinute: 120, deliveredPerMinute: 30, deferredPerMinute: 0, bouncedPerMinute: 0, refusedPerMinute: 0 });
  // The next minute only 60 more arrive; the first minute has left the window.
  metrics.acceptedTotal.inc({ listener: 'a' }, 60);
  metrics.bouncedTotal.inc({ reason: '5xx' }, 2);
  metrics.rejectedTotal.inc({ reason: 'relay' }, 10);
  metrics.rejectedTotal.inc({ reason: 'dnsbl' }, 5);
  t += 60_000;
  expect(await w.window()).toEqual({
    rates: { acceptedPerMinute: 60, deliveredPerMinute: 0, deferredPerMinute: 0, bouncedPerMinute: 2, refusedPerMinute: 15 },
    refusedByReason: { relay: 10, dnsbl: 5 },
    seconds: 60,
  });
  // A minute later only the relay refusals go on; reasons without refusals in the window are left out.
  metrics.rejectedTotal.inc({ reason: 'relay' }, 3);
  t += 60_000;
  expect((await w.window()).refusedByReason).toEqual({ relay: 3 });
});

it('a node younger than the window extrapolates from the seconds it has, and says how many', async () => {
  const metrics = createMetrics();
  let t = 5_000_000;
  const w = new RateWindow({ metrics, windowMs: 60_000, now: () => t });
  await w.sample();
  metrics.rejectedTotal.inc({ reason: 'relay' }, 2);
  t += 15_000;
  expect(await w.window()).toEqual({
    rates: { acceptedPerMinute: 0, deliveredPerMinute: 0, deferredPerMinute: 0, bouncedPerMinute: 0, refusedPerMinute: 8 },
    refusedByReason: { relay: 8 },
    seconds: 15,
  });
  // Right after start-up the span is taken as at least a second.
  const v = new RateWindow({ metrics: createMetrics(), windowMs: 60_000, now: () => t });
  expect((await v.window()).seconds).toBe(1);
});
