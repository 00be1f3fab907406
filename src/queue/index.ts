/**
 * The only place that knows which queue backends exist. Stages call `openQueue(config)` and
 * from then on see just the `Queue` interface.
 */
import type { Config } from '../config/schema.js';
import type { Logger } from '../logger.js';
import type { Queue } from './types.js';

export * from './types.js';
export * from './errors.js';
export * from './model.js';

export async function openQueue(config: Config, logger: Logger): Promise<Queue> {
  if (config.queue.backend === 'kafka') {
    const { KafkaQueue } = await import('./kafka/kafka-queue.js');
    return new KafkaQueue({
      ...config.kafka, maxMessageSize: config.smtp.maxMessageSize, priorities: config.priorities, logger,
      // The local body cache and the retention of finished mail follow the spool's settings.
      dataDir: config.spool.dir, retainFinishedMs: config.spool.retainFinished,
    });
  }
  const { SpoolQueue } = await import('./spool/spool-queue.js');
  return new SpoolQueue({
    dir: config.spool.dir, retainFinishedMs: config.spool.retainFinished, maxSize: config.spool.maxSize, minFreeBytes: config.spool.minFree, logger,
  });
}
