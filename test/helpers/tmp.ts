/**
 * Temporary directories for tests: created under os.tmpdir() with mkdtemp, removed afterwards.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TmpDir {
  path: string;
  cleanup(): Promise<void>;
}

export async function makeTmpDir(prefix = 'spoolhouse-'): Promise<TmpDir> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, cleanup: () => rm(path, { recursive: true, force: true }) };
}

/** Runs `fn` with a fresh temp dir and removes it afterwards, whatever happens. */
export async function withTmpDir<T>(fn: (dir: string) => Promise<T>, prefix?: string): Promise<T> {
  const dir = await makeTmpDir(prefix);
  try {
    return await fn(dir.path);
  } finally {
    await dir.cleanup();
  }
}
