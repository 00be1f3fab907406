/**
 * Runs the queue contract against the embedded spool (SpoolQueue), each test in a fresh temp dir.
 */
import { silentLogger } from '../../src/logger.js';
import { SpoolQueue } from '../../src/queue/spool/spool-queue.js';
import { makeTmpDir } from '../helpers/tmp.js';
import { queueContract, reopenableHandle } from './queue-contract.js';

queueContract('spool', async () => {
  const dir = await makeTmpDir('spool-contract-');
  return reopenableHandle(async () => {
    const q = new SpoolQueue({ dir: dir.path, retainFinishedMs: 3_600_000, maxSize: 1024 ** 3, logger: silentLogger() });
    await q.start();
    return q;
  }, () => dir.cleanup());
});
