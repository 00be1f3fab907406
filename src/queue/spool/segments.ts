/**
 * Message bodies in append-only segment files (`<dir>/segments/<8-digit id>.seg`).
 *
 * Guarantees:
 * - `appendGroup` writes every body of a group (one writev), then one fdatasync, and only then
 *   returns their locations; the caller commits metadata that references them afterwards, so a
 *   body that metadata points to is always complete on disk.
 * - A failed append (ENOSPC, EIO) truncates the segment back to where the group started, so no
 *   half-written bytes stay behind, and the error is rethrown for the caller to map.
 * - Every process run starts a fresh segment: bytes after the last referenced body of an old
 *   segment (a group whose metadata commit never happened, e.g. kill -9) are never appended to,
 *   only reclaimed with the whole segment once none of its bodies is live.
 * - New segment files are made durable in the directory (fsync of the directory) before any body
 *   in them is acknowledged.
 *
 * - Compaction (SpoolQueue.compactSegments) copies the live bodies of a mostly dead sealed segment
 *   into the current one like any new body (append + fdatasync before the metadata points at
 *   them), so the old file can go; it is never written to.
 *
 * Plain read/write syscalls only (no mmap), so a full disk is an error code, never a SIGBUS.
 */
import { mkdir, open, readdir, stat, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { MailNotFoundError } from '../errors.js';

export interface BodyLocation {
  seg: number;
  off: number;
  len: number;
}

const SEGMENT_NAME = /^(\d{8})\.seg$/;

export function segmentFileName(seg: number): string {
  return `${String(seg).padStart(8, '0')}.seg`;
}

export class SegmentStore {
  readonly dir: string;
  private current?: { id: number; fh: FileHandle; size: number };
  private nextId = 1;

  constructor(spoolDir: string, private readonly segmentBytes: number) {
    this.dir = join(spoolDir, 'segments');
  }

  /** Lists the segments on disk and starts a new current one. Returns the ids found before that. */
  async open(): Promise<number[]> {
    await mkdir(this.dir, { recursive: true });
    const found = await this.list();
    this.nextId = (found.length ? Math.max(...found) : 0) + 1;
    await this.roll();
    return found;
  }

  async list(): Promise<number[]> {
    const names = await readdir(this.dir);
    return names.map((n) => SEGMENT_NAME.exec(n)).filter((m): m is RegExpExecArray => !!m).map((m) => Number(m[1]));
  }

  get currentId(): number {
    return this.current?.id ?? 0;
  }

  /** Bytes in the current segment (for the spool size limit). */
  get currentSize(): number {
    return this.current?.size ?? 0;
  }

  /**
   * Appends all bodies, fdatasyncs once, and returns where each one landed. On failure the
   * segment is cut back to its previous length and the error is rethrown.
   */
  async appendGroup(bodies: Buffer[]): Promise<BodyLocation[]> {
    if (!this.current) throw new Error('segment store is closed');
    if (this.current.size >= this.segmentBytes) await this.roll();
    const seg = this.current!;
    const start = seg.size;
    const locations: BodyLocation[] = [];
    let off = start;
    for (const b of bodies) {
      locations.push({ seg: seg.id, off, len: b.length });
      off += b.length;
    }
    try {
      await writeAllAt(seg.fh, bodies, start);
      await seg.fh.datasync();
    } catch (err) {
      await this.cutBack(seg, start);
      throw err;
    }
    seg.size = off;
    return locations;
  }

  /** Opens a stream over one body; the file handle is held, so a concurrent unlink does not cut it. */
  async openBody(id: string, loc: BodyLocation): Promise<NodeJS.ReadableStream> {
    const fh = await this.openForRead(id, loc.seg);
    if (loc.len === 0) {
      await fh.close();
      const { Readable } = await import('node:stream');
      return Readable.from([]);
    }
    return fh.createReadStream({ start: loc.off, end: loc.off + loc.len - 1, autoClose: true });
  }

  /** Reads one body whole (for compaction, which copies it to the current segment). */
  async readAt(id: string, loc: BodyLocation): Promise<Buffer> {
    const fh = await this.openForRead(id, loc.seg);
    try {
      const buf = Buffer.allocUnsafe(loc.len);
      let got = 0;
      while (got < loc.len) {
        const { bytesRead } = await fh.read(buf, got, loc.len - got, loc.off + got);
        if (bytesRead === 0) throw Object.assign(new Error(`segment ${loc.seg} ends inside the body of ${id}`), { code: 'EIO' });
        got += bytesRead;
      }
      return buf;
    } finally {
      await fh.close();
    }
  }

  /** A segment opened for reading the body of `id`; a segment that is gone means the body is. */
  private async openForRead(id: string, seg: number): Promise<FileHandle> {
    try {
      return await open(join(this.dir, segmentFileName(seg)), 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new MailNotFoundError(id);
      throw err;
    }
  }

  /** The size of a segment file in bytes (0 when it is gone). */
  async size(seg: number): Promise<number> {
    try {
      return (await stat(join(this.dir, segmentFileName(seg)))).size;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
      throw err;
    }
  }

  /** Deletes a segment that holds no live body. Never the current one. */
  async remove(seg: number): Promise<boolean> {
    if (seg === this.current?.id) return false;
    try {
      await unlink(join(this.dir, segmentFileName(seg)));
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
  }

  async close(): Promise<void> {
    const seg = this.current;
    this.current = undefined;
    if (seg) await seg.fh.close();
  }

  /** Starts a new segment file and makes its directory entry durable. */
  async roll(): Promise<void> {
    const id = this.nextId++;
    const fh = await open(join(this.dir, segmentFileName(id)), 'wx');
    try {
      await syncDir(this.dir);
    } catch (err) {
      await fh.close();
      await unlink(join(this.dir, segmentFileName(id))).catch(() => undefined);
      throw err;
    }
    const old = this.current;
    this.current = { id, fh, size: 0 };
    if (old) await old.fh.close();
  }

  private async cutBack(seg: { fh: FileHandle; size: number }, length: number): Promise<void> {
    try {
      await seg.fh.truncate(length);
    } catch {
      // Truncating to a shorter length frees space and does not fail on a full disk; if it does
      // anyway (EIO), the stray bytes are unreferenced and go with the segment when it is reclaimed.
    }
    seg.size = length;
  }
}

/** writev until every byte is written (a short write happens just before ENOSPC). */
async function writeAllAt(fh: FileHandle, buffers: Buffer[], position: number): Promise<void> {
  let pending = buffers.filter((b) => b.length > 0);
  let pos = position;
  while (pending.length) {
    const { bytesWritten } = await fh.writev(pending, pos);
    if (bytesWritten === 0) throw Object.assign(new Error('no progress writing segment'), { code: 'EIO' });
    pos += bytesWritten;
    let skip = bytesWritten;
    const rest: Buffer[] = [];
    for (const b of pending) {
      if (skip >= b.length) { skip -= b.length; continue; }
      rest.push(skip > 0 ? b.subarray(skip) : b);
      skip = 0;
    }
    pending = rest;
  }
}

export async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
