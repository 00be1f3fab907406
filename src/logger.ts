/**
 * Structured logs (pino): JSON lines, pretty when stdout is a terminal (or log.pretty says so).
 * Every line about a mail carries `mailId`; use `logger.child({ mailId })`.
 */
import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

/** `destination`: where lines go instead of stdout (tests). */
export function createLogger(opts: { level: string; pretty: boolean | null; name?: string }, destination?: DestinationStream): Logger {
  const pretty = destination ? false : opts.pretty ?? process.stdout.isTTY === true;
  const options = {
    name: opts.name ?? 'spoolhouse',
    level: opts.level,
    // Credentials never reach a log line: the fields that hold them, at the top level and where
    // the config keeps them (a whole config section logged by mistake). Explicit paths, not
    // "*.pass": a wildcard makes pino walk every object of every line (~5 µs a line, 3 lines a
    // mail end to end).
    redact: {
      paths: ['token', 'password', 'pass', 'auth.pass', 'smarthost.auth.pass', 'delivery.smarthost.auth.pass', 'sasl.password', 'kafka.sasl.password', 'admin.token', 'req.headers.authorization'],
      censor: '[redacted]',
    },
    ...(pretty ? { transport: { target: 'pino-pretty', options: { colorize: true, translateTime: 'SYS:standard' } } } : {}),
  };
  return destination ? pino(options, destination) : pino(options);
}

/** A logger that writes nothing, for tests and tools. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
