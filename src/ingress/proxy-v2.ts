/**
 * PROXY protocol version 2 (the binary header of HAProxy's `send-proxy-v2`; the only version an
 * AWS Network Load Balancer sends), read from a peer a listener's `proxyProtocol` names. smtp-server
 * reads version 1 (the text line) only; protocol.ts hands a peer whose first bytes are the v2
 * signature to `readProxyV2` and every other peer to smtp-server's reader.
 *
 * The header (haproxy's doc/proxy-protocol.txt §2.2): the 12-byte signature, a version/command
 * byte (0x21 PROXY, 0x20 LOCAL), a family/transport byte, a 16-bit length, then the addresses
 * (TCP over IPv4: 12 bytes, over IPv6: 36) and optional TLVs, which are skipped. LOCAL (the
 * balancer's own health check) and an UNSPEC family keep the connection's real peer; a PROXY
 * command for UDP or a Unix socket, or a header longer than any real one, is refused.
 */
import ipaddr from 'ipaddr.js';

export const PROXY_V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
/** Fixed part: signature, version/command, family, length. */
const FIXED = 16;
/** Addresses plus TLVs (haproxy caps its own at a few hundred bytes; a TLS TLV can be larger). */
const MAX_BODY = 4096;

export type ProxyV2Parse =
  /** Not all of the header has arrived yet. */
  | { kind: 'more' }
  | { kind: 'invalid'; reason: string }
  /** `source` absent: LOCAL or UNSPEC, the connection's own peer stands. `length`: bytes taken. */
  | { kind: 'header'; length: number; source?: { address: string; port: number } };

/** Could these first bytes still be the v2 signature (all of them match its start)? */
export function mayBeProxyV2(head: Buffer): boolean {
  const n = Math.min(head.length, PROXY_V2_SIGNATURE.length);
  return head.subarray(0, n).equals(PROXY_V2_SIGNATURE.subarray(0, n));
}

/** Parses a v2 header at the start of `buf` (which starts with the signature). */
export function parseProxyV2(buf: Buffer): ProxyV2Parse {
  if (buf.length < FIXED) return { kind: 'more' };
  const verCmd = buf[12]!;
  if (verCmd >> 4 !== 2) return { kind: 'invalid', reason: `unknown PROXY protocol version ${verCmd >> 4}` };
  const command = verCmd & 0x0f;
  if (command !== 0 && command !== 1) return { kind: 'invalid', reason: `unknown PROXY v2 command ${command}` };
  const bodyLength = buf.readUInt16BE(14);
  if (bodyLength > MAX_BODY) return { kind: 'invalid', reason: `PROXY v2 header of ${bodyLength} bytes` };
  if (buf.length < FIXED + bodyLength) return { kind: 'more' };
  const length = FIXED + bodyLength;
  if (command === 0) return { kind: 'header', length }; // LOCAL
  const family = buf[13]! >> 4;
  const transport = buf[13]! & 0x0f;
  if (family === 0) return { kind: 'header', length }; // UNSPEC
  if (transport !== 1) return { kind: 'invalid', reason: 'PROXY v2 for a transport other than TCP' };
  const body = buf.subarray(FIXED, length);
  if (family === 1) {
    if (body.length < 12) return { kind: 'invalid', reason: 'PROXY v2 TCP over IPv4 header too short' };
    return { kind: 'header', length, source: { address: [...body.subarray(0, 4)].join('.'), port: body.readUInt16BE(8) } };
  }
  if (family === 2) {
    if (body.length < 36) return { kind: 'invalid', reason: 'PROXY v2 TCP over IPv6 header too short' };
    const ip = ipaddr.fromByteArray([...body.subarray(0, 16)]) as ipaddr.IPv6;
    // Canonical text (RFC 5952), as the socket would name it; an IPv4-mapped address as IPv4.
    const address = ip.isIPv4MappedAddress() ? ip.toIPv4Address().toString() : ip.toString();
    return { kind: 'header', length, source: { address, port: body.readUInt16BE(32) } };
  }
  return { kind: 'invalid', reason: 'PROXY v2 for a Unix socket or an unknown family' };
}
