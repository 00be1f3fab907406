/**
 * Structured logs (pino): JSON lines, pretty when stdout is a terminal (or log.pretty says so).
 * Every line about a mail carries `mailId`; use `logger.child({ mailId })`.
 *
 * JSON lines to stdout are written in batches (`flushMs`, log.flushInterval): up to 4 KB at a
 * time, and at the latest `flushMs` after a line was logged (an idle server has no timer
 * running). Each write is handed to a libuv thread and comes back; a write a line (a mail logs
 * one) cost about a tenth of the main thread at full ingest (ab.js: 204 against 182 µs a mail
 * with batches). pino writes what is left synchronously
 * when the process exits (a signal, a fatal error); a kill -9 or a crash of the machine can lose
 * the lines of the last `flushMs`, never mail.
 */
import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

/** pino.destination's stream (sonic-boom). */
type FileDestination = ReturnType<typeof pino.destination>;

/** Bytes of log lines gathered before a write (when log.flushInterval is not 0). */
const LOG_BATCH_BYTES = 4096;

/** `destination`: where lines go instead of stdout (tests). */
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
  return pino(options, flushedAfter(pino.destination({ dest: process.stdout.fd || 1, sync: false, minLength: LOG_BATCH_BYTES }), opts.flushMs));
}

/**
 * Lines still gathered are written `ms` after the first of them, by a timer armed by that line.
 * (sonic-boom's own periodicFlush is an interval: an idle server woke every `ms` and handed an
 * empty write to libuv's pool each time.)
 */
function flushedAfter(dest: FileDestination, ms: number): FileDestination {
  const write = dest.write.bind(dest);
  let timer: NodeJS.Timeout | undefined;
  const flush = () => {
    timer = undefined;
    dest.flush();
  };
  dest.write = (line: string) => {
    const ok = write(line);
    if (!timer) {
      timer = setTimeout(flush, ms);
      timer.unref();
    }
    return ok;
  };
  return dest;
}

/** A logger that writes nothing, for tests and tools. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
