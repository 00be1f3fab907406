/**
 * Runs the queue contract against the embedded spool (SpoolQueue), each test in a fresh temp dir.
 */
import { silentLogger } from '../../src/logger.js';
import { SpoolQueue } from '../../src/queue/spool/spool-queue.js';
import type { Queue } from '../../src/queue/types.js';
import { makeTmpDir } from '../helpers/tmp.js';
import { queueContract } from './queue-contract.js';

queueContract('spool', async () => {
  const dir = await makeTmpDir('spool-contract-');
  const make = async (): Promise<SpoolQueue> => {
    const q = new SpoolQueue({ dir: dir.path, retainFinishedMs: 3_600_000, maxSize: 1024 ** 3, logger: silentLogger() });
    await q.start();
    return q;
  };
  let queue: Queue = await make();
  return {
    queue,
    async reopen() {
      await queue.close();
      queue = await make();
      return queue;
    },
    async cleanup() {
      await queue.close();
      await dir.cleanup();
    },
  };
});
