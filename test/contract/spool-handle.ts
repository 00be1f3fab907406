/**
 * The embedded spool as the queue contract opens it: a fresh temp dir per handle; `reopen` closes
 * the spool and opens a new instance on the same dir, `cleanup` removes it.
 */
import { silentLogger } from '../../src/logger.js';
import { SpoolQueue } from '../../src/queue/spool/spool-queue.js';
import { makeTmpDir } from '../helpers/tmp.js';
import { reopenableHandle, type ContractHandle } from './queue-contract.js';

export async function openSpoolContractQueue(prefix = 'spool-contract-'): Promise<ContractHandle> {
  const dir = await makeTmpDir(prefix);
  return reopenableHandle(async () => {
    const q = new SpoolQueue({ dir: dir.path, retainFinishedMs: 3_600_000, maxSize: 1024 ** 3, logger: silentLogger() });
    await q.start();
    return q;
  }, () => dir.cleanup());
}
