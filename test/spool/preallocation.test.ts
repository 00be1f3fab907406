/**
 * Segments made ahead of time: once the current segment is half full, the next one is zero-filled
 * and synced at <spool>/segment.spare, and the roll renames it into segments/. Frames are written
 * into its zeros, readFrames stops where the data ends, a closed segment is cut back to its data,
 * and a spare left by a crash goes at the next open.
 */
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SegmentStore, segmentFileName } from '../../src/queue/spool/segments.js';
import { waitFor } from '../scheduler/harness.js';
import { makeTmpDir, type TmpDir } from '../helpers/tmp.js';

const SEGMENT = 64 * 1024;

function entry(i: number, len = 4000): { body: Buffer; record: Buffer } {
  return { body: Buffer.alloc(len, 97 + (i % 26)), record: Buffer.from(JSON.stringify({ i })) };
}

describe('preallocated segments', () => {
  let tmp: TmpDir;
  let store: SegmentStore;
  const spare = () => join(tmp.path, 'segment.spare');
  const segment = (id: number) => join(tmp.path, 'segments', segmentFileName(id));

  beforeEach(async () => {
    tmp = await makeTmpDir('spool-prealloc-');
    store = new SegmentStore(tmp.path, SEGMENT);
    await store.open();
  });
  afterEach(async () => {
    await store.close();
    await tmp.cleanup();
  });

  it('makes the next segment at half full, writes frames into its zeros and reads back exactly those frames', async () => {
    // The first segment of a run is a plain file, growing with its data.
    let i = 0;
    while (store.currentSize < SEGMENT / 2) await store.appendGroup([entry(i++)]);
    expect(statSync(segment(1)).size).toBe(store.currentSize);
    await waitFor('the spare, zero-filled to a whole segment', () => existsSync(spare()) && statSync(spare()).size === SEGMENT);
    expect(readFileSync(spare()).every((b) => b === 0)).toBe(true);

    while (store.currentId === 1) await store.appendGroup([entry(i++)]);
    // The spare became segment 2: full size at once, the data at its start, zeros behind.
    expect(existsSync(spare())).toBe(false);
    const groups = [[entry(100), entry(101)], [entry(102, 10)], [entry(103, 0)]];
    for (const g of groups) await store.appendGroup(g);
    expect(store.currentId).toBe(2);
    expect(statSync(segment(2)).size).toBe(SEGMENT);
    const frames = await store.readFrames(2, 0);
    expect(frames.map((f) => JSON.parse(f.record!.toString()).i)).toEqual([i - 1, 100, 101, 102, 103]);
    const last = frames.at(-1)!;
    expect(last.body.off + last.body.len).toBe(store.currentSize);
    expect(readFileSync(segment(2)).subarray(store.currentSize).every((b) => b === 0)).toBe(true);

    // A group larger than what is left of the zeros grows the file past them.
    const big = entry(200, SEGMENT);
    await store.appendGroup([big]);
    const grown = await store.readFrames(2, 0);
    expect(grown).toHaveLength(frames.length + 1);
    expect(statSync(segment(2)).size).toBe(store.currentSize);
  });

  it('cuts a closed segment back to its data and deletes the spare', async () => {
    let i = 0;
    while (store.currentId === 1) await store.appendGroup([entry(i++)]);
    await store.appendGroup([entry(i++)]);
    expect(statSync(segment(2)).size).toBe(SEGMENT);
    const end = store.currentSize;
    expect(end).toBeLessThan(SEGMENT / 2);
    await store.close();
    expect(statSync(segment(2)).size).toBe(end);
    expect(existsSync(spare())).toBe(false);
    // Reopened: a fresh segment, and the old one's frames read back whole.
    store = new SegmentStore(tmp.path, SEGMENT);
    expect(await store.open()).toEqual([1, 2]);
    expect(store.currentId).toBe(3);
    const frames = await store.readFrames(2, 0);
    expect(frames.at(-1)!.body.off + frames.at(-1)!.body.len).toBe(end);
  });

  it('a spare left behind by a crash is deleted at the next open, and a new one made when needed', async () => {
    await store.close();
    writeFileSync(spare(), Buffer.alloc(1000, 1));
    store = new SegmentStore(tmp.path, SEGMENT);
    await store.open();
    expect(existsSync(spare())).toBe(false);
    let i = 0;
    while (store.currentSize < SEGMENT / 2) await store.appendGroup([entry(i++)]);
    await waitFor('a new spare', () => existsSync(spare()) && statSync(spare()).size === SEGMENT);
  });

  it('makes no spare when told not to', async () => {
    await store.close();
    store = new SegmentStore(tmp.path, SEGMENT, false);
    await store.open();
    const first = store.currentId;
    let i = 0;
    while (store.currentId === first) await store.appendGroup([entry(i++)]);
    await store.appendGroup([entry(i++, 100)]);
    expect(existsSync(spare())).toBe(false);
    // The next segment is a plain file, as long as its data.
    expect(statSync(segment(store.currentId)).size).toBe(store.currentSize);
    expect(store.currentSize).toBeLessThan(SEGMENT);
  });
});
