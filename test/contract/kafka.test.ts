/**
 * Runs the queue contract against the Kafka backend on the run's real Kafka 4 broker
 * (test/kafka/global-setup.ts).
 */
import { kafkaBrokers } from '../kafka/broker.js';
import { openKafkaContractQueue } from './kafka-handle.js';
import { queueContract } from './queue-contract.js';

queueContract('kafka', () => openKafkaContractQueue(kafkaBrokers()));
