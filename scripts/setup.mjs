// Installs what Spoolhouse needs on a fresh Debian machine, and nothing twice:
// npm packages (npm ci when node_modules is missing or older than the lock file), the admin
// console build, and, for the test suite, Debian packages (chromium for the console's browser
// tests). Used by `npm start` and `npm test`, so each is one command on a fresh machine.
import { execFileSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = join(dirname(fileURLToPath(import.meta.url)), '..');

export function run(cmd, args, opts = {}) {
  execFileSync(cmd, args, { cwd: root, stdio: 'inherit', ...opts });
}

function mtime(p) {
  try { return statSync(join(root, p)).mtimeMs; } catch { return 0; }
}

export function ensureNodeModules() {
  const marker = 'node_modules/.package-lock.json';
  if (!existsSync(join(root, marker)) || mtime('package-lock.json') > mtime(marker)) {
    console.error('setup: npm ci');
    run('npm', ['ci', '--no-audit', '--no-fund']);
  }
}

const APT_PACKAGES = { '/usr/bin/chromium': ['chromium', 'fonts-dejavu-core'] };
/** For `npm run bench`: Postfix as the reference MTA, its smtp-source and smtp-sink as load and sink. */
export const BENCH_APT_PACKAGES = { '/usr/sbin/postfix': ['postfix'], '/usr/sbin/smtp-source': ['postfix'] };

export function ensureSystemPackages(packages = APT_PACKAGES) {
  const missing = [...new Set(Object.entries(packages).filter(([file]) => !existsSync(file)).flatMap(([, pkgs]) => pkgs))];
  if (missing.length === 0) return;
  if (process.getuid?.() !== 0) {
    throw new Error(`setup: please install the Debian packages ${missing.join(' ')} (needs root)`);
  }
  console.error(`setup: apt-get install ${missing.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  run('apt-get', ['update', '-qq'], { env });
  run('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing], { env });
}

export function build() {
  run('npx', ['tsc', '-p', 'tsconfig.json']);
  if (existsSync(join(root, 'admin-ui', 'vite.config.ts'))) {
    // vite only strips the types: the console's code is type-checked here.
    run('npx', ['tsc', '-p', join('admin-ui', 'tsconfig.json')]);
    run('npx', ['vite', 'build', '--logLevel', 'warn'], { cwd: join(root, 'admin-ui') });
  }
}
