/**
 * The stage boundaries of DESIGN.md, enforced on every test run (`npm test`):
 * arrows point one way, and nothing outside src/queue knows which backend runs.
 */
module.exports = {
  forbidden: [
    {
      name: 'backend-is-private',
      comment: 'Only src/queue/index.ts may pick a backend; stages use the Queue interface.',
      severity: 'error',
      from: { path: '^src/', pathNot: '^src/queue/' },
      to: { path: '^src/queue/(spool|kafka)/' },
    },
    {
      name: 'backends-do-not-know-each-other',
      severity: 'error',
      from: { path: '^src/queue/spool/' },
      to: { path: '^src/queue/kafka/' },
    },
    {
      name: 'delivery-knows-no-queue',
      comment: 'delivery takes a batch and returns outcomes; the scheduler talks to the queue.',
      severity: 'error',
      from: { path: '^src/delivery/' },
      to: { path: '^src/(queue|scheduler|ingress|admin|bounce|cli)/' },
    },
    {
      name: 'config-imports-no-stage',
      severity: 'error',
      from: { path: '^src/config/' },
      to: { path: '^src/(queue|scheduler|ingress|admin|bounce|cli|delivery)/' },
    },
    {
      name: 'queue-imports-no-stage',
      severity: 'error',
      from: { path: '^src/queue/' },
      to: { path: '^src/(scheduler|ingress|admin|bounce|cli|delivery)/' },
    },
    {
      name: 'cli-talks-only-to-the-api',
      severity: 'error',
      from: { path: '^src/cli/' },
      to: { path: '^src/(queue|scheduler|ingress|admin|bounce|delivery)/' },
    },
    {
      name: 'no-circular',
      severity: 'error',
      from: {},
      to: { circular: true, dependencyTypesNot: ['type-only'] },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    exclude: { path: '^(dist|node_modules|admin-ui)/' },
  },
};
