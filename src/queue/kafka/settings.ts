/**
 * Run-time settings shared by the nodes of one Kafka cluster (Queue.sharedSettings): what an
 * operator changes through one node's API (relay.reject, delivery.paused, delivery.routes, rules, …) holds on
 * every node.
 *
 * Topic `<p>.settings`: one partition (one order for every node), compacted, key = the section's
 * dotted path, value = its whole value as JSON. Compaction keeps the last value of each section,
 * which is all a node starting later needs.
 *
 * One publish (one PUT /api/config) is one change on every node: its records carry the publish's
 * id and its number of parts (headers), and a reader hands them to the listeners together, never
 * one section at a time (new priority classes and the rules that name them must arrive as one, or
 * a node would refuse the rules, or the classes, and keep its own). The records of one publish are
 * one produce request to one partition, so they lie next to each other; a part that compaction
 * removed (a later publish replaced that section) is simply missing: a group is applied when all
 * its parts are read, when a record of another publish follows, or at the end of the topic.
 *
 * Each instance reads the whole topic with a consumer group of its own; `start` returns once it has
 * read up to the end offset it found (so a node starts with the cluster's settings), or after
 * `catchUpMs` with a warning, when the broker is slow (the settings then arrive a little later).
 * A record is applied once, in offset order, whatever consumer reads it.
 */
import { randomBytes } from 'node:crypto';
import type { Consumer, IHeaders, Kafka, Producer } from 'kafkajs';
import type { Logger } from '../../logger.js';
import { QueueUnavailableError } from '../errors.js';
import type { SharedSettings } from '../types.js';

/** One record of the settings topic, as the reader needs it. */
export interface SettingsRecord {
  offset: number;
  key: string | undefined;
  value: Buffer | null;
  /** The publish it belongs to and how many records that publish wrote (absent on records of older builds). */
  publish?: { id: string; parts: number };
}

/**
 * Gathers the records of one publish into one change (see the header): `add` each record in
 * offset order, `end` when the records read reach the topic's end; `apply` receives every change.
 */
export class PublishAssembler {
  #group: { id: string; parts: number; records: SettingsRecord[] } | undefined;

  constructor(private readonly apply: (records: SettingsRecord[]) => void) {}

  add(record: SettingsRecord): void {
    if (this.#group && record.publish?.id !== this.#group.id) this.#flush();
    if (!record.publish) {
      this.apply([record]);
      return;
    }
    this.#group ??= { id: record.publish.id, parts: record.publish.parts, records: [] };
    this.#group.records.push(record);
    if (this.#group.records.length >= this.#group.parts) this.#flush();
  }

  /** Nothing more to read for now: a group still open lost its other parts to compaction. */
  end(): void {
    if (this.#group) this.#flush();
  }

  #flush(): void {
    const group = this.#group!;
    this.#group = undefined;
    this.apply(group.records);
  }
}

export class KafkaSettings implements SharedSettings {
  readonly #latest = new Map<string, unknown>();
  readonly #listeners = new Set<(sections: Record<string, unknown>) => void>();
  readonly #assembler = new PublishAssembler((records) => this.#apply(records));
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
      // Whole fetched batches, applied without a pause between their records (eachMessage would
      // let other work run between two sections of one change).
      eachBatch: async ({ batch }) => {
        for (const message of batch.messages) {
          const offset = Number(message.offset);
          // A replacement consumer reads from the start again: what was applied once is not again.
          if (offset < this.#next) continue;
          this.#next = offset + 1;
          this.#assembler.add({ offset, key: message.key?.toString('utf8'), value: message.value, publish: publishOf(message.headers) });
        }
        if (this.#next >= Number(batch.highWatermark)) this.#assembler.end();
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

  #apply(records: SettingsRecord[]): void {
    const sections: Record<string, unknown> = {};
    for (const { key: section, value: raw, offset } of records) {
      if (!section || !raw) continue;
      try {
        sections[section] = JSON.parse(raw.toString('utf8'));
      } catch (err) {
        this.log.error({ err, section, offset }, 'unreadable shared setting ignored');
      }
    }
    if (!Object.keys(sections).length) return;
    for (const [section, value] of Object.entries(sections)) this.#latest.set(section, value);
    for (const listener of this.#listeners) listener(sections);
  }

  async publish(sections: Record<string, unknown>): Promise<void> {
    const producer = this.producer();
    if (!producer) throw new QueueUnavailableError('Kafka queue is not open');
    const entries = Object.entries(sections);
    const headers = { publish: randomBytes(8).toString('hex'), parts: String(entries.length) };
    const messages = entries.map(([key, value]) => ({ key, value: JSON.stringify(value), headers }));
    try {
      await producer.send({ topic: this.topic, acks: -1, messages });
    } catch (err) {
      throw new QueueUnavailableError(`Kafka did not store the settings: ${(err as Error).message}`, err);
    }
  }

  subscribe(listener: (sections: Record<string, unknown>) => void): () => void {
    if (this.#latest.size) listener(Object.fromEntries(this.#latest));
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
}

/** A record's publish headers, when it has both and they make sense. */
function publishOf(headers: IHeaders | undefined): SettingsRecord['publish'] {
  const id = headers?.publish?.toString();
  const parts = Number(headers?.parts?.toString());
  return id && Number.isInteger(parts) && parts > 0 ? { id, parts } : undefined;
}
