// stream.js — Server-Sent Events read with fetch and a ReadableStream.
//
// EventSource cannot send the Authorization header, so the stream is read by
// hand: one fetch, the body decoded chunk by chunk and split into events. The
// connection comes back with exponential backoff and jitter when it drops,
// and is dropped when nothing (not even the 15 s ": ping") arrived for a while,
// which catches a dead node behind a load balancer.

import * as api from './api.js';

const BACKOFF_MIN_MS = 1000;
const BACKOFF_MAX_MS = 30000;
const STALL_MS = 45000; // three missed pings

/**
 * parser returns a function fed with decoded text; it calls
 * onEvent({type, data, id}) for each complete event. Comments are skipped.
 */
export function parser(onEvent) {
  let buf = '';
  let type = '';
  let data = [];
  let id = '';
  return (text) => {
    buf += text;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      let line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (line.endsWith('\r')) line = line.slice(0, -1);
      if (line === '') {
        if (data.length) onEvent({ type: type || 'message', data: data.join('\n'), id });
        type = '';
        data = [];
        continue;
      }
      if (line.startsWith(':')) continue;
      const c = line.indexOf(':');
      const fieldName = c < 0 ? line : line.slice(0, c);
      let value = c < 0 ? '' : line.slice(c + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (fieldName === 'event') type = value;
      else if (fieldName === 'data') data.push(value);
      else if (fieldName === 'id') id = value;
    }
  };
}

/**
 * open keeps an event stream at path open until close() is called.
 * handlers: onEvent(ev), onState(state, info) with state "connecting",
 * "open", "waiting" (info.retryInMs) or "closed"; onOpen(reconnected).
 * A 401 ends it for good (api.js already reported the ended session).
 */
export function open(path, handlers = {}) {
  const { onEvent = () => {}, onState = () => {}, onOpen = () => {} } = handlers;
  const life = new AbortController();
  let attempt = 0;
  let opened = false;

  const sleep = (ms) =>
    new Promise((res) => {
      const t = setTimeout(res, ms);
      life.signal.addEventListener('abort', () => {
        clearTimeout(t);
        res();
      }, { once: true });
    });

  async function once() {
    const conn = new AbortController();
    const stop = () => conn.abort();
    life.signal.addEventListener('abort', stop, { once: true });
    let stall = setTimeout(stop, STALL_MS);
    const alive = () => {
      clearTimeout(stall);
      stall = setTimeout(stop, STALL_MS);
    };
    try {
      onState('connecting');
      const res = await api.send('GET', path, { accept: 'text/event-stream', timeout: 0, signal: conn.signal, background: true });
      alive();
      onState('open');
      onOpen(opened);
      opened = true;
      attempt = 0;
      const feed = parser((ev) => {
        try {
          onEvent(ev);
        } catch (err) {
          console.error('stream handler', err); // one bad event must not drop the stream
        }
      });
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        alive();
        feed(decoder.decode(value, { stream: true }));
      }
      return 'ended';
    } catch (e) {
      if (e && e.status === 401) return 'unauthorized';
      return 'failed';
    } finally {
      clearTimeout(stall);
      life.signal.removeEventListener('abort', stop);
      conn.abort();
    }
  }

  (async () => {
    while (!life.signal.aborted) {
      const how = await once();
      if (life.signal.aborted) break;
      if (how === 'unauthorized') break;
      const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt);
      const wait = Math.round(base / 2 + (Math.random() * base) / 2);
      attempt++;
      onState('waiting', { retryInMs: wait });
      await sleep(wait);
    }
    onState('closed');
  })();

  return {
    close: () => life.abort(),
  };
}
