/** Kinds of replies, from what big providers and common MTAs really answer. */
import { describe, expect, it } from 'vitest';
import { replyKind } from '../../src/scheduler/reply-kind.js';

const r = (code: number, enhanced: string | undefined, message: string) => ({ code, ...(enhanced ? { enhanced } : {}), message });

describe('replyKind', () => {
  it.each([
    // Gmail
    [r(550, '5.1.1', "The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos"), 'invalid-recipient'],
    [r(452, '4.2.2', 'The email account that you tried to reach is over quota. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaTemp'), 'mailbox-full'],
    [r(421, '4.7.28', 'Gmail has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited.'), 'rate-limited'],
    [r(550, '5.7.26', "Unauthenticated email from example.com is not accepted due to domain's DMARC policy. Please contact the administrator of example.com domain if this was a legitimate mail."), 'authentication'],
    [r(550, '5.7.1', 'Our system has detected that this message is likely unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been blocked.'), 'spam-block'],
    [r(552, '5.2.3', 'Your message exceeded Google\'s message size limits.'), 'message-too-big'],
    // Yahoo
    [r(421, '4.7.0', '[TSS04] Messages from 192.0.2.7 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes'), 'rate-limited'],
    [r(554, '5.7.9', 'Message not accepted for policy reasons. See https://postmaster.yahooinc.com/error-codes'), 'policy'],
    // Outlook / Microsoft 365
    [r(451, '4.7.500', 'Server busy. Please try again later from [192.0.2.7]. (S77714)'), 'rate-limited'],
    [r(550, '5.7.1', "Unfortunately, messages from [192.0.2.7] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150)."), 'spam-block'],
    [r(550, '5.5.0', 'Requested action not taken: mailbox unavailable'), 'invalid-recipient'],
    [r(550, '5.4.1', 'Recipient address rejected: Access denied. AS(201806281)'), 'invalid-recipient'],
    // Postfix and friends
    [r(450, '4.2.0', '<a@b.example>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/b.example.html'), 'greylisted'],
    [r(554, '5.7.1', 'Service unavailable; Client host [192.0.2.7] blocked using zen.spamhaus.org'), 'spam-block'],
    [r(554, '5.7.1', '<x@y.example>: Relay access denied'), 'policy'],
    [r(550, '5.7.1', 'Message rejected: virus found (Eicar-Test-Signature)'), 'content'],
    [r(552, undefined, 'Message size exceeds fixed limit'), 'message-too-big'],
    [r(550, undefined, 'mailbox disabled, not accepting messages'), 'mailbox-disabled'],
    // Spoolhouse's own replies
    [r(421, '4.4.1', 'connect to mx.example[192.0.2.7]:25: Connection refused'), 'connection'],
    [r(421, '4.4.2', 'conversation with mx.example[192.0.2.7]:25 timed out while sending end of data'), 'connection'],
    [r(421, '4.7.5', 'TLS with mx.example[192.0.2.7]:25 failed: certificate has expired'), 'tls'],
    [r(451, '4.4.3', 'Host or domain name not found. Name service error for name=example.com type=MX: SERVFAIL, try again'), 'dns'],
    [r(550, '5.1.2', 'Host or domain name not found. Name service error for name=nowhere.example type=MX: Host not found'), 'invalid-domain'],
    [r(556, '5.1.10', 'Recipient address has null MX'), 'invalid-domain'],
    [r(550, '5.4.4', 'Host or domain name not found. Name service error for name=x.example: no MX, A or AAAA record'), 'invalid-domain'],
    [r(451, '4.3.2', 'delivery to example.com is paused by the operator'), 'operator'],
    [r(550, '5.0.0', 'Delivery cancelled by the operator: sent by mistake'), 'operator'],
    [r(550, '4.4.7', 'Message expired after 5 days in the queue: the last reply was 421 4.7.0 [TSS04] too many'), 'expired'],
    // A dead destination's mail: the kind of the reply that suspended it.
    [r(421, '4.4.1', 'delivery temporarily suspended: connect to mx.example[192.0.2.7]:25: Connection refused'), 'connection'],
    [r(421, '4.7.0', 'delivery temporarily suspended: [TSS04] Messages from 192.0.2.7 temporarily deferred'), 'rate-limited'],
    [r(451, undefined, 'Temporary local problem - please try later'), 'other'],
  ])('%j is %s', (reply, kind) => {
    expect(replyKind(reply)).toBe(kind);
  });
});
