// `npm start`: installs and builds what is missing, then runs the server on the embedded spool
// with config/default.json (plus --config FILE or SPOOLHOUSE_CONFIG when given).
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { build, ensureNodeModules, root } from './setup.mjs';

ensureNodeModules();
build();
const child = spawn(process.execPath, [join(root, 'dist/src/main.js'), ...process.argv.slice(2)], { stdio: 'inherit' });
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => child.kill(sig));
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
