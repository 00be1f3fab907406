/**
 * Structured logs (pino): JSON lines, pretty when stdout is a terminal (or log.pretty says so).
 * Every line about a mail carries `mailId`; use `logger.child({ mailId })`.
 */
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(opts: { level: string; pretty: boolean | null; name?: string }): Logger {
  const pretty = opts.pretty ?? process.stdout.isTTY === true;
  return pino({
    name: opts.name ?? 'spoolhouse',
    level: opts.level,
    // Credentials never reach a log line, whatever a caller passes.
    redact: { paths: ['token', 'password', 'pass', '*.token', '*.password', '*.pass', 'req.headers.authorization'], censor: '[redacted]' },
    ...(pretty ? { transport: { target: 'pino-pretty', options: { colorize: true, translateTime: 'SYS:standard' } } } : {}),
  });
}

/** A logger that writes nothing, for tests and tools. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
