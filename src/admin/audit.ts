/**
 * The audit log: one JSON line per operator action (who, when, what, on which mails, from which
 * address, and how it ended) in `<dataDir>/audit.log`. An entry is appended and fsync'ed before
 * the API answers, so an acknowledged action is never missing from the log after a crash;
 * appends are serialised, so lines never interleave. A torn last line (crash mid-write) is
 * skipped when reading. Reading walks the file backwards in chunks (newest first), so a page
 * costs the same however long the log has grown; the cursor is the byte offset to continue from.
 */
import { open, mkdir, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';

export interface AuditEntry {
  /** Epoch milliseconds. */
  at: number;
  /** Token name ("admin" for admin.token or the generated one). */
  actor: string;
  role: string;
  /** Client address as the server saw it. */
  ip: string;
  /** e.g. "remove", "hold", "bulk.remove", "config.update". */
  action: string;
  ids?: string[];
  /** Set when more ids were affected than are listed. */
  idCount?: number;
  filter?: Record<string, unknown>;
  detail?: Record<string, unknown>;
  result: 'ok' | 'error';
  /** HTTP status of an error, and its message. */
  status?: number;
  error?: string;
}

export interface AuditPage {
  items: AuditEntry[];
  nextCursor?: string;
}

/** Bulk actions can touch millions of mails; the entry lists this many ids and counts the rest. */
export const MAX_AUDIT_IDS = 10_000;
const READ_CHUNK = 64 * 1024;

export class AuditLog {
  readonly file: string;
  #handle: Promise<FileHandle> | undefined;
  #tail: Promise<void> = Promise.resolve();

  constructor(dataDir: string) {
    this.file = join(dataDir, 'audit.log');
  }

  #open(): Promise<FileHandle> {
    this.#handle ??= (async () => {
      await mkdir(join(this.file, '..'), { recursive: true });
      const fh = await open(this.file, 'a+', 0o600);
      // A crash may have torn the last line: start ours on a line of its own.
      const { size } = await fh.stat();
      if (size > 0) {
        const last = Buffer.alloc(1);
        await fh.read(last, 0, 1, size - 1);
        if (last[0] !== 0x0a) await fh.write('\n');
      }
      return fh;
    })();
    return this.#handle;
  }

  /** Appends one entry and resolves once it is on disk. */
  append(entry: AuditEntry): Promise<void> {
    const capped = entry.ids && entry.ids.length > MAX_AUDIT_IDS
      ? { ...entry, ids: entry.ids.slice(0, MAX_AUDIT_IDS), idCount: entry.idCount ?? entry.ids.length }
      : entry;
    const line = JSON.stringify(capped) + '\n';
    const write = this.#tail.then(async () => {
      const fh = await this.#open();
      await fh.write(line);
      await fh.datasync();
    });
    // The chain survives a failed write; the caller still sees the failure.
    this.#tail = write.catch(() => undefined);
    return write;
  }

  /** Newest first. `cursor` is the byte offset from a previous page's nextCursor. */
  async read(opts: { limit: number; cursor?: string }): Promise<AuditPage> {
    await this.#tail;
    let fh: FileHandle;
    try {
      fh = await open(this.file, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { items: [] };
      throw err;
    }
    try {
      const size = (await fh.stat()).size;
      const end = opts.cursor === undefined ? size : Math.min(Number(opts.cursor), size);
      const items: AuditEntry[] = [];
      // `pending` holds bytes [pos, end) not yet split into whole lines (a line's beginning may lie further back).
      let pos = end;
      let pending = Buffer.alloc(0);
      while (items.length < opts.limit) {
        if (pos === 0) {
          const entry = parseLine(pending);
          if (entry) items.push(entry);
          break;
        }
        const start = Math.max(0, pos - READ_CHUNK);
        const chunk = Buffer.alloc(pos - start);
        await fh.read(chunk, 0, chunk.length, start);
        const buf = Buffer.concat([chunk, pending]);
        let segEnd = buf.length;
        for (let i = buf.length - 1; i >= 0; i--) {
          if (buf[i] !== 0x0a) continue;
          const entry = parseLine(buf.subarray(i + 1, segEnd));
          segEnd = i;
          if (!entry) continue;
          items.push(entry);
          if (items.length >= opts.limit) return { items, nextCursor: String(start + i + 1) };
        }
        pending = buf.subarray(0, segEnd);
        pos = start;
      }
      return { items };
    } finally {
      await fh.close();
    }
  }

  async close(): Promise<void> {
    await this.#tail;
    const h = this.#handle;
    this.#handle = undefined;
    if (h) await (await h).close();
  }
}

function parseLine(bytes: Buffer): AuditEntry | undefined {
  const text = bytes.toString('utf8').trim();
  if (!text) return undefined;
  try {
    return JSON.parse(text) as AuditEntry;
  } catch {
    return undefined; // a line torn by a crash mid-append
  }
}
