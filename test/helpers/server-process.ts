/**
 * Runs the built server (`node dist/src/main.js --config FILE`) as a child process, the way an
 * operator does, and learns its ports from the pino JSON lines on stdout ("smtp listening" with
 * host and port, "admin listening" with url). Needs `npx tsc -p .` first (`npm test` builds).
 * Helpers to stop it: SIGTERM (graceful) or SIGKILL (a crash).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export const projectRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const mainScript = join(projectRoot, 'dist', 'src', 'main.js');

export interface LogLine {
  level?: number;
  msg?: string;
  [key: string]: unknown;
}

export interface ServerProcess {
  child: ChildProcess;
  smtp: { host: string; port: number }[];
  adminUrl?: string;
  /** Every JSON line logged so far (stdout). */
  logs: LogLine[];
  stderr(): string;
  /** Resolves with the first log line matching, waiting for it if needed. */
  waitForLog(match: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /** SIGKILL: a crash at whatever instant it is. */
  kill9(): Promise<void>;
  /** SIGTERM: graceful shutdown; resolves with the exit code. */
  term(timeoutMs?: number): Promise<number | null>;
  exited: Promise<number | null>;
}

export interface StartOptions {
  /** The overlay config file, or an object written to `<dir>/config.json`. */
  config: string | { dir: string; overlay: Record<string, unknown> };
  env?: Record<string, string>;
  /** When the server counts as started; default: the "spoolhouse ready" line (or both listeners seen). */
  ready?: (p: { smtpCount: number; adminUrl?: string; line: LogLine }) => boolean;
  timeoutMs?: number;
}

export async function startServer(o: StartOptions): Promise<ServerProcess> {
  if (!existsSync(mainScript)) throw new Error(`${mainScript} is missing: build first (npx tsc -p .)`);
  let configFile: string;
  if (typeof o.config === 'string') configFile = o.config;
  else {
    configFile = join(o.config.dir, 'config.json');
    writeFileSync(configFile, JSON.stringify(o.config.overlay, null, 2));
  }
  const child = spawn(process.execPath, [mainScript, '--config', configFile], {
    cwd: projectRoot,
    env: { ...process.env, ...o.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: LogLine[] = [];
  const watchers: { match: (l: LogLine) => boolean; resolve: (l: LogLine) => void }[] = [];
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => {
    stderr += d;
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code, signal) => resolve(code ?? (signal ? null : code))));
  const proc: ServerProcess = {
    child,
    smtp: [],
    logs,
    stderr: () => stderr,
    waitForLog(match, timeoutMs = 20_000) {
      const seen = logs.find(match);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`log line not seen in ${timeoutMs} ms; stderr: ${stderr.slice(-2000)}`)), timeoutMs);
        watchers.push({ match, resolve: (l) => { clearTimeout(timer); resolve(l); } });
        void exited.then((code) => { clearTimeout(timer); reject(new Error(`server exited (${code}) before the log line; stderr: ${stderr.slice(-2000)}`)); });
      });
    },
    async kill9() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
    async term(timeoutMs = 45_000) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
    exited,
  };
  createInterface({ input: child.stdout! }).on('line', (text) => {
    let line: LogLine;
    try {
      line = JSON.parse(text) as LogLine;
    } catch {
      line = { msg: text };
    }
    logs.push(line);
    if (line.msg === 'smtp listening') proc.smtp.push({ host: String(line.host), port: Number(line.port) });
    if (line.msg === 'admin listening' && typeof line.url === 'string') proc.adminUrl = line.url;
    for (const w of watchers.splice(0)) {
      if (w.match(line)) w.resolve(line);
      else watchers.push(w);
    }
  });
  const ready = o.ready ?? ((p) => p.line.msg === 'spoolhouse ready');
  try {
    await proc.waitForLog((line) => ready({ smtpCount: proc.smtp.length, ...(proc.adminUrl ? { adminUrl: proc.adminUrl } : {}), line }), o.timeoutMs ?? 30_000);
  } catch (err) {
    await proc.kill9();
    throw err;
  }
  return proc;
}
