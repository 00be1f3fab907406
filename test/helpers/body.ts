/** Reads a queued mail's body whole, from any backend (the queue may yield Buffers or strings). */
import type { Queue } from '../../src/queue/types.js';

export async function bodyOf(q: Pick<Queue, 'readBody'>, id: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of await q.readBody(id)) chunks.push(Buffer.isBuffer(c) ? c : Buffer.from(c as string));
  return Buffer.concat(chunks);
}
