/**
 * The live change feed (GET /api/events, Server-Sent Events), read with fetch and a stream
 * reader rather than EventSource, so the token travels in the Authorization header and never in
 * a URL (URLs end up in logs). One connection per tab, shared by every page; it reconnects with
 * backoff and reports whether it is live.
 */
import { apiUrl, getToken } from './api';

export interface QueueEvent {
  type: string;
  id?: string;
  state?: string;
  at?: number;
  [key: string]: unknown;
}

type Listener = (ev: QueueEvent) => void;
type StatusListener = (live: boolean) => void;

const listeners = new Set<Listener>();
const statusListeners = new Set<StatusListener>();
let controller: AbortController | null = null;
let live = false;

function setLive(value: boolean): void {
  if (live === value) return;
  live = value;
  for (const l of statusListeners) l(value);
}

export function onQueueEvent(listener: Listener): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export function onLiveStatus(listener: StatusListener): () => void {
  statusListeners.add(listener);
  listener(live);
  return () => statusListeners.delete(listener);
}

function dispatch(eventName: string, data: string): void {
  if (!data) return;
  let parsed: QueueEvent;
  try {
    const value = JSON.parse(data) as Partial<QueueEvent>;
    parsed = { ...value, type: value.type ?? eventName } as QueueEvent;
  } catch {
    return; // comments / keep-alives that are not JSON
  }
  for (const l of listeners) {
    try {
      l(parsed);
    } catch (err) {
      console.error('event listener failed', err);
    }
  }
}

/** Splits an SSE byte stream into events (the "event:" and "data:" fields; see the HTML spec). */
async function readStream(body: ReadableStream<Uint8Array>, signal: AbortSignal): Promise<void> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let eventName = 'message';
  let data: string[] = [];
  while (!signal.aborted) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let nl: number;
    while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + (buffer.startsWith('\r\n', nl) ? 2 : 1));
      if (line === '') {
        dispatch(eventName, data.join('\n'));
        eventName = 'message';
        data = [];
      } else if (line.startsWith('data:')) {
        data.push(line.slice(5).replace(/^ /, ''));
      } else if (line.startsWith('event:')) {
        eventName = line.slice(6).trim();
      }
    }
  }
}

async function connectLoop(signal: AbortSignal): Promise<void> {
  let backoff = 1000;
  while (!signal.aborted) {
    const token = getToken();
    if (!token) break;
    try {
      const res = await fetch(apiUrl('/api/events'), {
        headers: { Authorization: `Bearer ${token}`, Accept: 'text/event-stream' },
        signal,
        cache: 'no-store',
      });
      if (res.status === 401) break; // the next API call signs the operator out
      if (!res.ok || !res.body) throw new Error(`events: ${res.status}`);
      setLive(true);
      backoff = 1000;
      await readStream(res.body, signal);
    } catch (err) {
      if (signal.aborted) break;
      console.warn('live updates interrupted; reconnecting', err);
    }
    setLive(false);
    if (signal.aborted) break;
    await new Promise((r) => setTimeout(r, backoff));
    backoff = Math.min(backoff * 2, 30_000);
  }
  setLive(false);
}

export function startEvents(): void {
  if (controller) return;
  controller = new AbortController();
  void connectLoop(controller.signal);
}

export function stopEvents(): void {
  controller?.abort();
  controller = null;
  setLive(false);
}
