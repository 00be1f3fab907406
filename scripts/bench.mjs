// `npm run bench`: the performance figures (never part of `npm test`). Builds, then runs each
// benchmark that exists, in one run on this machine, so the ratios to Postfix are side by side:
//   compare      Postfix vs Spoolhouse: durable ingest and end to end, 20 sessions of 5 KB (smtp-source → smtp-sink)
//   ingest       Spoolhouse ingest: 1 and 20 sessions, 5 KB and 100 KB
//   delivery     Spoolhouse end to end with latency p50/p99
//   spool-scale  the embedded spool with a large queue (--count, default 1,000,000): recovery, browse, RSS
//   spool-transitions  CPU per mail of the spool's enqueue, reserveDue and recordAttempt (no SMTP)
//   spool-churn  40 rounds of enqueue / deliver / defer / purge of mixed sizes: does the spool slow or grow as LMDB's free list fragments
//   kafka-ingest the Kafka backend's ingest (needs KAFKA_BROKERS or starts the test broker)
//   kafka-e2e    one node on the Kafka backend: smtp-source → Spoolhouse → smtp-sink, ingest and end to end, latency p50/p99
//   admin-browse the admin API over a large spool (--count, default 1,000,000): filtered pages p50/p99 over HTTP, /api/stats
// Only when named (it takes --minutes, default 30): `npm run bench -- soak`
//   soak         the server under a steady mixed load (deferrals, bounces, an operator at work, reloads): growth of
//                memory, descriptors, disk and event-loop lag, and every accepted mail delivered or bounced
// `npm run bench -- compare ingest` runs only those; for options run one directly, e.g.
// `node dist/bench/spool-scale.js --count 100000`.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { BENCH_APT_PACKAGES, build, ensureNodeModules, ensureSystemPackages, root } from './setup.mjs';

/** Run only when named: long, and not a speed figure. */
const NAMED_ONLY = ['soak'];
const ALL = ['compare', 'ingest', 'delivery', 'spool-scale', 'spool-transitions', 'spool-churn', 'kafka-ingest', 'kafka-e2e', 'admin-browse'];
const names = process.argv.slice(2).filter((a) => ALL.includes(a) || NAMED_ONLY.includes(a));
ensureNodeModules();
ensureSystemPackages(BENCH_APT_PACKAGES);
build();
let failed = 0;
for (const name of names.length ? names : ALL) {
  const file = join(root, 'dist', 'bench', `${name}.js`);
  if (!existsSync(file)) { console.error(`bench: ${name}: not built, skipped`); continue; }
  console.error(`\n=== bench ${name} ===`);
  const r = spawnSync(process.execPath, [file], { stdio: 'inherit', cwd: root });
  if (r.status !== 0) { failed++; console.error(`bench ${name} failed (${r.status ?? r.signal})`); }
}
process.exit(failed ? 1 : 0);
