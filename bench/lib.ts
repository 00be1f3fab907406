/**
 * Pieces the benchmarks share: Debian's smtp-source as the load (in the two shapes every
 * comparison reports) and smtp-sink as the receiver, dumping one file per mail on tmpfs so mails
 * can be counted and timed.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import type net from 'node:net';
import { join } from 'node:path';

export { freePort, waitForPort } from '../test/helpers/ports.js';

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * - kept (smtp-source -d): each of the sessions sends mail after mail over its own connection.
 * - per-mail: each mail on a new connection (connect, greeting, one mail, QUIT), sessions in parallel.
 */
export type Shape = 'kept' | 'per-mail';

export function parseShapes(arg: string | undefined): Shape[] {
  const shapes: Shape[] = !arg || arg === 'both' ? ['kept', 'per-mail'] : [arg as Shape];
  if (!shapes.every((x) => x === 'kept' || x === 'per-mail')) throw new Error(`--shape must be kept, per-mail or both, not ${arg}`);
  return shapes;
}

export interface Load {
  sessions: number;
  size: number;
  shape: Shape;
}

/** Runs smtp-source against 127.0.0.1:port; resolves with its wall time in ms. */
export function smtpSource(port: number, messages: number, load: Load, recipient = 'rcpt@dest.example'): Promise<number> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const p = spawn('smtp-source', [...(load.shape === 'kept' ? ['-d'] : []), '-s', String(load.sessions), '-m', String(messages), '-l', String(load.size),
      '-f', 'bench@sender.example', '-t', recipient, `127.0.0.1:${port}`], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr!.on('data', (d) => { err += d; });
    p.on('exit', (code) => (code === 0 ? resolve(performance.now() - t0) : reject(new Error(`smtp-source exited ${code}: ${err}`))));
  });
}

/** smtp-sink dumping one file per mail into a tmpfs dir (chrooted there, as the postfix user). */
export class Sink {
  readonly dir: string;
  private proc?: ChildProcess;
  constructor(readonly port: number) {
    this.dir = mkdtempSync('/dev/shm/spoolhouse-sink-');
    chownSync(this.dir, Number(execFileSync('id', ['-u', 'postfix']).toString().trim()), 0);
  }
  pid(): number | undefined {
    return this.proc?.pid;
  }
  start(): void {
    this.proc = spawn('smtp-sink', ['-u', 'postfix', '-R', this.dir, '-d', 'm-', `127.0.0.1:${this.port}`, '512'], { stdio: 'ignore' });
  }
  count(): number {
    return readdirSync(this.dir).length;
  }
  clear(): void {
    for (const f of readdirSync(this.dir)) rmSync(join(this.dir, f));
  }
  /** Per mail: when the sink finished writing it (ms) and the Spoolhouse queue id it carries. */
  receipts(): { at: number; id?: string }[] {
    return readdirSync(this.dir).map((f) => {
      const path = join(this.dir, f);
      const head = readFileSync(path).subarray(0, 4096).toString('latin1');
      const id = /\(Spoolhouse\) with \S+ id ([0-9A-HJKMNP-TV-Z]{26})/.exec(head)?.[1];
      return { at: statSync(path).mtimeMs, ...(id ? { id } : {}) };
    });
  }
  async untilHas(n: number, timeoutMs = 600_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.count() < n) {
      if (Date.now() > deadline) throw new Error(`sink has ${this.count()} of ${n} after ${timeoutMs} ms`);
      await sleep(10);
    }
  }
  stop(): void {
    this.proc?.kill('SIGKILL');
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;
}

/** Percentile of unsorted samples, rounded to 0.01. */
export function percentileOf(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return Math.round(s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! * 100) / 100;
}

/** Runs a benchmark's main: its JSON summary goes to stdout, a failure to stderr with exit code 1. */
export function runBench(main: () => Promise<unknown>): void {
  main().catch((err) => {
    process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  });
}

/** `top` deep-merged over `base` (objects merge, anything else replaces): BENCH_CONFIG overlays on a bench's server config. */
export function overlay(base: Record<string, unknown>, top: Record<string, unknown>): Record<string, unknown> {
  const out = { ...base };
  for (const [k, v] of Object.entries(top)) {
    const b = out[k];
    out[k] = v && typeof v === 'object' && !Array.isArray(v) && b && typeof b === 'object' && !Array.isArray(b) ? overlay(b as Record<string, unknown>, v as Record<string, unknown>) : v;
  }
  return out;
}

