/**
 * A certificate and key named by the config (smtp.tls, admin.tls), read and checked as a pair:
 * readable, PEM, the key fitting the certificate. Throws a ConfigError naming the key and files.
 */
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import { ConfigError } from './load.js';

export function readTlsPair(key: string, files: { key: string; cert: string }): { key: Buffer; cert: Buffer } {
  try {
    const pair = { key: readFileSync(files.key), cert: readFileSync(files.cert) };
    createSecureContext(pair);
    return pair;
  } catch (err) {
    const problem = (err as Error).message;
    throw new ConfigError(`${key}: ${problem}`, [{ file: `${files.cert}, ${files.key}`, key, problem }]);
  }
}
