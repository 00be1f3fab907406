/**
 * Helpers for delivery tests: a validated Config from the defaults plus an overlay (short
 * timeouts, the DNS server and port of the test), outbound messages with in-memory bodies, a
 * Deliverer with an injectable random source and logger, the destination it resolves a domain
 * to, and scripted receivers that are closed after each test.
 */
import { Readable } from 'node:stream';
import { afterEach } from 'vitest';
import { defaultConfigFile, deepMerge, readConfigFile, validateConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import { Deliverer } from '../../src/delivery/deliverer.js';
import type { Destination, OutboundMessage } from '../../src/delivery/types.js';
import { silentLogger, type Logger } from '../../src/logger.js';
import { startReceiver, type Receiver, type ReceiverOptions } from '../helpers/receiver.js';

export type HostsDestination = Extract<Destination, { kind: 'hosts' }>;

type Plain = Record<string, unknown>;

/** Defaults + test overrides + `overlay`, validated by the real schema. */
export function testConfig(overlay: Plain = {}): Config {
  const base: Plain = {
    smtp: { hostname: 'out.spoolhouse.test' },
    log: { level: 'silent' },
    delivery: {
      heloName: 'out.spoolhouse.test',
      tls: { opportunistic: true, verify: false },
      timeouts: { connect: '2s', greeting: '3s', command: '3s', data: '5s' },
      dns: { servers: [], timeout: '500ms' },
    },
  };
  const merged = deepMerge(deepMerge(readConfigFile(defaultConfigFile()), base), overlay);
  return validateConfig(merged, []);
}

let counter = 0;

export interface TestMessage extends OutboundMessage {
  /** How often stillWanted() was asked. */
  stillWantedCalls: number;
}

/** An outbound message; the body defaults to a small text mail. */
export function outbound(o: Partial<OutboundMessage> & { to: (string | OutboundMessage['recipients'][number])[]; body?: Buffer | string; stream?: boolean; wanted?: boolean }): TestMessage {
  const body = Buffer.isBuffer(o.body) ? o.body : Buffer.from(o.body ?? `Subject: test ${counter}\r\nFrom: a@sender.test\r\n\r\nHello.\r\n`, 'utf8');
  const msg: TestMessage = {
    id: o.id ?? `m${++counter}`,
    sender: o.sender ?? 'a@sender.test',
    recipients: o.to.map((r) => (typeof r === 'string' ? { address: r } : r)),
    size: o.size ?? body.length,
    smtputf8: o.smtputf8 ?? false,
    bodyType: o.bodyType ?? '7BIT',
    ...(o.dsn ? { dsn: o.dsn } : {}),
    stillWantedCalls: 0,
    openBody: async () => (o.stream ? chunked(body) : body),
    stillWanted: async () => {
      msg.stillWantedCalls++;
      return o.wanted ?? true;
    },
  };
  return msg;
}

/** A stream of the body in small uneven chunks (so dot-stuffing meets chunk boundaries). */
function chunked(body: Buffer): Readable {
  const parts: Buffer[] = [];
  for (let i = 0, n = 1; i < body.length; i += n, n = (n % 7) + 1) parts.push(body.subarray(i, i + n));
  return Readable.from(parts);
}

export function makeDeliverer(config: Config | (() => Config), o: { random?: () => number; logger?: Logger } = {}): Deliverer {
  const get = typeof config === 'function' ? config : () => config;
  return new Deliverer({ config: get, logger: o.logger ?? silentLogger(), ...(o.random ? { random: o.random } : {}) });
}

/** Where the deliverer sends mail for `domain`; throws (failing the test) when that is a failure. */
export async function hostsFor(deliverer: Deliverer, domain: string): Promise<HostsDestination> {
  const d = await deliverer.resolve(domain);
  if (d.kind !== 'hosts') throw new Error(`no hosts for ${domain}: ${JSON.stringify(d)}`);
  return d;
}

/** A deliverer whose `delivery.routes` send dest.test to the receiver (no DNS), and that destination. */
export async function routedTo(rx: Receiver, delivery: Record<string, unknown> = {}, o: { random?: () => number; logger?: Logger } = {}): Promise<{ deliverer: Deliverer; dest: HostsDestination }> {
  const deliverer = makeDeliverer(testConfig({ delivery: { routes: { 'dest.test': rx.address }, ...delivery } }), o);
  return { deliverer, dest: await hostsFor(deliverer, 'dest.test') };
}

/**
 * Receivers for the tests of one file, every one closed after each test (call it once, at the
 * top level of the file). `receiver(o)` binds 127.0.0.1 port 0; `receiversOn(a, b, …)` starts one
 * per option set on 127.0.0.1, 127.0.0.2, … all on the first one's port, as several MX hosts
 * share `delivery.port`.
 */
export function receiversPerTest(): {
  receiver(options?: ReceiverOptions): Promise<Receiver>;
  receiversOn(...options: ReceiverOptions[]): Promise<Receiver[]>;
} {
  let open: Receiver[] = [];
  afterEach(async () => {
    const closing = open;
    open = [];
    await Promise.all(closing.map((r) => r.close()));
  });
  const receiver = async (options: ReceiverOptions = {}): Promise<Receiver> => {
    const rx = await startReceiver(options);
    open.push(rx);
    return rx;
  };
  return {
    receiver,
    async receiversOn(...options) {
      const first = await receiver({ ...options[0], host: '127.0.0.1' });
      const all = [first];
      for (let i = 1; i < options.length; i++) all.push(await receiver({ ...options[i], host: `127.0.0.${i + 1}`, port: first.port }));
      return all;
    },
  };
}
