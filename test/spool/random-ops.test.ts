/**
 * The random walk of test/contract/random-walk.ts on the embedded spool, in a fresh temp dir.
 */
import { silentLogger } from '../../src/logger.js';
import { SpoolQueue } from '../../src/queue/spool/spool-queue.js';
import { randomWalk } from '../contract/random-walk.js';
import { reopenableHandle } from '../contract/queue-contract.js';
import { makeTmpDir } from '../helpers/tmp.js';

randomWalk('the spool', async () => {
  const dir = await makeTmpDir('spoolhouse-random-ops-');
  return reopenableHandle(async () => {
    const q = new SpoolQueue({ dir: dir.path, retainFinishedMs: 3_600_000, maxSize: 2 ** 30, logger: silentLogger() });
    await q.start();
    return q;
  }, () => dir.cleanup());
}, { steps: 600, restartReleasesLeases: true });
