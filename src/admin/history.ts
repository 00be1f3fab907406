/**
 * Queue depth over time, kept by the admin server so the console's chart starts with the last
 * day instead of an empty plot (and so a script can fetch it): every `everyMs` (default 10 s)
 * the counts by state and the rates are sampled; a day of samples is kept (8,640 at the
 * default), oldest dropped first.
 *
 * With `file` (the admin server gives `<dataDir>/depth-history.jsonl`) the samples survive a
 * restart: each one is appended as a JSON line, and `start()` reads them back. History is for
 * charts, not an account of mail, so appends are not fsync'ed: a crash may cost the last few
 * samples, and a line torn by it is skipped when reading. The file is rewritten (to a temporary
 * file, then renamed over it) at start and whenever it holds twice what is kept, so it stays
 * near a day's worth (about 2 MB). A file that cannot be read or written costs the persistence,
 * with a warning, never the server or the in-memory history.
 */
import { mkdir, open, readFile, rename, writeFile, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { DepthSample, Rates } from '../api-types.js';
import type { Logger } from '../logger.js';
import type { Queue } from '../queue/types.js';

export class DepthHistory {
  readonly everyMs: number;
  readonly keepMs: number;
  #samples: DepthSample[] = [];
  #timer: NodeJS.Timeout | undefined;
  #file: FileHandle | undefined;
  /** Lines in the file (kept samples and older ones not yet compacted away). */
  #fileLines = 0;
  /** Appends and rewrites, one at a time and in order. */
  #writes: Promise<void> = Promise.resolve();
  /** Samples kept in memory whose append is still queued: a rewrite leaves them to it. */
  #unwritten = new Set<DepthSample>();
  #warned = false;
  #stopped = false;

  constructor(private readonly o: { queue: Queue; rates: () => Promise<Rates>; logger: Logger; everyMs?: number; keepMs?: number; file?: string }) {
    this.everyMs = o.everyMs ?? 10_000;
    this.keepMs = o.keepMs ?? 24 * 3_600_000;
  }

  /** Reads the samples a previous run left (if `file`), then samples every `everyMs`. */
  async start(): Promise<void> {
    this.#stopped = false;
    if (this.o.file) {
      this.#samples = await this.#load(this.o.file);
      await this.#enqueue(() => this.#rewriteNow());
    }
    void this.sample();
    this.#timer = setInterval(() => void this.sample(), this.everyMs);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#timer);
    await this.#writes;
    await this.#file?.close().catch(() => undefined);
    this.#file = undefined;
  }

  /** Samples at or after `since` (ms), oldest first. */
  since(since = 0): DepthSample[] {
    if (since <= 0) return [...this.#samples];
    return this.#samples.filter((s) => s.at >= since);
  }

  async sample(): Promise<DepthSample | undefined> {
    try {
      const [stats, rates] = await Promise.all([this.o.queue.stats({ topN: 1 }), this.o.rates()]);
      // A sample that was under way when stop() ran is dropped: after stop, memory and file agree.
      if (this.#stopped) return undefined;
      const s: DepthSample = { at: stats.at, byState: stats.byState, rates };
      this.#samples.push(s);
      const cutoff = s.at - this.keepMs;
      while (this.#samples.length && this.#samples[0]!.at < cutoff) this.#samples.shift();
      if (this.o.file) this.#persist(s);
      return s;
    } catch (err) {
      // The queue may be briefly unavailable (Kafka down): a gap in the chart, not an error page.
      this.o.logger.debug({ err }, 'admin: depth sample failed');
      return undefined;
    }
  }

  /** Samples from the file within keepMs, oldest first; torn or foreign lines are skipped. */
  async #load(file: string): Promise<DepthSample[]> {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if (!['ENOENT', 'ENOTDIR'].includes((err as NodeJS.ErrnoException).code ?? '')) this.#warn(err, 'could not read the depth history; starting a new one');
      return [];
    }
    const cutoff = Date.now() - this.keepMs;
    const out: DepthSample[] = [];
    for (const line of text.split('\n')) {
      if (!line) continue;
      let v: unknown;
      try {
        v = JSON.parse(line);
      } catch {
        continue;
      }
      if (isSample(v) && v.at >= cutoff) out.push(v);
    }
    return out.sort((a, b) => a.at - b.at);
  }

  #persist(s: DepthSample): void {
    this.#unwritten.add(s);
    this.#enqueue(async () => {
      this.#unwritten.delete(s);
      if (!this.#file) return;
      await this.#file.appendFile(JSON.stringify(s) + '\n');
      this.#fileLines++;
      if (this.#fileLines > 2 * Math.max(this.#samples.length, 1) + 10) await this.#rewriteNow();
    });
  }

  /**
   * The kept samples to a temporary file, renamed over the old one; appends go on there. Samples
   * taken meanwhile, whose appends are queued behind this, are left to those appends (written here
   * too, they would be in the file twice).
   */
  async #rewriteNow(): Promise<void> {
    const file = this.o.file!;
    await this.#file?.close().catch(() => undefined);
    this.#file = undefined;
    const tmp = `${file}.tmp`;
    await mkdir(dirname(file), { recursive: true });
    const written = this.#samples.filter((x) => !this.#unwritten.has(x));
    await writeFile(tmp, written.map((x) => JSON.stringify(x) + '\n').join(''), { mode: 0o600 });
    await rename(tmp, file);
    this.#fileLines = written.length;
    this.#file = await open(file, 'a', 0o600);
  }

  #enqueue(step: () => Promise<void>): Promise<void> {
    this.#writes = this.#writes.then(step).catch((err: unknown) => this.#warn(err, 'could not write the depth history; it is kept in memory only'));
    return this.#writes;
  }

  #warn(err: unknown, msg: string): void {
    if (this.#warned) return;
    this.#warned = true;
    this.o.logger.warn({ err: (err as Error).message, file: this.o.file }, `admin: ${msg}`);
  }
}

function isSample(v: unknown): v is DepthSample {
  const s = v as DepthSample | null;
  return typeof s === 'object' && s !== null && typeof s.at === 'number' && Number.isFinite(s.at)
    && typeof s.byState === 'object' && s.byState !== null && typeof s.rates === 'object' && s.rates !== null;
}
