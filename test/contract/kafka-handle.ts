/**
 * The Kafka backend as the queue contract opens it, on a given broker: each test gets fresh topics
 * (a unique prefix), and `reopen` closes this node and opens a new instance on the same topics.
 */
import { silentLogger } from '../../src/logger.js';
import { KafkaQueue } from '../../src/queue/kafka/kafka-queue.js';
import { uniquePrefix } from '../kafka/broker.js';
import { reopenableHandle, type ContractHandle } from './queue-contract.js';

const PRIORITIES = { classes: { bulk: 0, normal: 1, high: 2, urgent: 3 }, default: 'normal', lowPriorityShare: 0.1 };

export function openKafkaContractQueue(brokers: string[]): Promise<ContractHandle> {
  const topicPrefix = uniquePrefix('contract');
  return reopenableHandle(async () => {
    const q = new KafkaQueue({
      brokers, clientId: 'contract', topicPrefix, partitions: 3, replicationFactor: 1, nodeId: 'contract-node',
      ssl: false, sasl: null, maxMessageSize: 10 * 1024 * 1024, priorities: PRIORITIES, logger: silentLogger(),
    });
    await q.start();
    return q;
  });
}
