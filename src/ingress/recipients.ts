/**
 * The relay recipient table (relay.recipients, Postfix's relay_recipient_maps): which addresses
 * of relay.domains exist. Without it, mail for any local part of those domains is accepted and,
 * when the final destination refuses an unknown user, bounced to a sender who is usually forged
 * (backscatter). With it, an unlisted recipient is refused at RCPT with `550 5.1.1`, so the
 * client that tried keeps the problem.
 *
 * The file: one entry per line, `user@domain` (that address) or `@domain` (every address of the
 * domain); anything after the first blank on a line is ignored, so a Postfix relay_recipients
 * source file ("user@domain  OK") can be used as it is. Blank lines and lines starting with "#"
 * are ignored. Lookups ignore case, and a domain is compared in its ASCII (A-label) form, as
 * relay.domains are. With relay.recipientDelimiter (Postfix's recipient_delimiter), an address
 * with an extension, "user+tag@domain", is also found as "user@domain". Read at start (a broken file stops the start) and again at every
 * configuration change (SIGHUP or an API update; a broken file then keeps the previous table).
 */
import { readFileSync } from 'node:fs';
import { recipientDomain } from './policy.js';

/** A domain name as relay.domains accepts one (lower-cased, no trailing dot). */
const DOMAIN = /^(?=.{1,253}$)(?!-)[a-z0-9-]+(\.[a-z0-9-]+)*$/;

export class RecipientTable {
  private constructor(
    /** Lower-cased `local@ascii-domain` entries. */
    private readonly addresses: ReadonlySet<string>,
    /** Domains listed as `@domain`. */
    private readonly domains: ReadonlySet<string>,
    readonly file: string,
  ) {}

  /** Reads and parses the file. Throws with the file and line on a malformed line. */
  static load(file: string): RecipientTable {
    return RecipientTable.parse(readFileSync(file, 'utf8'), file);
  }

  static parse(text: string, file = 'recipients'): RecipientTable {
    const addresses = new Set<string>();
    const domains = new Set<string>();
    text.split(/\r?\n/).forEach((raw, i) => {
      const line = raw.trim();
      if (!line || line.startsWith('#')) return;
      const entry = line.split(/\s/, 1)[0]!;
      const at = entry.lastIndexOf('@');
      const domain = at >= 0 ? recipientDomain(entry) : '';
      if (at < 0 || !DOMAIN.test(domain)) throw new Error(`${file}:${i + 1}: expected "user@domain" or "@domain", not "${entry}"`);
      if (at === 0) domains.add(domain);
      else addresses.add(key(entry.slice(0, at), domain));
    });
    return new RecipientTable(addresses, domains, file);
  }

  get size(): number {
    return this.addresses.size + this.domains.size;
  }

  /** The domains the entries name (to warn about entries outside relay.domains). */
  entryDomains(): Set<string> {
    const out = new Set(this.domains);
    for (const a of this.addresses) out.add(a.slice(a.lastIndexOf('@') + 1));
    return out;
  }

  /**
   * Is this recipient listed, by its address, by its address without the extension (the local
   * part up to the first of the `delimiters` characters, when it is not the first), or by its
   * whole domain?
   */
  has(address: string, delimiters?: string | null): boolean {
    const domain = recipientDomain(address);
    if (this.domains.has(domain)) return true;
    const at = address.lastIndexOf('@');
    if (at <= 0) return false;
    const local = address.slice(0, at);
    if (this.addresses.has(key(local, domain))) return true;
    if (!delimiters) return false;
    let cut = -1;
    for (const d of delimiters) {
      const i = local.indexOf(d);
      if (i > 0 && (cut < 0 || i < cut)) cut = i;
    }
    return cut > 0 && this.addresses.has(key(local.slice(0, cut), domain));
  }
}

function key(local: string, domain: string): string {
  return `${local.toLowerCase()}@${domain}`;
}
