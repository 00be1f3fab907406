/**
 * GET /api/stats/history: the admin server samples queue depth by state (and the rates) on its
 * own, so the console's depth chart and scripts see the last day, not only what a browser tab
 * happened to watch. Real server and spool; a short sampling interval instead of a fake clock.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DepthHistory } from '../../src/admin/history.js';
import type { DepthSample } from '../../src/api-types.js';
import { captureLogger, startHarness, VIEWER, type Harness } from './harness.js';

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

describe('the depth history survives a restart', () => {
  it('reads back what the previous run sampled, skips a line torn by a crash, and samples on', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'spoolhouse-history-'));
    try {
      const first = await startHarness({ dir, historyEveryMs: 100 });
      let before: DepthSample[];
      try {
        for (let i = 0; i < 2; i++) await first.enqueue({ subject: `kept ${i}`, to: [`k${i}@history.example`] });
        before = await until('a sample with the 2 mails', async () => {
          const { body } = await first.json('GET', '/api/stats/history');
          return (body.samples as DepthSample[]).some((x) => x.byState.queued === 2) ? body.samples as DepthSample[] : undefined;
        });
      } finally {
        await first.close();
      }
      const file = join(dir, 'depth-history.jsonl');
      // What `close` waited for is on file; then a crash tears a line in half.
      const onFile = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as DepthSample);
      expect(onFile.length).toBeGreaterThanOrEqual(before.length);
      appendFileSync(file, '{"at":17');

      const restartedAt = Date.now();
      const second = await startHarness({ dir, historyEveryMs: 60_000 });
      try {
        // The new run's first sample is taken as it starts, without waiting for it.
        const after = await until('the new run\'s first sample', async () => {
          const { body } = await second.json('GET', '/api/stats/history');
          return (body.samples as DepthSample[]).length > onFile.length ? body.samples as DepthSample[] : undefined;
        });
        // Every sample of the first run, in order, then the new run's own first one.
        expect(after.slice(0, onFile.length)).toEqual(onFile);
        expect(after.length).toBe(onFile.length + 1);
        expect(after.at(-1)!.at).toBeGreaterThanOrEqual(restartedAt);
        expect(after.at(-1)!.byState.queued).toBe(2);
        // The torn line is gone from the file: every line parses again.
        const lines = readFileSync(file, 'utf8').trim().split('\n');
        expect(() => lines.forEach((l) => JSON.parse(l))).not.toThrow();
      } finally {
        await second.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('keeps only the last keepMs of the file, and rewrites it to that', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'spoolhouse-history-'));
    const file = join(dir, 'h.jsonl');
    const now = Date.now();
    const sample = (at: number): DepthSample => ({ at, byState: { queued: at % 7 } as DepthSample['byState'], rates: { acceptedPerMinute: 1 } as unknown as DepthSample['rates'] });
    const old = sample(now - 2 * 86_400_000);
    const recent = [sample(now - 3_600_000), sample(now - 60_000)];
    // Out of order on file (a clock stepped back): read back oldest first.
    writeFileSync(file, [old, recent[1], 'not json', '{"at":"yesterday"}', recent[0]].map((x) => (typeof x === 'string' ? x : JSON.stringify(x))).join('\n') + '\n');
    const history = new DepthHistory({ queue: h.queue, rates: async () => ({}) as DepthSample['rates'], logger: captureLogger([]), everyMs: 60_000, keepMs: 86_400_000, file });
    await history.start();
    try {
      const got = await until('the first sample', async () => (history.since().length > 2 ? history.since() : undefined));
      expect(got.slice(0, 2)).toEqual(recent);
      expect(got.length).toBe(3);
      expect(got[2]!.at).toBeGreaterThanOrEqual(now);
    } finally {
      await history.stop();
    }
    const lines = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as DepthSample);
    expect(lines.map((x) => x.at)).toEqual(history.since().map((x) => x.at));
    rmSync(dir, { recursive: true, force: true });
  });

  it('keeps the file near what is kept in memory as samples come and go', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'spoolhouse-history-'));
    const file = join(dir, 'h.jsonl');
    // Keep 200 ms of samples taken every 10 ms: about 20 kept; 150 taken in all (each asks for the rates once).
    let taken = 0;
    const history = new DepthHistory({ queue: h.queue, rates: async () => { taken++; return {} as DepthSample['rates']; }, logger: captureLogger([]), everyMs: 10, keepMs: 200, file });
    await history.start();
    let maxLines = 0;
    try {
      await until('150 samples taken', async () => {
        maxLines = Math.max(maxLines, readFileSync(file, 'utf8').split('\n').length - 1);
        return taken >= 150 ? true : undefined;
      }, 30_000);
    } finally {
      await history.stop();
    }
    const kept = history.since().length;
    expect(kept).toBeLessThan(40);
    // Rewritten whenever it holds twice what is kept (plus a little): never the whole run.
    expect(maxLines).toBeLessThanOrEqual(2 * 40 + 11);
    const onFile = readFileSync(file, 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as DepthSample).at);
    expect(onFile.slice(-kept)).toEqual(history.since().map((x) => x.at));
    rmSync(dir, { recursive: true, force: true });
  });

  it('writes no sample twice when samples are taken while the file is being rewritten', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'spoolhouse-history-'));
    const file = join(dir, 'h.jsonl');
    // No timer: bursts of samples taken at once, each told apart by its rates; keepMs 0 keeps only
    // the newest millisecond, so the file is rewritten every few appends, with appends queued behind.
    let n = 0;
    const history = new DepthHistory({ queue: h.queue, rates: async () => ({ n: n++ }) as unknown as DepthSample['rates'], logger: captureLogger([]), everyMs: 3_600_000, keepMs: 0, file });
    await history.start();
    try {
      for (let burst = 0; burst < 20; burst++) await Promise.all(Array.from({ length: 15 }, () => history.sample()));
    } finally {
      await history.stop();
    }
    const onFile = readFileSync(file, 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { rates: { n: number } }).rates.n);
    expect(onFile.length).toBeGreaterThan(0);
    expect(new Set(onFile).size).toBe(onFile.length);
    const kept = history.since().map((x) => (x.rates as unknown as { n: number }).n);
    expect(onFile.slice(-kept.length)).toEqual(kept);
    rmSync(dir, { recursive: true, force: true });
  });

  it('goes on in memory, with one warning, when the file cannot be written', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'spoolhouse-history-'));
    writeFileSync(join(dir, 'not-a-dir'), '');
    const lines: string[] = [];
    const history = new DepthHistory({ queue: h.queue, rates: async () => ({}) as DepthSample['rates'], logger: captureLogger(lines), everyMs: 50, file: join(dir, 'not-a-dir', 'h.jsonl') });
    await history.start();
    try {
      await until('three samples', async () => (history.since().length >= 3 ? true : undefined));
    } finally {
      await history.stop();
    }
    const warnings = lines.filter((l) => l.includes('depth history'));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain('kept in memory only');
    rmSync(dir, { recursive: true, force: true });
  });
});
