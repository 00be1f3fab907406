/**
 * Helpers for delivery tests: a validated Config from the defaults plus an overlay (short
 * timeouts, the DNS server and port of the test), outbound messages with in-memory bodies, and
 * a Deliverer with an injectable random source.
 */
import { Readable } from 'node:stream';
import { defaultConfigFile, deepMerge, readConfigFile, validateConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import { Deliverer } from '../../src/delivery/deliverer.js';
import type { OutboundMessage } from '../../src/delivery/types.js';
import { silentLogger } from '../../src/logger.js';

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

export function makeDeliverer(config: Config | (() => Config), random?: () => number): Deliverer {
  const get = typeof config === 'function' ? config : () => config;
  return new Deliverer({ config: get, logger: silentLogger(), ...(random ? { random } : {}) });
}
