/**
 * Prometheus metrics (prom-client), named by what they count. One registry per server process;
 * stages receive it and update what they own. Queue depth is read from `queue.stats()` at scrape.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export interface Metrics {
  registry: Registry;
  /** Mails accepted (250 to DATA), by listener. */
  acceptedTotal: Counter<'listener'>;
  /** SMTP transactions refused, by reason (relay, size, recipients, storage, syntax, auth, …). */
  rejectedTotal: Counter<'reason'>;
  /** Recipients delivered (2xx). */
  deliveredTotal: Counter<'via'>;
  /** Recipients deferred, by reason (4xx, network, dns, …). */
  deferredTotal: Counter<'reason'>;
  /** Recipients failed permanently (they get a DSN). */
  bouncedTotal: Counter<'reason'>;
  /** Recipients deferred, failed or expired, by outcome and kind of reply (src/scheduler/reply-kind.ts). */
  repliesTotal: Counter<'outcome' | 'kind'>;
  /** New mail transactions made to wait at MAIL FROM because delivery was behind (smtp.inFlowDelay). */
  inFlowWaits: Counter;
  /** Seconds from acceptance to delivery of a recipient. */
  deliverySeconds: Histogram<'priority'>;
  /** Queue depth by state and priority (set at scrape from queue stats). */
  queueDepth: Gauge<'state' | 'priority'>;
}

export function createMetrics(): Metrics {
  const registry = new Registry();
  // The event-loop lag is sampled every 100 ms, not prom-client's 10 ms: an idle server would
  // otherwise wake a hundred times a second to take the sample.
  collectDefaultMetrics({ register: registry, prefix: 'spoolhouse_process_', eventLoopMonitoringPrecision: 100 });
  const registers = [registry];
  return {
    registry,
    acceptedTotal: new Counter({ name: 'spoolhouse_accepted_total', help: 'Mails accepted by the SMTP ingress', labelNames: ['listener'], registers }),
    rejectedTotal: new Counter({ name: 'spoolhouse_rejected_total', help: 'SMTP commands or transactions refused, by reason', labelNames: ['reason'], registers }),
    deliveredTotal: new Counter({ name: 'spoolhouse_delivered_total', help: 'Recipients delivered', labelNames: ['via'], registers }),
    deferredTotal: new Counter({ name: 'spoolhouse_deferred_total', help: 'Recipient deliveries deferred, by reason', labelNames: ['reason'], registers }),
    inFlowWaits: new Counter({ name: 'spoolhouse_in_flow_waits_total', help: 'New mail transactions that waited at MAIL FROM for deliveries to finish (smtp.inFlowDelay)', registers }),
    bouncedTotal: new Counter({ name: 'spoolhouse_bounced_total', help: 'Recipients failed permanently, by reason', labelNames: ['reason'], registers }),
    repliesTotal: new Counter({ name: 'spoolhouse_recipient_replies_total', help: 'Recipients deferred, failed or expired, by outcome and kind of reply (invalid-recipient, rate-limited, spam-block, ...)', labelNames: ['outcome', 'kind'], registers }),
    deliverySeconds: new Histogram({
      name: 'spoolhouse_delivery_seconds',
      help: 'Time from acceptance to delivery of a recipient',
      labelNames: ['priority'],
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400],
      registers,
    }),
    queueDepth: new Gauge({ name: 'spoolhouse_queue_depth', help: 'Mails in the queue by state and priority', labelNames: ['state', 'priority'], registers }),
  };
}