/** /proc counts CPU time in ticks of 10 ms (USER_HZ is 100 on Linux). */
const TICK_MS = 10;

/** The fields of a /proc .../stat line after the command name (which may hold spaces): f[0] is state, f[1] ppid, f[11] utime. */
function statFields(stat: string): string[] {
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/**
 * CPU time (user and system, ms) used so far by a process and all its descendants, those already
 * reaped included (their time is in their parent's cutime/cstime): the cost of an MTA's whole
 * process tree (Postfix's master, smtpd, cleanup, qmgr, smtp...; Spoolhouse's one process).
 */
export function treeCpuMs(root: number): { user: number; system: number } {
  const procs = new Map<number, { ppid: number; user: number; system: number }>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    // Fields after the command name (which may hold spaces): state ppid ... utime(14) stime(15) cutime(16) cstime(17).
    const f = statFields(stat);
    procs.set(Number(name), { ppid: Number(f[1]), user: Number(f[11]) + Number(f[13]), system: Number(f[12]) + Number(f[14]) });
  }
  let user = 0;
  let system = 0;
  const queue = [root];
  while (queue.length) {
    const pid = queue.pop()!;
    const p = procs.get(pid);
    if (!p) continue;
    user += p.user;
    system += p.system;
    for (const [child, c] of procs) if (c.ppid === pid) queue.push(child);
  }
  return { user: user * TICK_MS, system: system * TICK_MS };
}

/** CPU time (ms, user + system) of a process's main thread: the task whose id is the process's own. */
export function mainThreadCpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/task/${pid}/stat`, 'utf8');
  const f = statFields(stat);
  return (Number(f[11]) + Number(f[12])) * TICK_MS;
}

/** CPU (ms, user + system) of this process's children that have exited (smtp-source runs, once reaped). */
export function reapedChildrenCpuMs(): number {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const f = statFields(stat);
  return (Number(f[13]) + Number(f[14])) * TICK_MS;
}

/**
 * Machine-wide CPU time since boot (ms summed over cores): busy (everything but idle and iowait),
 * steal (time a virtual machine's cores wanted to run but the host ran something else; part of
 * busy) and total. Steal is why one run on a shared host can be much slower than the next.
 */
export function machineCpuMs(): { busy: number; steal: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!; // "cpu  user nice system idle iowait irq softirq steal ..."
  const v = line.trim().split(/\s+/).slice(1, 9).map(Number);
  const total = v.reduce((a, b) => a + b, 0);
  return { busy: (total - v[3]! - v[4]!) * TICK_MS, steal: v[7]! * TICK_MS, total: total * TICK_MS };
}

/** Between two machineCpuMs() readings: the share of all cores that was busy, and the share the host took away (steal). */
export function machineShare(a: ReturnType<typeof machineCpuMs>, b: ReturnType<typeof machineCpuMs>): { busy: number; stolen: number } {
  const total = Math.max(1, b.total - a.total);
  return { busy: +((b.busy - a.busy) / total).toFixed(2), stolen: +((b.steal - a.steal) / total).toFixed(2) };
}

/** Reads SMTP replies (multi-line aware) from a socket, in order: code and last line; a
 * closed connection answers everything still awaited with code 0. */
export class ReplyReader {
  #buf = '';
  #waiters: ((r: { code: number; line: string }) => void)[] = [];
  #replies: { code: number; line: string }[] = [];
  #closed = false;
  constructor(socket: net.Socket) {
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      this.#buf += chunk;
      let eol: number;
      while ((eol = this.#buf.indexOf('\r\n')) >= 0) {
        const line = this.#buf.slice(0, eol);
        this.#buf = this.#buf.slice(eol + 2);
        if (line[3] === '-') continue;
        const r = { code: Number(line.slice(0, 3)), line };
        const w = this.#waiters.shift();
        if (w) w(r);
        else this.#replies.push(r);
      }
    });
    const close = () => {
      this.#closed = true;
      for (const w of this.#waiters.splice(0)) w({ code: 0, line: 'connection closed' });
    };
    socket.on('close', close);
    socket.on('error', close);
  }
  next(): Promise<{ code: number; line: string }> {
    const r = this.#replies.shift();
    if (r) return Promise.resolve(r);
    if (this.#closed) return Promise.resolve({ code: 0, line: 'connection closed' });
    return new Promise((resolve) => this.#waiters.push(resolve));
  }
}
