/**
 * What a Kafka test file needs from the run's broker (test/kafka/global-setup.ts).
 * Kafka tests never skip: without a broker they fail, under CI and locally alike.
 */
import { randomBytes } from 'node:crypto';
import { inject } from 'vitest';

export function kafkaBrokers(): string[] {
  const brokers = inject('kafkaBrokers');
  if (!brokers) {
    throw new Error('No Kafka broker for this run: unset SPOOLHOUSE_SKIP_KAFKA, or set KAFKA_BROKERS=host:port');
  }
  return brokers.split(',');
}

/** A topic prefix nobody else in this or another run uses. */
export function uniquePrefix(tag: string): string {
  return `t-${tag}-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
}
