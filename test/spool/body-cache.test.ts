/**
 * The spool's body cache keeps the bodies delivery is about to read: new mail that is due. Held
 * and delayed mail is read from its segment when its time comes, and does not push out the
 * bodies of mail that is due.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/logger.js';
import { newMailId } from '../../src/queue/model.js';
import { SpoolQueue } from '../../src/queue/spool/spool-queue.js';
import type { EnqueueRequest } from '../../src/queue/types.js';
import { makeTmpDir, type TmpDir } from '../helpers/tmp.js';
import { bodyOf } from '../helpers/body.js';

function request(o: Partial<EnqueueRequest> = {}): EnqueueRequest {
  const id = newMailId();
  return {
    id, sender: 'a@cache.example', recipients: [{ address: 'b@dest.example' }], body: Buffer.from(`Subject: ${id}\r\n\r\nbody of ${id}\r\n`),
    priority: 0, notBefore: Date.now(), client: { address: '127.0.0.1' }, classification: { priority: { source: 'default' } }, ...o,
  };
}


describe('spool body cache', () => {
  let tmp: TmpDir;
  let q: SpoolQueue;

  beforeEach(async () => {
    tmp = await makeTmpDir('spool-body-cache-');
    q = new SpoolQueue({ dir: tmp.path, retainFinishedMs: 60_000, maxSize: 1024 ** 3, logger: silentLogger() });
    await q.start();
  });

  afterEach(async () => {
    await q.close();
    await tmp.cleanup();
  });

  it('keeps the bodies of due mail, not of held or delayed mail; every body reads back whole', async () => {
    const due = request();
    const held = request({ hold: { reason: 'held at the door' } });
    const delayed = request({ notBefore: Date.now() + 60_000 });
    const soon = request({ notBefore: Date.now() + 1_000 });
    for (const r of [due, held, delayed, soon]) await q.enqueue(r, { onDurable: () => undefined });
    expect(q.bodyCache.has(due.id)).toBe(true);
    expect(q.bodyCache.has(soon.id)).toBe(true);
    expect(q.bodyCache.has(held.id)).toBe(false);
    expect(q.bodyCache.has(delayed.id)).toBe(false);
    for (const r of [due, held, delayed, soon]) expect((await bodyOf(q, r.id)).toString()).toBe(r.body.toString());
  });
});
