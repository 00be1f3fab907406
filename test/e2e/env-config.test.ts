/**
 * Config keys from the environment in the built server (a container's way to pass a node id or a
 * secret without writing a file): SPOOLHOUSE_ADMIN__TOKEN guards the admin API instead of the
 * file's token, SPOOLHOUSE_SMTP__BANNER changes the greeting; a misspelt key stops the start with
 * the variable named.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SmtpClient } from '../helpers/smtp-client.js';
import { mainScript, startServer, type ServerProcess } from '../helpers/server-process.js';

const FILE_TOKEN = 'token-in-the-config-file-0123456789';
const ENV_TOKEN = 'token-from-the-environment-0123456789';
let dir: string;
let file: string;
let server: ServerProcess;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'spoolhouse-env-'));
  file = join(dir, 'config.json');
  writeFileSync(file, JSON.stringify({
    smtp: { listen: ['127.0.0.1:0'], earlyTalkerDelay: '0ms' },
    spool: { dir: join(dir, 'spool') },
    admin: { listen: '127.0.0.1:0', token: FILE_TOKEN },
    log: { level: 'info', pretty: false },
  }));
  server = await startServer({ config: file, env: { SPOOLHOUSE_ADMIN__TOKEN: ENV_TOKEN, SPOOLHOUSE_SMTP__BANNER: 'Configured by the environment' } });
});
afterAll(async () => {
  await server?.term();
  rmSync(dir, { recursive: true, force: true });
});

describe('config keys from the environment', () => {
  it('apply over the config file in the running server', async () => {
    const status = async (token: string) => (await fetch(`${server.adminUrl}/api/stats`, { headers: { authorization: `Bearer ${token}` } })).status;
    expect(await status(ENV_TOKEN)).toBe(200);
    expect(await status(FILE_TOKEN)).toBe(401);
    const c = await SmtpClient.connect({ port: server.smtp[0]!.port });
    try {
      expect((await c.read()).text).toContain('Configured by the environment');
    } finally {
      await c.quit();
    }
  });

  it('a misspelt key stops the start, naming the variable', () => {
    const r = spawnSync(process.execPath, [mainScript, '--config', file], {
      env: { ...process.env, SPOOLHOUSE_ADMIN__TOKN: ENV_TOKEN }, encoding: 'utf8', timeout: 30_000,
    });
    expect(r.status).toBe(78);
    expect(r.stderr).toContain('environment variable SPOOLHOUSE_ADMIN__TOKN: no configuration key admin.tokn');
  });
});
