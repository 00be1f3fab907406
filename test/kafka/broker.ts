/**
 * What a Kafka test file needs from the run's broker (test/kafka/global-setup.ts).
 * Kafka tests never skip: without a broker they fail, under CI and locally alike.
 */
import { randomBytes } from 'node:crypto';
import { inject } from 'vitest';

/** The run's Kafka 4 broker, or with `version` '3.9' its Kafka 3.9 one. */
export function kafkaBrokers(version: '4' | '3.9' = '4'): string[] {
  const brokers = version === '4' ? inject('kafkaBrokers') : inject('kafka39Brokers');
  if (!brokers) {
    throw new Error(`No Kafka ${version} broker for this run: unset SPOOLHOUSE_SKIP_KAFKA, or set ${version === '4' ? 'KAFKA_BROKERS' : 'KAFKA39_BROKERS'}=host:port`);
  }
  return brokers.split(',');
}

/** A topic prefix nobody else in this or another run uses. */
export function uniquePrefix(tag: string): string {
  return `t-${tag}-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
}
