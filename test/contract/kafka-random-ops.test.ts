/**
 * The random walk of random-walk.ts on the Kafka backend, on the run's real Kafka 4 broker (fresh
 * topics; a restart opens a new instance on them). Fewer steps: each operation is a produce and its
 * acknowledgement.
 */
import { kafkaBrokers } from '../kafka/broker.js';
import { openKafkaContractQueue } from './kafka-handle.js';
import { randomWalk } from './random-walk.js';

randomWalk('the Kafka backend', () => openKafkaContractQueue(kafkaBrokers()), { steps: 200, restartReleasesLeases: false });
