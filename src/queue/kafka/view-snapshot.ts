/**
 * A snapshot of a Kafka node's state view, kept in its own `spool.dir`, so that a node started
 * again reads the state topic from the offsets the snapshot covers instead of from its beginning.
 *
 * Without it a start read every state record the cleaner had not removed yet: all records of the
 * last hour or more (the state topic's segments roll hourly and only rolled segments are
 * compacted) and the tombstones of every mail purged in the last `delete.retention.ms` (a day).
 * The restart grew with that history: 20.4 s after 24 minutes at 100 mails/s in the Kafka crash
 * soak of 2026-12-05.
 *
 * Why reading on from the snapshot's offsets gives the view a full read would:
 * - Compaction removes a record only when a later record of the same key exists, so of the records
 *   after the offsets, what the cleaner removed has a later record there too: a mail's latest
 *   state is always read. Where the cleaner left only the latest of a mail's records after the
 *   offsets, its `prev` is past the snapshot's generation, which the view accepts (state-view.ts),
 *   as it does for a read from the beginning that crossed a run of the cleaner.
 * - A tombstone is kept for `delete.retention.ms` (a day, as the backend creates the topic) after
 *   its segment was cleaned; a snapshot older than MAX_AGE_MS (half that) is not used, so a mail
 *   purged after the snapshot is purged here too.
 * - The snapshot is written whole or not at all (a temporary file, fdatasync, rename, fsync of the
 *   directory) and counts its mails, so a cut or damaged file is never taken for a smaller view.
 * - Offsets past a partition's end or below its start (the topic deleted and created again, or
 *   records deleted) make the node read the topic whole, as it did before.
 *
 * Format: one JSON line of header, then one line per mail (QueuedMail as JSON).
 */
import { createReadStream } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Millis, QueuedMail } from '../types.js';
import { partitionOffsets } from './body-dir.js';
import type { SnapshotExtras } from './state-view.js';

/** In the node's `spool.dir`, beside the body directory. */
export const VIEW_SNAPSHOT_FILE = 'kafka-view.snapshot';
/** A snapshot older than this is not used: half the state topic's `delete.retention.ms` of a day. */
export const MAX_AGE_MS = 12 * 3_600_000;
/** Mails serialised between two turns of the event loop while a snapshot is written. */
const MAILS_PER_CHUNK = 1_000;

export interface ViewSnapshotHeader extends SnapshotExtras {
  v: 1;
  stateTopic: string;
  writtenAt: Millis;
  /** State partition → the offset the view resumes from (its next record). */
  offsets: Record<string, number>;
  mails: number;
}

export interface ViewSnapshot {
  header: ViewSnapshotHeader;
  offsets: Map<number, number>;
  mails: QueuedMail[];
}

/**
 * Writes a snapshot: `mails` and `extras` must be taken with `offsets` in one turn of the event
 * loop (the view and its offsets then agree); the mails are written in chunks, yielding between.
 * Mail objects are never changed in place (model.ts makes a new one per change), so the ones taken
 * stay as they were while the file is written.
 */
export async function writeViewSnapshot(
  dir: string, stateTopic: string, offsets: ReadonlyMap<number, number>, mails: readonly QueuedMail[], extras: SnapshotExtras, now: Millis,
): Promise<void> {
  const path = join(dir, VIEW_SNAPSHOT_FILE);
  const tmp = `${path}.tmp`;
  const header: ViewSnapshotHeader = { v: 1, stateTopic, writtenAt: now, offsets: Object.fromEntries(offsets), mails: mails.length, ...extras };
  const fh = await open(tmp, 'w');
  try {
    await fh.write(`${JSON.stringify(header)}\n`);
    for (let i = 0; i < mails.length; i += MAILS_PER_CHUNK) {
      let chunk = '';
      for (const m of mails.slice(i, i + MAILS_PER_CHUNK)) chunk += `${JSON.stringify(m)}\n`;
      await fh.write(chunk);
    }
    await fh.datasync();
  } catch (err) {
    await fh.close().catch(() => undefined);
    await rm(tmp, { force: true });
    throw err;
  }
  await fh.close();
  await rename(tmp, path);
  const d = await open(dirname(path), 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

/**
 * The snapshot in `dir` if it is whole, for this topic and young enough, else undefined with the
 * reason why not (for the log); a directory without one gives neither.
 */
export async function readViewSnapshot(dir: string, stateTopic: string, now: Millis): Promise<{ snapshot?: ViewSnapshot; unusable?: string }> {
  const path = join(dir, VIEW_SNAPSHOT_FILE);
  await rm(`${path}.tmp`, { force: true });
  const input = createReadStream(path);
  const opened = await new Promise<boolean>((resolve) => {
    input.once('open', () => resolve(true));
    input.once('error', () => resolve(false));
  });
  if (!opened) return {};
  const lines = createInterface({ input, crlfDelay: Infinity });
  let header: ViewSnapshotHeader | undefined;
  const mails: QueuedMail[] = [];
  try {
    for await (const line of lines) {
      if (!header) {
        header = JSON.parse(line) as ViewSnapshotHeader;
        const bad = headerProblem(header, stateTopic, now);
        if (bad) return { unusable: bad };
        continue;
      }
      const m = JSON.parse(line) as QueuedMail;
      if (typeof m?.id !== 'string' || typeof m.generation !== 'number') return { unusable: 'a mail in the snapshot is not one' };
      mails.push(m);
    }
  } catch {
    return { unusable: 'unreadable snapshot' };
  } finally {
    lines.close();
    input.destroy();
  }
  if (!header) return { unusable: 'empty snapshot' };
  if (mails.length !== header.mails) return { unusable: `snapshot holds ${mails.length} mails, its header says ${header.mails}` };
  const offsets = partitionOffsets(header.offsets);
  if (!offsets) return { unusable: 'bad offset in snapshot' };
  return { snapshot: { header, offsets, mails } };
}

function headerProblem(h: ViewSnapshotHeader, stateTopic: string, now: Millis): string | undefined {
  if (h?.v !== 1 || typeof h.offsets !== 'object' || h.offsets === null || !Number.isSafeInteger(h.mails)) return 'unknown snapshot format';
  if (!Array.isArray(h.rejected) || !Array.isArray(h.purged)) return 'unknown snapshot format';
  if (h.stateTopic !== stateTopic) return `written for state topic ${String(h.stateTopic)}`;
  if (!(now - h.writtenAt < MAX_AGE_MS)) return `written ${Math.round((now - h.writtenAt) / 60_000)} minutes ago (older than ${MAX_AGE_MS / 3_600_000} h)`;
  return undefined;
}
