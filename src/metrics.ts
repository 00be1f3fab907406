/**
 * Prometheus metrics (prom-client), named by what they count. One registry per server process;
 * stages receive it and update what they own. Queue depth is read from `queue.stats()` at scrape.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

const PROCESS_PREFIX = 'spoolhouse_process_';
/** How often the event-loop delay is sampled (prom-client's default is 10 ms). */
const LAG_RESOLUTION_MS = 100;

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
  collectDefaultMetrics({ register: registry, prefix: PROCESS_PREFIX, eventLoopMonitoringPrecision: LAG_RESOLUTION_MS });
  eventLoopDelay(registry, PROCESS_PREFIX, LAG_RESOLUTION_MS);
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

/**
 * prom-client's `nodejs_eventloop_lag_{min,max,mean,stddev,p50,p90,p99}_seconds` report what
 * `monitorEventLoopDelay` records: the interval between its timer's runs, the resolution included
 * (prom-client issue #370). An idle loop read 0.1 s at our 100 ms resolution, so an alert on a
 * p99 lag of 100 ms fired on an idle server. These gauges, under the same names, report the delay
 * beyond the resolution (0 on an idle loop), from the scrape before to this one.
 */
function eventLoopDelay(registry: Registry, prefix: string, resolutionMs: number): void {
  const histogram = monitorEventLoopDelay({ resolution: resolutionMs });
  histogram.enable();
  const resolutionNs = resolutionMs * 1e6;
  const late = (ns: number) => Math.max(0, ns - resolutionNs) / 1e9;
  const stats: [string, string, () => number][] = [
    ['min', 'The least event loop delay since the last scrape', () => late(histogram.min)],
    ['max', 'The greatest event loop delay since the last scrape', () => late(histogram.max)],
    ['mean', 'The mean event loop delay since the last scrape', () => late(histogram.mean)],
    ['stddev', 'The standard deviation of the event loop delays since the last scrape', () => histogram.stddev / 1e9],
    ['p50', 'The median event loop delay since the last scrape', () => late(histogram.percentile(50))],
    ['p90', 'The 90th percentile of the event loop delays since the last scrape', () => late(histogram.percentile(90))],
    ['p99', 'The 99th percentile of the event loop delays since the last scrape', () => late(histogram.percentile(99))],
  ];
  // The first gauge's collect sets them all from one window, then starts the next one (the
  // registry collects its metrics in the order they were registered).
  const gauges: Gauge[] = [];
  for (const [i, [stat, help]] of stats.entries()) {
    const name = `${prefix}nodejs_eventloop_lag_${stat}_seconds`;
    registry.removeSingleMetric(name);
    gauges.push(new Gauge({
      name,
      help: `${help}, in seconds, beyond the ${resolutionMs} ms sampling interval`,
      registers: [registry],
      ...(i === 0 ? {
        collect() {
          if (histogram.count === 0) return; // no sample since the last scrape: the last values stay
          stats.forEach(([, , value], j) => gauges[j]!.set(value()));
          histogram.reset();
        },
      } : {}),
    }));
  }
}
