/**
 * Where the admin API is and which token to use: flags first, then the environment
 * (SPOOLHOUSE_URL, SPOOLHOUSE_TOKEN), then the server's configuration file (--config,
 * SPOOLHOUSE_CONFIG, or config/local.json over config/default.json): admin.listen for the URL
 * (https when admin.tls is set; a certificate of a private CA needs NODE_EXTRA_CA_CERTS);
 * admin.token, else the first operator token of admin.tokens, else the generated
 * <spool.dir>/admin.token. The config is read only when a flag or variable is missing.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigError, loadConfig } from '../config/load.js';
import { parseHostPort, type Config } from '../config/schema.js';
import { chooseOverlay } from '../config/store.js';
import { CliError, EXIT } from './client.js';

export interface ConnectionFlags {
  url?: string;
  token?: string;
  config?: string;
}

export function urlFromListen(listen: string, https = false): string {
  const hp = parseHostPort(listen);
  if (!hp) throw new CliError(`admin.listen "${listen}" is not host:port`, EXIT.error);
  // A wildcard bind is reached over loopback.
  const host = hp.host === '0.0.0.0' ? '127.0.0.1' : hp.host === '::' ? '::1' : hp.host;
  return `${https ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${hp.port}`;
}

export function tokenFromConfig(config: Config): string {
  if (config.admin.token) return config.admin.token;
  const operator = config.admin.tokens.find((t) => t.role === 'operator') ?? config.admin.tokens[0];
  if (operator) return operator.token;
  const file = join(config.spool.dir, 'admin.token');
  try {
    return readFileSync(file, 'utf8').trim();
  } catch (err) {
    throw new CliError(`no token: none given (--token, SPOOLHOUSE_TOKEN), none configured, and ${file} cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, EXIT.auth);
  }
}

function readConfig(flags: ConnectionFlags, env: NodeJS.ProcessEnv): Config {
  try {
    // The server's own config (its environment's keys too), for the admin address and token.
    return loadConfig(chooseOverlay(flags.config ?? (env.SPOOLHOUSE_CONFIG || undefined)), undefined, env).config;
  } catch (err) {
    if (err instanceof ConfigError) throw new CliError(err.message, EXIT.error);
    throw err;
  }
}

export function resolveConnection(flags: ConnectionFlags, env: NodeJS.ProcessEnv = process.env): { url: string; token: string } {
  let config: Config | undefined;
  const cfg = () => (config ??= readConfig(flags, env));
  const url = flags.url ?? (env.SPOOLHOUSE_URL || undefined) ?? urlFromListen(cfg().admin.listen, cfg().admin.tls !== null);
  const token = flags.token ?? (env.SPOOLHOUSE_TOKEN || undefined) ?? tokenFromConfig(cfg());
  return { url: url.endsWith('/') ? url : url + '/', token };
}
