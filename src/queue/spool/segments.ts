/**
 * Message bodies in append-only segment files (`<dir>/segments/<8-digit id>.seg`).
 *
 * Each body is written as one frame: a 24-byte header (magic, kind, the lengths, a CRC-32 of
 * header, record and body), then for a new mail its record (what the spool needs to enqueue it
 * again: the enqueue request as JSON), then the body. A body's location points at the body
 * itself, so readers never see frames. The frames make the segments the spool's write-ahead log
 * for new mail (see SpoolQueue: a mail is acknowledged once its frame is fdatasync'ed, before the
 * LMDB transaction that indexes it; `readFrames` gives the frames past the last indexed one back
 * after a crash).
 *
 * Guarantees:
 * - `appendGroup` writes every frame of a group (one writev), then one fdatasync, and only then
 *   returns their locations; metadata that references a body is committed afterwards, so a body
 *   that metadata points to is always complete on disk.
 * - A failed append (ENOSPC, EIO) truncates the segment back to where the group started, so no
 *   half-written bytes stay behind, and the error is rethrown for the caller to map.
 * - Groups are appended one after the other, each synced before the next is written: a torn
 *   frame (a crash during a group's write) can only be in the last group, and `readFrames` stops
 *   at the first frame whose magic, lengths or CRC do not hold.
 * - Every process run starts a fresh segment: bytes after the last frame of an old segment (a
 *   group cut by kill -9) are never appended to, only reclaimed with the whole segment once none
 *   of its bodies is live.
 * - New segment files are made durable in the directory (fsync of the directory) before any body
 *   in them is acknowledged.
 *
 * - Compaction (SpoolQueue.compactSegments) copies the live bodies of a mostly dead sealed segment
 *   into the current one like any new body (a frame without a record, append + fdatasync before
 *   the metadata points at them), so the old file can go; it is never written to.
 *
 * - Preallocation: once the current segment is half full, the next one is made ahead of time
 *   (`<dir>/segment.spare`: zero-filled to the segment size and fdatasync'ed, then renamed into
 *   segments/ when it is needed, its directory entry synced like any new segment's). Writing into
 *   blocks that are already allocated and on disk, a group's fdatasync flushes only its data; on an
 *   append that grows the file it also commits the new size and blocks through the file system's
 *   journal (ext4 here: about 150 against 300 µs a group, and a writev a third as dear). Zeros are
 *   never a frame (the magic does not hold), so `readFrames` stops where the data ends. A sealed or
 *   closed segment is cut back to its data; a spare left by a crash is deleted at open. Skipped
 *   while the file system has less than SPARE_MIN_FREE (or 8 segments) free, so a nearly full disk
 *   behaves as without it.
 *
 * Plain read/write syscalls only (no mmap), so a full disk is an error code, never a SIGBUS.
 * Segments written before frames existed (raw bodies back to back) are still read by location;
 * they are never replayed (see SpoolQueue.replayLog).
 */
import { writevSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import { mkdir, open, readdir, rename, stat, statfs, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { MailNotFoundError } from '../errors.js';

export interface BodyLocation {
  seg: number;
  off: number;
  len: number;
}

/** A place in the segments, ordered by segment, then offset. */
export interface LogPosition {
  seg: number;
  off: number;
}

export function comparePositions(a: LogPosition, b: LogPosition): number {
  return a.seg - b.seg || a.off - b.off;
}

export interface SegmentEntry {
  body: Buffer;
  /** For a new mail: the record replay enqueues it from. Absent for a body copied by compaction. */
  record?: Buffer;
}

/** A frame read back by `readFrames`. */
export interface Frame {
  start: LogPosition;
  record?: Buffer;
  body: BodyLocation;
}

const FRAME_MAGIC = 0x31485053; // "SPH1" read as a little-endian uint32
export const FRAME_HEADER_BYTES = 24;
const KIND_BODY = 0;
const KIND_MAIL = 1;

/** A frame's CRC: over header bytes 0..15 (magic, kind, lengths), the record and the body. */
function frameCrc(head: Buffer, record: Buffer | undefined, body: Buffer): number {
  let crc = crc32(head);
  if (record?.length) crc = crc32(record, crc);
  return crc32(body, crc);
}

function frameHeader(record: Buffer | undefined, body: Buffer): Buffer {
  const h = Buffer.alloc(FRAME_HEADER_BYTES);
  h.writeUInt32LE(FRAME_MAGIC, 0);
  h[4] = record ? KIND_MAIL : KIND_BODY;
  h.writeUInt32LE(record?.length ?? 0, 8);
  h.writeUInt32LE(body.length, 12);
  h.writeUInt32LE(frameCrc(h.subarray(0, 16), record, body), 16);
  return h;
}

const SEGMENT_NAME = /^(\d{8})\.seg$/;

/**
 * A group of at most this many bytes is written to the page cache on the calling thread: a
 * memory copy of tens of microseconds, against a round trip through libuv's thread pool whose
 * completion waits for a busy event loop (about 0.3 ms of every mail's wait for its 250 at
 * ingest). Larger groups (big mails) are written by the pool, so the event loop never stalls.
 */
const SYNC_WRITE_MAX = 256 * 1024;

export function segmentFileName(seg: number): string {
  return `${String(seg).padStart(8, '0')}.seg`;
}

/** No spare segment is made while the file system has less than this (or 8 segments) free. */
const SPARE_MIN_FREE = 64 * 1024 * 1024;
/** The zeros of a spare are written this much at a time. */
const ZERO_CHUNK = 1024 * 1024;

interface OpenSegment {
  id: number;
  fh: FileHandle;
  /** Where the data ends: the next frame goes here. */
  size: number;
  /** Bytes from the start that are allocated and zero-filled on disk ahead of the data (0: none). */
  allocated: number;
}

export class SegmentStore {
  readonly dir: string;
  private readonly sparePath: string;
  private current?: OpenSegment;
  /** The next segment being made ready (see preallocation above); undefined once it could not be. */
  private spare?: Promise<{ fh: FileHandle; bytes: number } | undefined>;
  private nextId = 1;

  constructor(spoolDir: string, private readonly segmentBytes: number, private readonly preallocate = true) {
    this.dir = join(spoolDir, 'segments');
    this.sparePath = join(spoolDir, 'segment.spare');
  }

  /** Lists the segments on disk and starts a new current one. Returns the ids found before that. */
  async open(): Promise<number[]> {
    await mkdir(this.dir, { recursive: true });
    // A crash may have cut its zero-filling short: made again when needed.
    await unlink(this.sparePath).catch(() => undefined);
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
   * Appends one frame per entry, fdatasyncs once, and returns where each body landed, where each
   * frame starts and where the group ends. On failure the segment is cut back to its previous
   * length and the error is rethrown.
   */
  async appendGroup(entries: SegmentEntry[]): Promise<{ locations: BodyLocation[]; starts: LogPosition[]; end: LogPosition }> {
    if (!this.current) throw new Error('segment store is closed');
    if (this.current.size >= this.segmentBytes) await this.roll();
    const seg = this.current!;
    const start = seg.size;
    const locations: BodyLocation[] = [];
    const starts: LogPosition[] = [];
    const buffers: Buffer[] = [];
    let off = start;
    for (const { record, body } of entries) {
      if (body.length > 0xffffffff || (record?.length ?? 0) > 0xffffffff) throw new Error('a segment frame holds at most 4 GiB');
      const header = frameHeader(record, body);
      starts.push({ seg: seg.id, off });
      buffers.push(header);
      if (record) buffers.push(record);
      buffers.push(body);
      off += header.length + (record?.length ?? 0);
      locations.push({ seg: seg.id, off, len: body.length });
      off += body.length;
    }
    try {
      await writeAllAt(seg.fh, buffers, start, off - start <= SYNC_WRITE_MAX);
      await seg.fh.datasync();
    } catch (err) {
      await this.cutBack(seg, start);
      throw err;
    }
    seg.size = off;
    if (this.preallocate && !this.spare && off >= this.segmentBytes / 2) this.spare = this.makeSpare();
    return { locations, starts, end: { seg: seg.id, off } };
  }

  /** The next segment, zero-filled and synced, at `sparePath`; undefined when there is no room for it or it failed. */
  private async makeSpare(): Promise<{ fh: FileHandle; bytes: number } | undefined> {
    try {
      const fs = await statfs(this.dir);
      if (fs.bavail * fs.bsize < Math.max(SPARE_MIN_FREE, 8 * this.segmentBytes)) return undefined;
    } catch {
      return undefined;
    }
    let fh: FileHandle | undefined;
    try {
      fh = await open(this.sparePath, 'w');
      const zeros = Buffer.alloc(Math.min(ZERO_CHUNK, this.segmentBytes));
      for (let off = 0; off < this.segmentBytes; off += zeros.length) {
        await writeAllAt(fh, [zeros.subarray(0, Math.min(zeros.length, this.segmentBytes - off))], off, false);
      }
      await fh.datasync();
      return { fh, bytes: this.segmentBytes };
    } catch {
      // ENOSPC, EIO: the next segment is made as a plain file instead.
      await fh?.close().catch(() => undefined);
      await unlink(this.sparePath).catch(() => undefined);
      return undefined;
    }
  }

  /** Where the next frame will go (the start of the current segment right after open). */
  get end(): LogPosition {
    return { seg: this.current?.id ?? 0, off: this.current?.size ?? 0 };
  }

  /**
   * The whole frames of segment `seg` from offset `from` on, up to the first one that is not
   * whole (torn by a crash, or not a frame at all: an older spool's raw bodies).
   */
  async readFrames(seg: number, from: number): Promise<Frame[]> {
    let fh: FileHandle;
    try {
      fh = await open(join(this.dir, segmentFileName(seg)), 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    try {
      const size = (await fh.stat()).size;
      if (size <= from) return [];
      const buf = Buffer.allocUnsafe(size - from);
      const got = await readFully(fh, buf, from);
      const frames: Frame[] = [];
      let p = 0;
      while (p + FRAME_HEADER_BYTES <= got) {
        if (buf.readUInt32LE(p) !== FRAME_MAGIC) break;
        const kind = buf[p + 4];
        const recordLen = buf.readUInt32LE(p + 8);
        const bodyLen = buf.readUInt32LE(p + 12);
        const bodyAt = p + FRAME_HEADER_BYTES + recordLen;
        if ((kind !== KIND_MAIL && kind !== KIND_BODY) || bodyAt + bodyLen > got) break;
        const record = buf.subarray(p + FRAME_HEADER_BYTES, bodyAt);
        if (frameCrc(buf.subarray(p, p + 16), record, buf.subarray(bodyAt, bodyAt + bodyLen)) !== buf.readUInt32LE(p + 16)) break;
        frames.push({
          start: { seg, off: from + p },
          ...(kind === KIND_MAIL ? { record: Buffer.from(record) } : {}),
          body: { seg, off: from + bodyAt, len: bodyLen },
        });
        p = bodyAt + bodyLen;
      }
      return frames;
    } finally {
      await fh.close();
    }
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
      if (await readFully(fh, buf, loc.off) < loc.len) throw Object.assign(new Error(`segment ${loc.seg} ends inside the body of ${id}`), { code: 'EIO' });
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
    if (seg) await this.seal(seg);
    const spare = await this.spare;
    this.spare = undefined;
    if (spare) {
      await spare.fh.close().catch(() => undefined);
      await unlink(this.sparePath).catch(() => undefined);
    }
  }

  /**
   * Starts a new segment file (the spare when there is one) and makes its directory entry durable.
   */
  async roll(): Promise<void> {
    const id = this.nextId++;
    const path = join(this.dir, segmentFileName(id));
    const spare = await this.spare;
    this.spare = undefined;
    let next: { fh: FileHandle; allocated: number } | undefined;
    if (spare) {
      try {
        await rename(this.sparePath, path);
        next = { fh: spare.fh, allocated: spare.bytes };
      } catch {
        await spare.fh.close().catch(() => undefined);
        await unlink(this.sparePath).catch(() => undefined);
      }
    }
    next ??= { fh: await open(path, 'wx'), allocated: 0 };
    try {
      await syncDir(this.dir);
    } catch (err) {
      await next.fh.close();
      await unlink(path).catch(() => undefined);
      throw err;
    }
    const old = this.current;
    this.current = { id, fh: next.fh, size: 0, allocated: next.allocated };
    if (old) await this.seal(old);
  }

  /** Closes a segment that is no longer written to, cutting off the zeros behind its data. */
  private async seal(seg: OpenSegment): Promise<void> {
    // Not synced: should the cut be lost to a crash, the zeros stay, which readFrames stops at.
    if (seg.allocated > seg.size) await seg.fh.truncate(seg.size).catch(() => undefined);
    await seg.fh.close();
  }

  private async cutBack(seg: OpenSegment, length: number): Promise<void> {
    try {
      await seg.fh.truncate(length);
    } catch {
      // Truncating to a shorter length frees space and does not fail on a full disk; if it does
      // anyway (EIO), the stray bytes are unreferenced and go with the segment when it is reclaimed.
    }
    seg.size = length;
    seg.allocated = Math.min(seg.allocated, length);
  }
}

/** Reads into `buf` from `position` until it is full or the file ends; returns the bytes read. */
async function readFully(fh: FileHandle, buf: Buffer, position: number): Promise<number> {
  let got = 0;
  while (got < buf.length) {
    const { bytesRead } = await fh.read(buf, got, buf.length - got, position + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got;
}

/**
 * writev until every byte is written (a short write happens just before ENOSPC); `sync`: on the
 * calling thread (see SYNC_WRITE_MAX), errors thrown the same way.
 */
async function writeAllAt(fh: FileHandle, buffers: Buffer[], position: number, sync: boolean): Promise<void> {
  let pending = buffers.filter((b) => b.length > 0);
  let pos = position;
  while (pending.length) {
    const bytesWritten = sync ? writevSync(fh.fd, pending, pos) : (await fh.writev(pending, pos)).bytesWritten;
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
