/**
 * Helpers for end-to-end runs of the server process (dist/src/main.js) that deliver to a
 * receiver: the config overlay such a run needs, and numbered test mail pushed into its ingress.
 * Each numbered message carries its number in an "X-Seq:" header, read back at the receiver
 * with `seqOf` / `Receiver.tally` / `Receiver.waitForDeliveries` (test/helpers/receiver.ts).
 *
 * What it guarantees: the overlay listens on 127.0.0.1 port 0 only (SMTP and admin), logs JSON
 * at info (server-process.ts reads the listening lines from it), routes dest.test to the
 * receiver without TLS, and compresses retries (200 ms … 1 s) and the lease (3 s) so a restart
 * or a second node takes over quickly. `sendNumbered` resolves with the numbers the server
 * accepted (a 250 to the final "."), rejects with the first refusal, and closes its transport.
 */
import nodemailer from 'nodemailer';
import type { Receiver } from './receiver.js';

type Plain = Record<string, unknown>;

/** The overlay of a server whose mail for dest.test goes to `rx`; `delivery` adds or replaces delivery keys. */
export function deliveringServerOverlay(o: { rx: Receiver; spoolDir: string; hostname?: string; delivery?: Plain; extra?: Plain }): Plain {
  return {
    smtp: { listen: ['127.0.0.1:0'], hostname: o.hostname ?? 'mx.spoolhouse.test', earlyTalkerDelay: '0ms' },
    spool: { dir: o.spoolDir },
    admin: { listen: '127.0.0.1:0' },
    log: { level: 'info', pretty: false },
    delivery: {
      routes: { 'dest.test': o.rx.address },
      tls: { opportunistic: false, verify: false },
      retry: { min: '200ms', max: '1s', lifetime: '1h' },
      leaseTime: '3s',
      ...o.delivery,
    },
    ...o.extra,
  };
}


export interface SendNumberedOptions {
  /** SMTP sessions used at once (nodemailer pool). */
  connections: number;
  /** The raw message for a number; it must carry "X-Seq: <seq>" among its header fields. */
  message: (seq: number) => Buffer;
  from?: string;
  to?: string[];
  host?: string;
}

/** Sends mails 0 … count-1 to host:port; the numbers whose DATA got a 250. */
export async function sendNumbered(port: number, count: number, o: SendNumberedOptions): Promise<Set<number>> {
  const t = nodemailer.createTransport({
    host: o.host ?? '127.0.0.1', port, secure: false, ignoreTLS: true, pool: true, maxConnections: o.connections, maxMessages: Infinity,
  });
  const accepted = new Set<number>();
  try {
    await Promise.all(Array.from({ length: count }, async (_, seq) => {
      await t.sendMail({ envelope: { from: o.from ?? 'sender@origin.test', to: o.to ?? ['user@dest.test'] }, raw: o.message(seq) });
      accepted.add(seq);
    }));
  } finally {
    t.close();
  }
  return accepted;
}
