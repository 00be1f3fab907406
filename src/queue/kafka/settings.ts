/**
 * Run-time settings shared by the nodes of one Kafka cluster (Queue.sharedSettings): what an
 * operator changes through one node's API (relay.reject, delivery.paused, delivery.routes, rules, …) holds on
 * every node.
 *
 * Topic `<p>.settings`: one partition (one order for every node), compacted, key = the section's
 * dotted path, value = its whole value as JSON. Compaction keeps the last value of each section,
 * which is all a node starting later needs.
 *
 * Each instance reads the whole topic with a consumer group of its own; `start` returns once it has
 * read up to the end offset it found (so a node starts with the cluster's settings), or after
 * `catchUpMs` with a warning, when the broker is slow (the settings then arrive a little later).
 * A record is applied once, in offset order, whatever consumer reads it.
 */
import { randomBytes } from 'node:crypto';
import type { Consumer, Kafka, Producer } from 'kafkajs';
import type { Logger } from '../../logger.js';
import { QueueUnavailableError } from '../errors.js';
import type { SharedSettings } from '../types.js';

export class KafkaSettings implements SharedSettings {
  readonly #latest = new Map<string, unknown>();
  readonly #listeners = new Set<(section: string, value: unknown) => void>();
  #consumer: Consumer | undefined;
  #next = 0;
  #progress: (() => void) | undefined;
  #open = false;

  constructor(
    private readonly kafka: Kafka,
    private readonly producer: () => Producer | undefined,
    readonly topic: string,
    private readonly groupPrefix: string,
    private readonly log: Logger,
  ) {}

  /** Reads the topic up to `end` (its end offset when the queue started), at most `catchUpMs`, then goes on reading. */
  async start(end: number, catchUpMs: number): Promise<void> {
    this.#open = true;
    const caughtUp = new Promise<void>((resolve) => {
      this.#progress = () => {
        if (this.#next >= end) resolve();
      };
      this.#progress();
    });
    await this.#run();
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<boolean>((resolve) => { timer = setTimeout(() => resolve(true), catchUpMs); });
    if (await Promise.race([caughtUp.then(() => false), late])) {
      this.log.warn({ topic: this.topic, read: this.#next, end }, 'shared settings not read to the end in time; starting with what was read');
    }
    clearTimeout(timer);
  }

  /**
   * A consumer in a group of its own, from the topic's start. One that kafkajs gives up on (an
   * error it does not retry, as after some broker outages) is replaced, or this node would miss
   * every later change; the new one reads the topic again, and what is already applied is skipped.
   */
  async #run(): Promise<void> {
    const consumer = this.kafka.consumer({
      groupId: `${this.groupPrefix}.${randomBytes(4).toString('hex')}`,
      maxWaitTimeInMs: 250,
      allowAutoTopicCreation: false,
      retry: { retries: 1_000_000, initialRetryTime: 200, maxRetryTime: 2_000 },
    });
    this.#consumer = consumer;
    consumer.on(consumer.events.CRASH, (e) => {
      if (this.#consumer === consumer) this.onConsumerCrash(e.payload);
    });
    await consumer.connect();
    await consumer.subscribe({ topics: [this.topic], fromBeginning: true });
    await consumer.run({
      autoCommit: false,
      eachMessage: async ({ message }) => {
        // A replacement consumer reads from the start again: what was applied once is not again.
        if (Number(message.offset) < this.#next) return;
        this.#next = Number(message.offset) + 1;
        const section = message.key?.toString('utf8');
        if (section && message.value) this.#apply(section, message.value);
        this.#progress?.();
      },
    });
  }

  /** @internal (tests call it to simulate a crash) kafkajs's CRASH event of the running consumer. */
  onConsumerCrash(payload: { error: Error; restart: boolean }): void {
    if (payload.restart || !this.#open) return;
    this.log.error({ err: payload.error }, 'shared settings consumer stopped; starting a new one');
    void this.#consumer?.disconnect().catch(() => undefined);
    const retry = (): void => {
      if (!this.#open) return;
      this.#run().catch((err: unknown) => {
        this.log.warn({ err }, 'starting a new shared settings consumer failed; trying again');
        setTimeout(retry, 2_000).unref();
      });
    };
    setTimeout(retry, 1_000).unref();
  }

  async close(): Promise<void> {
    this.#open = false;
    await this.#consumer?.disconnect().catch((err: unknown) => this.log.warn({ err }, 'settings consumer disconnect failed'));
    this.#consumer = undefined;
  }

  #apply(section: string, raw: Buffer): void {
    let value: unknown;
    try {
      value = JSON.parse(raw.toString('utf8'));
    } catch (err) {
      this.log.error({ err, section }, 'unreadable shared setting ignored');
      return;
    }
    this.#latest.set(section, value);
    for (const listener of this.#listeners) listener(section, value);
  }

  async publish(sections: Record<string, unknown>): Promise<void> {
    const producer = this.producer();
    if (!producer) throw new QueueUnavailableError('Kafka queue is not open');
    const messages = Object.entries(sections).map(([key, value]) => ({ key, value: JSON.stringify(value) }));
    try {
      await producer.send({ topic: this.topic, acks: -1, messages });
    } catch (err) {
      throw new QueueUnavailableError(`Kafka did not store the settings: ${(err as Error).message}`, err);
    }
  }

  subscribe(listener: (section: string, value: unknown) => void): () => void {
    for (const [section, value] of this.#latest) listener(section, value);
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
}
