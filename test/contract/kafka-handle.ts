/**
 * The Kafka backend as the queue contract opens it, on a given broker: each test gets fresh topics
 * (a unique prefix), and `reopen` closes this node and opens a new instance on the same topics.
 */
import { uniquePrefix } from '../kafka/broker.js';
import { openKafkaQueue } from '../kafka/helpers.js';
import { reopenableHandle, type ContractHandle } from './queue-contract.js';

export function openKafkaContractQueue(brokers: string[]): Promise<ContractHandle> {
  const topicPrefix = uniquePrefix('contract');
  return reopenableHandle(() => openKafkaQueue(brokers, topicPrefix, { clientId: 'contract', nodeId: 'contract-node', maxMessageSize: 10 * 1024 * 1024 }));
}
