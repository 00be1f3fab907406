/**
 * Runs the queue contract against the embedded spool (SpoolQueue), each test in a fresh temp dir:
 * once as configured by default (small bodies stored in LMDB) and once with every body in a
 * segment file (spool.inlineMaxBody 0), so both ways of storing a body keep the contract.
 */
import { silentLogger } from '../../src/logger.js';
import { SpoolQueue } from '../../src/queue/spool/spool-queue.js';
import { makeTmpDir } from '../helpers/tmp.js';
import { queueContract, reopenableHandle } from './queue-contract.js';

for (const [name, inlineMaxBody] of [['spool', 64 * 1024], ['spool (bodies in segments)', 0]] as const) {
  queueContract(name, async () => {
    const dir = await makeTmpDir('spool-contract-');
    return reopenableHandle(async () => {
      const q = new SpoolQueue({ dir: dir.path, retainFinishedMs: 3_600_000, maxSize: 1024 ** 3, logger: silentLogger(), inlineMaxBody });
      await q.start();
      return q;
    }, () => dir.cleanup());
  });
}
