/**
 * Structured logs (pino): JSON lines, pretty when stdout is a terminal (or log.pretty says so).
 * Every line about a mail carries `mailId`; use `logger.child({ mailId })`.
 *
 * JSON lines are buffered (log.flushInterval): written when LOG_BUFFER_BYTES have gathered or
 * the interval has passed, and at exit. A write per line cost ingest 15–20 % of its CPU per mail
 * (one `write` to the log file for every line, on the main thread). A kill -9 loses at most the
 * last interval's lines; never a mail, whose durability does not depend on the log.
 */
import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

/** Lines gathered before a write, at most (the flush interval writes fewer). */
export const LOG_BUFFER_BYTES = 8192;

/**
 * `destination`: where lines go instead of stdout (tests). `flushMs`: buffer JSON lines on stdout
 * for up to this long (0 or absent: write each line at once).
 */
export function createLogger(opts: { level: string; pretty: boolean | null; name?: string; flushMs?: number }, destination?: DestinationStream): Logger {
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
  if (destination) return pino(options, destination);
  if (pretty || !opts.flushMs) return pino(options);
  // sonic-boom (pino's own destination): synchronous writes of whole buffers, a timer for the rest.
  const dest = pino.destination({ dest: 1, sync: true, minLength: LOG_BUFFER_BYTES, periodicFlush: opts.flushMs });
  process.on('exit', () => {
    try {
      dest.flushSync();
    } catch {
      // stdout gone (closed pipe): nothing left to write to.
    }
  });
  return pino(options, dest);
}

/** A logger that writes nothing, for tests and tools. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
