/**
 * What the delivery stage takes and gives back. Delivery knows nothing of the queue: the
 * scheduler hands it messages for one destination and gets per-recipient outcomes.
 */

/** An SMTP reply (structurally the same as the queue's SmtpReply). */
export interface Reply {
  code: number;
  /** RFC 3463 enhanced status code, e.g. "4.4.1". */
  enhanced?: string;
  message: string;
}

/** One address to try: `host` is the name (for TLS SNI, logs, `key`), `address` the IP to connect to (looked up at delivery when absent). */
export interface DestinationHost {
  host: string;
  port: number;
  preference?: number;
  address?: string;
}

/** Where mail for a domain goes. `key` groups domains that share their MX hosts (one connection pool). */
export type Destination =
  | {
      kind: 'hosts';
      /** The domain asked for (first one, when several share the destination). */
      domain: string;
      /** "mx1.example.org,mx2.example.org" or "smarthost:587": what limits and pools are keyed by. */
      key: string;
      /** Hosts in the order to try them (RFC 5321 §5.1: by preference, random among equals). */
      hosts: DestinationHost[];
      via: 'mx' | 'implicit-mx' | 'route' | 'smarthost';
      /** delivery.tls.policy of the domain (not for a smarthost, whose own `tls` rules), or "verify" under an MTA-STS policy. */
      tlsPolicy?: 'none' | 'may' | 'encrypt' | 'verify';
      /** The hosts are those the domain's MTA-STS policy (enforce) allows. */
      mtaSts?: boolean;
    }
  /** Nothing can be delivered now; e.g. DNS SERVFAIL (4.4.3) or a null MX (5.1.10). */
  | { kind: 'failure'; domain: string; key: string; permanent: boolean; reply: Reply };

export interface OutboundMessage {
  /** Queue id, for logs and Received/DSN correlation. */
  id: string;
  /** Reverse path; '' is the null sender. */
  sender: string;
  /** NOTIFY and ORCPT as received (ORCPT "addr-type;xtext"); passed on when the remote offers DSN. */
  recipients: { address: string; notify?: string[]; orcpt?: string }[];
  size: number;
  smtputf8: boolean;
  bodyType: '7BIT' | '8BITMIME';
  /** RET and ENVID (ENVID as received, xtext) for the MAIL FROM of a remote that offers DSN. */
  dsn?: { ret?: 'FULL' | 'HDRS'; envid?: string };
  /** The stored bytes, as they are to be sent. */
  openBody(): Promise<NodeJS.ReadableStream | Buffer>;
  /** Asked just before the final "." of DATA: false aborts the transaction (the connection is dropped before ".", so the remote cannot complete it); the message is then `aborted`. */
  stillWanted(): Promise<boolean>;
}

export interface RecipientResult {
  address: string;
  outcome: 'delivered' | 'deferred' | 'failed';
  reply: Reply;
  /** The host that gave the reply, "mx.example.org[192.0.2.1]:25". */
  remoteHost?: string;
  /**
   * Whether that host offered DSN (so NOTIFY/ORCPT went on with the mail). A delivered recipient
   * with NOTIFY=SUCCESS and `remoteDsn: false` is owed a "relayed" DSN (RFC 3461 §6.2.3).
   */
  remoteDsn?: boolean;
}

export interface HostAttempt {
  at: number;
  host: string;
  durationMs: number;
  /** The reply (or made-up reply for a network error) that ended the try on this host. */
  reply?: Reply;
}

export interface MessageResult {
  id: string;
  /** stillWanted() said no: nothing was delivered by this attempt, recipients untouched. */
  aborted: boolean;
  recipients: RecipientResult[];
  /** Each host tried for this message, in order. */
  hosts: HostAttempt[];
  /**
   * Deferred because no host of the destination could be reached in this call: no SMTP session
   * was opened with any of them (connection refused or timed out, greeting refused, EHLO, TLS or
   * AUTH failed, no address). The scheduler then suspends the destination (Postfix's dead
   * destination).
   */
  unreachable?: boolean;
}

/** How the scheduler keeps a connection busy and learns outcomes early (both optional). */
export interface DeliverOptions {
  /**
   * Asked when every message given so far is done and the connection is still good: more
   * messages for the same destination to send over it. May wait a little for mail to arrive
   * (connection reuse, Postfix's connection cache); [] ends the connection with QUIT.
   */
  more?: () => Promise<OutboundMessage[]>;
  /** Called exactly once per message (given or pulled), as soon as its outcome is known. */
  onResult?: (result: MessageResult) => void;
  /**
   * Concurrency feedback (Postfix's): `'ok'` for each transaction a host carried to its end
   * (the site works, whatever it said of the recipients), `'failed'` for each connection that
   * could not be used or ended with a host-level reply (connection refused or timed out, a 4xx
   * or 5xx greeting, EHLO, TLS or AUTH trouble, 4xx to MAIL FROM, a dropped session, a `421`).
   */
  onFeedback?: (kind: 'ok' | 'failed') => void;
}

/**
 * The delivery stage as the scheduler sees it (implemented in src/delivery/deliverer.ts).
 * Configuration is read through a getter on every call, so hot reloads apply.
 */
export interface DeliveryAgent {
  /** Where mail for `domain` goes: smarthost, a route, MX hosts, or a failure (null MX, DNS error). */
  resolve(domain: string): Promise<Destination>;
  /**
   * Delivers messages that all go to `destination`, over one connection where the remote allows
   * (the caller keeps each call within messagesPerConnection). Tries the hosts in order: on a
   * connection failure or a 4xx greeting/EHLO/MAIL the next host is tried (RFC 5321 §5.1).
   * Never throws for remote or network trouble: every recipient gets an outcome. Resolves with
   * the results of every message, those pulled through `options.more` included.
   */
  deliver(destination: Extract<Destination, { kind: 'hosts' }>, messages: OutboundMessage[], options?: DeliverOptions): Promise<MessageResult[]>;
  close(): Promise<void>;
}
