/**
 * Runs the queue contract against the Kafka backend on a real Kafka 3.9 broker (the line before 4,
 * still run by many clusters; started beside the Kafka 4 one by test/kafka/global-setup.ts), so a
 * difference between the two (protocol versions kafkajs negotiates, topic configs, group
 * coordination) shows up here.
 */
import { kafkaBrokers } from '../kafka/broker.js';
import { openKafkaContractQueue } from './kafka-handle.js';
import { queueContract } from './queue-contract.js';

queueContract('kafka 3.9', () => openKafkaContractQueue(kafkaBrokers('3.9')));
