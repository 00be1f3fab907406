/**
 * The random walk of test/contract/random-walk.ts on the embedded spool, in a fresh temp dir.
 */
import { randomWalk } from '../contract/random-walk.js';
import { openSpoolContractQueue } from '../contract/spool-handle.js';

randomWalk('the spool', () => openSpoolContractQueue('spoolhouse-random-ops-'), { steps: 600, restartReleasesLeases: true });
