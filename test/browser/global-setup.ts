/**
 * One headless Chromium (Debian's package, driven by playwright-core; nothing is downloaded) for
 * the whole run, shared by the browser test files through its websocket endpoint (bound to
 * 127.0.0.1). CHROME_PATH overrides the executable. It also builds admin-ui/dist/ first, so the
 * tests always drive the console as it is in the tree.
 *
 * Kept cheap: when vitest was given file filters that select no browser test (e.g.
 * `npx vitest run test/unit`), no browser is started (about 370 MiB saved); `browserWs` is then
 * empty and a browser test would say so.
 */
import { readdirSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type BrowserServer } from 'playwright-core';
import { build } from 'vite';
import type { TestProject } from 'vitest/node';

let server: BrowserServer | undefined;

const here = fileURLToPath(new URL('.', import.meta.url));

function browserTestsSelected(project: TestProject): boolean {
  // filenamePattern holds the CLI filters (substring matches on file paths); undefined = all files.
  const filters = (project.vitest as unknown as { filenamePattern?: string[] }).filenamePattern;
  if (!filters?.length) return true;
  const root = project.vitest.config.root;
  const files = readdirSync(here).filter((f) => f.endsWith('.test.ts')).map((f) => join(here, f));
  return files.some((file) => filters.some((f) => file.includes(f) || relative(root, file).includes(f.replace(/^\.\//, ''))));
}

export async function setup(project: TestProject): Promise<void> {
  if (!browserTestsSelected(project)) {
    project.provide('browserWs', '');
    return;
  }
  // The admin server serves admin-ui/dist/: build it from the current sources (about 0.3 s).
  await build({ configFile: join(here, '..', '..', 'admin-ui', 'vite.config.ts'), logLevel: 'warn' });
  server = await chromium.launchServer({ executablePath: process.env.CHROME_PATH ?? '/usr/bin/chromium' });
  project.provide('browserWs', server.wsEndpoint());
}

export async function teardown(): Promise<void> {
  await server?.close();
}

declare module 'vitest' {
  export interface ProvidedContext {
    browserWs: string;
  }
}
