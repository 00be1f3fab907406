/**
 * One process owns a data directory (`spool.dir`): the spool's files, or with the Kafka backend the
 * node's local body cache, its audit log, admin token and depth history. Two Spoolhouse processes
 * on one directory would interleave those, so the second is refused at start. The lock is a
 * `LOCK` file holding the owner's pid, created with link(2) (atomic: fails if it exists). A lock
 * whose pid no longer runs is stale (the owner was killed) and is taken over. Within one process a
 * second open of the same directory is refused too.
 *
 * Why not flock: Node has no flock without a native addon. A pid lock is what Postfix-era tools
 * used; its weak spot (pid reuse after a crash) only causes a refusal to start, never two owners.
 */
import { link, readFile, unlink, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { QueueUnavailableError } from './errors.js';

const heldInProcess = new Set<string>();

function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export class DirLock {
  private constructor(private readonly path: string, private readonly key: string) {}

  static async acquire(dir: string): Promise<DirLock> {
    const key = resolve(dir);
    if (heldInProcess.has(key)) throw new QueueUnavailableError(`Directory ${dir} (spool.dir) is already open in this process`);
    const path = join(dir, 'LOCK');
    const tmp = join(dir, `LOCK.${process.pid}.${Date.now()}`);
    await writeFile(tmp, `${process.pid}\n`);
    try {
      for (let tries = 0; ; tries++) {
        try {
          await link(tmp, path);
          break;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || tries >= 3) throw err;
        }
        const owner = Number((await readFile(path, 'utf8').catch(() => '')).trim());
        if (owner !== process.pid && pidAlive(owner)) {
          throw new QueueUnavailableError(`Directory ${dir} (spool.dir) is locked by running process ${owner}: each Spoolhouse process needs its own spool.dir`);
        }
        // Stale lock of a dead process (or of this pid from an earlier, crashed life): take it over.
        await unlink(path).catch(() => undefined);
      }
    } finally {
      await unlink(tmp).catch(() => undefined);
    }
    heldInProcess.add(key);
    return new DirLock(path, key);
  }

  async release(): Promise<void> {
    heldInProcess.delete(this.key);
    await unlink(this.path).catch(() => undefined);
  }
}
