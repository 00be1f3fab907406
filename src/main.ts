#!/usr/bin/env node
/**
 * The Spoolhouse server: config → queue → ingress, scheduler, admin.
 *
 * Start-up order matters for durability: the queue recovers before anything can enqueue or
 * reserve. Shutdown runs the other way: stop accepting SMTP (so no 250 is promised that the
 * queue cannot keep), let delivery finish or hand back its leases, close admin, close the queue.
 * SIGHUP re-reads the config files; a broken file is logged and the running config kept.
 * `--check` only checks the configuration and the files it names, then exits (0, or 78 with the
 * problems), as `postfix check` or `nginx -t` do: before a reload or a restart.
 */
import { hostname } from 'node:os';
import { ConfigError, overlayFileFromArgs } from './config/load.js';
import type { Config } from './config/schema.js';
import { ConfigStore, chooseOverlay, restartOnlyChanges } from './config/store.js';
import { createLogger, type Logger } from './logger.js';
import { createMetrics } from './metrics.js';
import { openQueue } from './queue/index.js';
import { SmtpIngress, checkIngressFiles } from './ingress/index.js';
import { Scheduler } from './scheduler/index.js';
import { checkDeliveryFiles, Deliverer, destinationView } from './delivery/deliverer.js';
import { checkAdminFiles, createAdminServer } from './admin/index.js';

const SHUTDOWN_TIMEOUT_MS = 30_000;

async function main(argv: string[]): Promise<void> {
  let store: ConfigStore;
  /** Without --config: config/local.json when it exists (where PUT /api/config saves changes). */
  let overlay: string | undefined;
  try {
    overlay = chooseOverlay(overlayFileFromArgs(argv));
    store = new ConfigStore(overlay);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`spoolhouse: ${err.message}\n`);
      process.exit(78); // EX_CONFIG
    }
    throw err;
  }
  if (argv.includes('--check')) process.exit(checkConfiguration(store, overlay));
  // The files the config names, before the queue is opened: a broken one stops the start here.
  if (reportFileProblems(configFiles(store.current))) process.exit(78);
  const config = store.current;
  const logger = createLogger({ level: config.log.level, pretty: config.log.pretty, flushMs: config.log.flushInterval });
  logger.info({ files: [store.defaultsFile, ...(overlay ? [overlay] : [])], backend: config.queue.backend }, 'starting spoolhouse');

  const metrics = createMetrics();
  const queue = await openQueue(config, logger);
  await queue.start();
  // On a cluster: the run-time settings any node's operator changed (the last value of each at
  // start, then each change as it comes), before the stages start.
  queue.sharedSettings?.subscribe((sections) => applySharedSettings(store, logger, sections));

  const nodeName = config.kafka.nodeId ?? hostname();
  const delivery = new Deliverer({ config: () => store.current, logger });
  const scheduler = new Scheduler({ config: store, queue, delivery, logger, metrics, nodeName });
  const ingress = new SmtpIngress({ config: store, queue, logger, metrics, inFlow: (maxMs) => scheduler.inFlow(maxMs) });
  const admin = await createAdminServer({
    config: store, queue, logger, metrics, dataDir: config.spool.dir, suspendedDestinations: () => scheduler.suspendedDestinations(),
    refusals: ingress.refusals,
    replies: (q) => scheduler.replies(q),
    whereTo: (domain) => delivery.resolve(domain).then((d) => destinationView(d, store.current)),
    connectionsTo: (domain) => scheduler.destinationConnections(domain),
    deliveringNow: () => scheduler.deliveringNow(),
    nodeName,
  });

  await ingress.listen();
  scheduler.start();
  await admin.listen();
  logger.info('spoolhouse ready');

  process.on('SIGHUP', () => reload(store, logger));
  // A new log.level (SIGHUP) applies at once: the stages' child loggers have no level of their
  // own, so they follow the root's.
  store.on('change', (next, previous) => {
    if (next.log.level === previous.log.level) return;
    logger.level = next.log.level;
    logger.info({ from: previous.log.level, to: next.log.level }, 'log level changed');
  });
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down');
    const force = setTimeout(() => {
      logger.error('shutdown took too long; exiting');
      process.exit(1);
    }, SHUTDOWN_TIMEOUT_MS + 10_000);
    force.unref();
    try {
      await ingress.close();
      await scheduler.stop(SHUTDOWN_TIMEOUT_MS);
      await admin.close();
      await delivery.close();
      await queue.close();
      logger.info('stopped');
      logger.flush();
      process.exit(0);
    } catch (err) {
      logger.error({ err }, 'error during shutdown');
      process.exit(1);
    }
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}

/** A section of the run-time configuration set through a node of the cluster (this one included). */
/** One change made on any node of the cluster (the sections of one PUT /api/config), applied as one. */
function applySharedSettings(store: ConfigStore, logger: Logger, sections: Record<string, unknown>): void {
  try {
    if (store.replaceSections(sections)) logger.info({ sections: Object.keys(sections) }, 'configuration changed through the cluster');
  } catch (err) {
    // E.g. a rule naming a priority class this node's files lack: this node keeps what it has.
    logger.error({ err, sections: Object.keys(sections) }, 'a change shared through the cluster is not valid here; this node keeps its own');
  }
}

/** Every file the config names, each checked as its stage will read it. */
function configFiles(config: Config): { key: string; file: string; entries?: number; problem?: string }[] {
  return [...checkIngressFiles(config), ...checkAdminFiles(config), ...checkDeliveryFiles(config)];
}

/** Writes one line per file of the config that cannot be used; true when there was one. */
function reportFileProblems(files: ReturnType<typeof configFiles>): boolean {
  const problems = files.filter((f) => f.problem);
  for (const p of problems) process.stderr.write(`spoolhouse: ${p.key}: ${p.problem}\n`);
  return problems.length > 0;
}

/** `--check`: the config is valid (or the store would not exist); now the files it names. */
function checkConfiguration(store: ConfigStore, overlay: string | undefined): number {
  const files = configFiles(store.current);
  if (reportFileProblems(files)) return 78;
  const read = [store.defaultsFile, ...(overlay ? [overlay] : []), ...files.map((f) => `${f.file} (${f.key}${f.entries === undefined ? '' : `, ${f.entries} entries`})`)];
  process.stdout.write(`spoolhouse: configuration OK\n${read.map((f) => `  ${f}\n`).join('')}`);
  return 0;
}

function reload(store: ConfigStore, logger: Logger): void {
  try {
    const previous = store.current;
    const next = store.reload();
    logger.info({ file: store.overlayFile }, 'configuration reloaded');
    const later = restartOnlyChanges(previous, next);
    if (later.length) logger.warn({ keys: later }, 'configuration reloaded, but these settings take effect at the next restart');
  } catch (err) {
    logger.error({ err: (err as Error).message }, 'configuration reload failed; keeping the running configuration');
  }
}

main(process.argv.slice(2)).catch((err) => {
  // A file the config names found broken when a stage starts (changed since it was checked).
  if (err instanceof ConfigError) {
    process.stderr.write(`spoolhouse: ${err.message}\n`);
    process.exit(78); // EX_CONFIG
  }
  process.stderr.write(`spoolhouse: fatal: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
