/**
 * Runs the queue contract against the embedded spool (SpoolQueue), each test in a fresh temp dir.
 */
import { queueContract } from './queue-contract.js';
import { openSpoolContractQueue } from './spool-handle.js';

queueContract('spool', () => openSpoolContractQueue());
