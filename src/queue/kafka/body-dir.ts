/**
 * A Kafka node's local body directory, kept across restarts of the node on its own `spool.dir`.
 *
 * Every node copies the content topic into a directory of files named by mail id (kafka-queue.ts).
 * A node that started again used to delete that copy and read the content topic from its first
 * offset: bodies of finished mail included until compaction removes them, so its restart grew with
 * the topic's history (15.5 s at 57,000 mails of 46 KB in the Kafka crash soak of 2026-12-05).
 * Now it keeps the directory and a checkpoint: per content partition, an offset below which every
 * body record of a mail that is still live has its complete file here. At start the consumer
 * seeks the content partitions to the checkpoint instead of their beginning.
 *
 * Why a file here can be trusted:
 * - Files come into place by rename from a temporary file (a kill leaves only `*.tmp`, removed at
 *   start), and a file is only counted below the checkpoint once its rename is done.
 * - Without fsync a file's data may not survive a crash of the machine, only one of the process.
 *   The checkpoint records the kernel's boot id, and a checkpoint from another boot is not used:
 *   after a reboot the node reads the content topic whole, as before.
 * - After the catch-up at start, every live mail of the view must have its body here with the
 *   mail's size; if one has not (a file removed or cut by hand, a topic deleted and created again,
 *   offsets from another cluster), the node reads the content topic whole again. So the checkpoint
 *   can make a restart faster, never make a body wrong or missing.
 */
import { readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/** The body directory under the node's `spool.dir`. */
export const BODY_DIR = 'kafka-bodies';
/** Inside the body directory; no mail id starts with a dot. */
const CHECKPOINT_FILE = '.checkpoint.json';

export interface BodyCheckpoint {
  v: 1;
  /** /proc/sys/kernel/random/boot_id when it was written. */
  bootId: string;
  contentTopic: string;
  /** Content partition → the offset the consumer resumes from. */
  offsets: Record<string, number>;
}

/** The kernel's boot id (Linux), or undefined where there is none: then no checkpoint is written or used. */
export async function readBootId(): Promise<string | undefined> {
  try {
    return (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim() || undefined;
  } catch {
    return undefined;
  }
}

/**
 * The checkpoint of `dir` if it fits this boot and topic, else undefined, with the reason why not
 * (for the log); a directory without one gives neither.
 */
export async function readCheckpoint(dir: string, bootId: string | undefined, contentTopic: string): Promise<{ offsets?: Map<number, number>; unusable?: string }> {
  let text: string;
  try {
    text = await readFile(join(dir, CHECKPOINT_FILE), 'utf8');
  } catch {
    return {};
  }
  let cp: BodyCheckpoint;
  try {
    cp = JSON.parse(text) as BodyCheckpoint;
  } catch {
    return { unusable: 'unreadable checkpoint' };
  }
  if (cp?.v !== 1 || typeof cp.offsets !== 'object' || cp.offsets === null) return { unusable: 'unknown checkpoint format' };
  if (!bootId || cp.bootId !== bootId) return { unusable: 'written before the machine last started' };
  if (cp.contentTopic !== contentTopic) return { unusable: `written for content topic ${String(cp.contentTopic)}` };
  const offsets = partitionOffsets(cp.offsets);
  return offsets ? { offsets } : { unusable: 'bad offset in checkpoint' };
}

/**
 * Offsets kept as JSON (partition → offset; the body checkpoint, the view snapshot) as a map, or
 * undefined when a partition or an offset is not a non-negative integer.
 */
export function partitionOffsets(kept: Record<string, unknown>): Map<number, number> | undefined {
  const offsets = new Map<number, number>();
  for (const [p, o] of Object.entries(kept)) {
    if (!/^\d+$/.test(p) || !Number.isSafeInteger(o) || (o as number) < 0) return undefined;
    offsets.set(Number(p), o as number);
  }
  return offsets;
}

export async function writeCheckpoint(dir: string, cp: Omit<BodyCheckpoint, 'v'>): Promise<void> {
  const path = join(dir, CHECKPOINT_FILE);
  const tmp = `${path}.tmp`;
  await writeFile(tmp, JSON.stringify({ v: 1, ...cp } satisfies BodyCheckpoint));
  await rename(tmp, path);
}

/** Names in the body directory that are mail bodies (not the checkpoint, not a temporary file). */
export function isBodyFile(name: string): boolean {
  return !name.startsWith('.') && !name.endsWith('.tmp');
}
