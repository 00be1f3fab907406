/**
 * The audit log file on its own: entries survive reopening, pages read newest first across the
 * 64 KB read chunks with nothing lost or repeated, and a line torn by a crash is skipped.
 */
import { appendFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { AuditLog, type AuditEntry } from '../../src/admin/audit.js';

let dir: string;
beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'spoolhouse-audit-')); });
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const entry = (i: number): AuditEntry => ({
  at: 1_700_000_000_000 + i, actor: 'admin', role: 'operator', ip: '127.0.0.1', action: 'hold',
  ids: [`ID${String(i).padStart(6, '0')}`], detail: { note: 'x'.repeat(i % 300) }, result: 'ok',
});

async function readAll(log: AuditLog, limit: number): Promise<AuditEntry[]> {
  const out: AuditEntry[] = [];
  let cursor: string | undefined;
  for (let pages = 0; pages < 10_000; pages++) {
    const page = await log.read({ limit, ...(cursor ? { cursor } : {}) });
    out.push(...page.items);
    if (!page.nextCursor) break;
    cursor = page.nextCursor;
  }
  return out;
}

it('pages newest first across chunk boundaries, every entry exactly once', async () => {
  const log = new AuditLog(dir);
  const n = 900; // ~250 KB: several read chunks, lines straddling their edges
  for (let i = 0; i < n; i++) await log.append(entry(i));
  await log.close();
  const reopened = new AuditLog(dir);
  for (const limit of [1, 7, 100, 1000, 5000]) {
    const all = await readAll(reopened, limit);
    expect(all.map((e) => e.at)).toEqual(Array.from({ length: n }, (_, i) => 1_700_000_000_000 + n - 1 - i));
  }
});

it('concurrent appends never interleave', async () => {
  const log = new AuditLog(dir);
  await Promise.all(Array.from({ length: 200 }, (_, i) => log.append(entry(i))));
  const all = await readAll(log, 50);
  expect(all).toHaveLength(200);
  expect(new Set(all.map((e) => e.at)).size).toBe(200);
  await log.close();
});

it('skips a line torn by a crash and keeps reading', async () => {
  const log = new AuditLog(dir);
  await log.append(entry(1));
  await log.append(entry(2));
  await log.close();
  appendFileSync(join(dir, 'audit.log'), '{"at":17000000000, "actor":"adm');
  const again = new AuditLog(dir);
  expect((await readAll(again, 10)).map((e) => e.at)).toEqual([1_700_000_000_002, 1_700_000_000_001]);
  // The next entry starts on a fresh line, not glued to the torn one.
  await again.append(entry(3));
  expect((await readAll(again, 10)).map((e) => e.at)).toEqual([1_700_000_000_003, 1_700_000_000_002, 1_700_000_000_001]);
  await again.close();
});

it('an empty or missing log reads as no entries', async () => {
  const log = new AuditLog(dir);
  expect(await log.read({ limit: 10 })).toEqual({ items: [] });
});
