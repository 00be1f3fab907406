/**
 * A certificate and key named by the config (smtp.tls, admin.tls), read and checked as a pair:
 * readable, PEM, the key fitting the certificate. Throws a ConfigError naming the key and files.
 */
import { readFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
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

/**
 * A file of trusted CA certificates (delivery.tls.caFile): every PEM certificate in it, checked
 * to parse. Throws a ConfigError naming the key and file.
 */
export function readCaFile(key: string, file: string): string[] {
  try {
    const pems = readFileSync(file, 'utf8').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
    if (pems.length === 0) throw new Error('no PEM certificate in it');
    for (const pem of pems) new X509Certificate(pem);
    return pems;
  } catch (err) {
    const problem = (err as Error).message;
    throw new ConfigError(`${key}: ${file}: ${problem}`, [{ file, key, problem }]);
  }
}
