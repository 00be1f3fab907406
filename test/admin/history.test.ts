/**
 * GET /api/stats/history: the admin server samples queue depth by state (and the rates) on its
 * own, so the console's depth chart and scripts see the last day, not only what a browser tab
 * happened to watch. Real server and spool; a short sampling interval instead of a fake clock.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHarness, VIEWER, type Harness } from './harness.js';

let h: Harness;
beforeAll(async () => {
  h = await startHarness({ historyEveryMs: 100 });
});
afterAll(async () => h?.close());

async function samples(query = ''): Promise<{ at: number; byState: Record<string, number>; rates: Record<string, number> }[]> {
  const { status, body } = await h.json('GET', `/api/stats/history${query}`);
  expect(status).toBe(200);
  expect(body.everyMs).toBe(100);
  return body.samples;
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('GET /api/stats/history', () => {
  it('records queue depth by state over time, oldest first, and filters by since', async () => {
    const before = await until('a first sample', async () => ((await samples()).length > 0 ? await samples() : undefined));
    expect(before.at(-1)!.byState.queued).toBe(0);
    const enqueuedAt = Date.now();
    for (let i = 0; i < 3; i++) await h.enqueue({ subject: `depth ${i}`, to: [`d${i}@history.example`] });
    const later = await until('a sample with the 3 mails', async () => {
      const s = await samples();
      return s.some((x) => x.byState.queued === 3) ? s : undefined;
    });
    // Oldest first, and the depth went from 0 to 3 in the recorded series.
    expect(later.map((x) => x.at)).toEqual([...later.map((x) => x.at)].sort((a, b) => a - b));
    expect(later[0]!.byState.queued).toBe(0);
    expect(later.at(-1)!.byState.queued).toBe(3);
    expect(later.at(-1)!.rates).toHaveProperty('acceptedPerMinute');
    const recent = await samples(`?since=${enqueuedAt + 1}`);
    expect(recent.length).toBeGreaterThan(0);
    expect(recent.every((x) => x.at >= enqueuedAt + 1)).toBe(true);
    expect(recent.length).toBeLessThan(later.length + 5);
  });

  it('is readable with a viewer token, 401 without one, 400 for a bad since', async () => {
    expect((await h.json('GET', '/api/stats/history', { token: VIEWER })).status).toBe(200);
    expect((await h.json('GET', '/api/stats/history', { token: null })).status).toBe(401);
    expect((await h.json('GET', '/api/stats/history?since=-5')).status).toBe(400);
  });
});
