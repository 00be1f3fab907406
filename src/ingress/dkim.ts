/**
 * DKIM signing of outgoing mail at the door (smtp.dkim; what Postfix sites add OpenDKIM for):
 * mail from relay.networks or an authenticated client whose From: address is in a domain with a
 * key gets a DKIM-Signature (RFC 6376) before it is stored, so every copy delivered, retried or
 * inspected is the signed one. Mail from anyone else (inbound mail for relay.domains) is never
 * signed, whatever its From: says: signing it would vouch for a forgery.
 *
 * The key: the From: domain itself, else its nearest parent with a key (mail from
 * news.example.org is signed d=example.org, which DMARC's relaxed alignment accepts). Signing is
 * nodemailer's DKIM signer (rsa-sha256, relaxed/relaxed, its RFC 6376 list of header fields);
 * RSA keys only, as that signer has no Ed25519. Keys are read at start (a broken one stops the
 * start) and at every configuration change (a broken one keeps the keys that were running).
 */
import { createPrivateKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import DKIM from 'nodemailer/lib/dkim';
import addressparser from 'nodemailer/lib/addressparser';
import { recipientDomain } from './policy.js';

export interface DkimKeyConfig {
  domain: string;
  selector: string;
  privateKey: string;
}

interface LoadedKey {
  domain: string;
  selector: string;
  key: KeyObject;
}

export class DkimSigner {
  private constructor(private readonly keys: ReadonlyMap<string, LoadedKey>) {}

  /** Reads each key file; throws naming the domain and file of the first that is unusable. */
  static load(configs: DkimKeyConfig[]): DkimSigner {
    const keys = new Map<string, LoadedKey>();
    for (const c of configs) {
      let key: KeyObject;
      try {
        key = createPrivateKey(readFileSync(c.privateKey));
      } catch (err) {
        throw new Error(`${c.domain}: ${c.privateKey}: ${(err as Error).message}`);
      }
      if (key.asymmetricKeyType !== 'rsa') throw new Error(`${c.domain}: ${c.privateKey}: an RSA private key is needed, not ${key.asymmetricKeyType ?? 'this key'}`);
      keys.set(c.domain, { domain: c.domain, selector: c.selector, key });
    }
    return new DkimSigner(keys);
  }

  get size(): number {
    return this.keys.size;
  }

  /** The key for mail from this header From: value: its domain's, else its nearest parent's. */
  keyFor(fromHeader: string | undefined): LoadedKey | undefined {
    if (!fromHeader || !this.keys.size) return undefined;
    const first = addressparser(fromHeader, { flatten: true })[0];
    let domain = first?.address ? recipientDomain(first.address) : '';
    while (domain) {
      const key = this.keys.get(domain);
      if (key) return key;
      const dot = domain.indexOf('.');
      domain = dot < 0 ? '' : domain.slice(dot + 1);
    }
    return undefined;
  }

  /** The message with a DKIM-Signature on top, signed with `key`. */
  async sign(message: Buffer, key: LoadedKey): Promise<Buffer> {
    const signer = new DKIM({ domainName: key.domain, keySelector: key.selector, privateKey: key.key });
    const chunks: Buffer[] = [];
    for await (const chunk of signer.sign(message)) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  }
}
