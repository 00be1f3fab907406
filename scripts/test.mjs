// `npm test`: the whole suite, from nothing. Installs npm and Debian packages the tests need,
// builds (which type-checks), checks the stage boundaries, then runs every vitest suite
// (contract on both backends, ingress, delivery, admin, Kafka against a real broker, browser).
// Ends with one plain line "N passed, N failed, N skipped" from vitest's JSON report.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { build, ensureNodeModules, ensureSystemPackages, root, run } from './setup.mjs';

ensureNodeModules();
ensureSystemPackages();
build();
run('npx', ['depcruise', '--config', '.dependency-cruiser.cjs', 'src']);

const report = join(root, '.vitest-report.json');
let rc = 0;
try {
  run('npx', ['vitest', 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${report}`, ...process.argv.slice(2)]);
} catch (err) {
  rc = err.status ?? 1;
}
if (existsSync(report)) {
  const r = JSON.parse(readFileSync(report, 'utf8'));
  // A file whose import or beforeAll threw has no failed test of its own: count it as a failure.
  const broken = r.testResults.filter((f) => f.status === 'failed' && !f.assertionResults.some((a) => a.status === 'failed')).length;
  console.log(`${r.numPassedTests} passed, ${r.numFailedTests + broken} failed, ${r.numPendingTests + r.numTodoTests} skipped`);
}
process.exit(rc);
