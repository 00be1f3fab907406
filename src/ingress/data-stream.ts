/**
 * Two methods of smtp-server's parser (SMTPStream, smtp-server 3.21), installed on each parser:
 *
 * - `feedDataStream`, its data mode, with the same semantics but finding "<LF>." with
 *   `Buffer.indexOf` (memchr) instead of a JavaScript loop over every byte of the message, which
 *   took about 3 % of the ingress's main thread;
 * - `continueAfterData`, which fixes its `continue()` for a client that sends a second whole
 *   message before the reply to the first (no wait for 354, against RFC 2920): smtp-server ran the
 *   parser on, through that second message, and only then cleared the continuation, losing the
 *   second message's. Both messages were queued and answered, but nothing after them (QUIT, a
 *   third message) was ever read: the session hung until its idle timeout.
 *
 * This is the code that decides where a message ends, so it is the SMTP-smuggling-critical path:
 * it must end DATA exactly where smtp-server would, for any bytes and any chunking.
 * `test/ingress/data-stream.test.ts` feeds random streams, cut into random chunks, to this and to
 * smtp-server's own parser and requires the same commands, message bytes and byte counts from
 * both (so an smtp-server upgrade that changes its parser fails that test, too).
 *
 * Differences from the original, none observable: the end and escape checks compare bytes in place
 * instead of through `Buffer.compare` of a subarray.
 */
import type { SMTPStream } from 'smtp-server/lib/smtp-stream.js';

type Callback = (err?: Error | null) => void;

const LF_DOT = Buffer.from('\n.', 'binary');
const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;

/**
 * The parser's `continue()`, called once a message is answered: goes on with the input after it.
 * The continuation is cleared before it runs, as the input it parses may end another message and
 * leave that message's continuation here.
 */
export function continueAfterData(this: SMTPStream): void {
  const next = this._continueCallback;
  if (typeof next === 'function') {
    this._continueCallback = false;
    next();
  } else {
    // The message is not over yet: _endDataMode goes on by itself once its stream ends.
    this._continueCallback = true;
  }
}

/** Installed on each parser as its `_feedDataStream` (see SpoolhouseConnection._createParser). */
export function feedDataStream(this: SMTPStream, input: Buffer, done: Callback): void {
  // Only called in data mode, which always has a stream.
  const dataStream = this._dataStream!;
  let chunk = input;
  if (this._lastBytes && this._lastBytes.length) {
    chunk = Buffer.concat([this._lastBytes, chunk], this._lastBytes.length + chunk.length);
    this._lastBytes = false;
  }
  let len = chunk.length;
  // ".<CR><LF>" as the very first line ends the data (an empty message). Only at the data's start:
  // once a payload byte (or an escape dot) was consumed, a leading dot is content.
  if (this._atDataStart && len >= 3 && chunk[0] === DOT && chunk[1] === CR && chunk[2] === LF) {
    this._endDataMode(false, chunk.subarray(3), done);
    return;
  }
  // An escape dot on the first line.
  if (this._atDataStart && len >= 2 && chunk[0] === DOT && chunk[1] === DOT) {
    chunk = chunk.subarray(1);
    len--;
    this._atDataStart = false;
  }
  // smtp-server looks at every dot i in [2, len - 3] that follows an LF: that is every "<LF>."
  // starting at j = i - 1 in [1, len - 4]. indexOf gives them in order; the first one past the
  // range means there are no more in it.
  for (let j = chunk.indexOf(LF_DOT, 1); j !== -1 && j <= len - 4; j = chunk.indexOf(LF_DOT, j + 1)) {
    const i = j + 1;
    // "<CR><LF>.<CR><LF>": the end of the data. Everything before the dot is content (the CRLF
    // ending the last line included).
    if (chunk[i - 2] === CR && chunk[i + 1] === CR && chunk[i + 2] === LF) {
      const buf = chunk.subarray(0, i);
      this._countDataBytes(buf.length);
      this._endDataMode(buf, chunk.subarray(i + 3), done);
      return;
    }
    // "<LF>..": an escape dot. Emit what comes before it and go on after it, on the next turn.
    if (chunk[i + 1] === DOT) {
      const buf = chunk.subarray(0, i);
      this._lastBytes = false;
      this._countDataBytes(buf.length);
      if (dataStream.writable) dataStream.write(buf);
      const rest = chunk.subarray(i + 1);
      setImmediate(() => this._feedDataStream(rest, done));
      return;
    }
  }
  // Keep the last 4 bytes: a terminator may straddle this chunk and the next.
  this._lastBytes = chunk.length < 4 ? chunk : chunk.subarray(chunk.length - 4);
  if (this._lastBytes.length >= chunk.length) {
    // Nothing to emit; go on with the input.
    done();
    return;
  }
  const buf = chunk.subarray(0, chunk.length - this._lastBytes.length);
  this._countDataBytes(buf.length);
  if (!dataStream.writable) {
    done();
    return;
  }
  // Write to the stream, and wait for it to drain when it asks to.
  if (dataStream.write(buf) || dataStream.destroyed) {
    done();
    return;
  }
  // A stream that the application destroys never drains, it only closes.
  const onDrain = (): void => {
    dataStream.removeListener('drain', onDrain);
    dataStream.removeListener('close', onDrain);
    done();
  };
  dataStream.once('drain', onDrain);
  dataStream.once('close', onDrain);
}
