// api.js — a small client for the sessiond HTTP API (docs/API.md).
//
// Every call uses a relative URL, adds the bearer token of this tab, turns
// {"error":{"code","message"}} into an ApiError, and records the X-Served-By
// header of every response so the cluster screen can show which node answered.
//
// It also keeps this tab's bookmark (docs/API.md, "Consistency"): every /v1/
// response carries X-Sessiond-Bookmark, an opaque token of what it showed or
// wrote; every request sends back the latest one, so whichever node answers
// shows this tab its own writes and never anything older than it saw. A node
// that cannot catch up in time answers 503 "behind" with Retry-After: the call
// is tried again after it, twice at most.

import * as credentials from './credentials.js';

/** ApiError is a failed call: an API error, an unexpected reply, or no reply at all. */
export class ApiError extends Error {
  constructor(status, code, message, retryAfter = 0) {
    super(message || code);
    this.name = 'ApiError';
    this.status = status; // 0 when the server could not be reached
    this.code = code; // e.g. invalid_argument, unauthorized, network
    this.retryAfter = retryAfter; // seconds, from Retry-After on 429 and 503
  }
}

const LOG_KEY = 'sessiond.servedBy';
const LOG_MAX = 100;
const DEFAULT_TIMEOUT_MS = 15000;

const BOOKMARK_KEY = 'sessiond.bookmark';
const BOOKMARK_HEADER = 'X-Sessiond-Bookmark';
// The server refuses bookmark text over 1024 bytes; joins stop well short of it.
const BOOKMARK_JOIN_MAX = 900;
// What a bookmark's text may hold: URL-safe base64, joined by commas. Anything
// else is not kept: it could not even be sent as a header.
const BOOKMARK_TEXT = /^[A-Za-z0-9_-]+(,[A-Za-z0-9_-]+)*$/;
const BEHIND_RETRIES = 2;
const BEHIND_WAIT_MAX_S = 5;

let servedLog = loadLog();
let bookmark = loadBookmark();
const servedListeners = new Set();
let unauthorized = () => {};

function loadLog() {
  try {
    const l = JSON.parse(sessionStorage.getItem(LOG_KEY) || '[]');
    return Array.isArray(l) ? l : [];
  } catch {
    return [];
  }
}

function record(entry) {
  servedLog.push(entry);
  if (servedLog.length > LOG_MAX) servedLog = servedLog.slice(-LOG_MAX);
  try {
    sessionStorage.setItem(LOG_KEY, JSON.stringify(servedLog));
  } catch {
    // storage full or disabled: the in-memory log still works
  }
  for (const fn of servedListeners) fn(entry);
}

/** servedBy returns the recent requests, oldest first: {at, method, path, status, node, background}. */
export function servedBy() {
  return servedLog.slice();
}

/** onServed calls fn after every response; it returns a function that stops it. */
export function onServed(fn) {
  servedListeners.add(fn);
  return () => servedListeners.delete(fn);
}

/** clearServedBy forgets the request log. */
export function clearServedBy() {
  servedLog = [];
  sessionStorage.removeItem(LOG_KEY);
}

function loadBookmark() {
  try {
    const b = sessionStorage.getItem(BOOKMARK_KEY) || '';
    return b.length <= BOOKMARK_JOIN_MAX && BOOKMARK_TEXT.test(b) ? b : '';
  } catch {
    return '';
  }
}

function storeBookmark(b) {
  bookmark = b;
  try {
    if (b) sessionStorage.setItem(BOOKMARK_KEY, b);
    else sessionStorage.removeItem(BOOKMARK_KEY);
  } catch {
    // storage full or disabled: the in-memory bookmark still works for this page
  }
}

/**
 * keepBookmark folds got, the bookmark of a response, into the one this tab
 * keeps; sent is the one its request carried. The server merges what a request
 * carried into its answer, so when the request carried the latest, the answer
 * replaces it. Otherwise other requests moved it on meanwhile (they overlap: the
 * stream, background checks, a screen's loads), and the two are joined with a
 * comma, which the server reads as their combination. A join that grows too long
 * keeps only got, the newest: at worst a read waits for nothing it needed.
 */
function keepBookmark(sent, got) {
  if (!got || got.length > BOOKMARK_JOIN_MAX || !BOOKMARK_TEXT.test(got)) return;
  if (sent === bookmark || !bookmark) {
    if (got !== bookmark) storeBookmark(got);
    return;
  }
  if (bookmark.split(',').includes(got)) return;
  const joined = bookmark + ',' + got;
  storeBookmark(joined.length <= BOOKMARK_JOIN_MAX ? joined : got);
}

/** currentBookmark returns the bookmark this tab sends with its requests ("" for none). */
export function currentBookmark() {
  return bookmark;
}

/**
 * badBookmark reports whether err refused the bookmark a request carried: 400
 * invalid_argument from before any handler ran, so without a bookmark of its own
 * (or naming the header). Only a stored value that was tampered with or came from
 * another deployment gets that; the tab drops it.
 */
function badBookmark(err, got) {
  return err.status === 400 && err.code === 'invalid_argument' && (!got || err.message.includes(BOOKMARK_HEADER));
}

/** pause waits ms, or rejects with signal's reason when it is aborted first. */
function pause(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) {
      reject(signal.reason);
      return;
    }
    const abort = () => {
      clearTimeout(t);
      reject(signal.reason);
    };
    const t = setTimeout(() => {
      if (signal) signal.removeEventListener('abort', abort);
      resolve();
    }, ms);
    if (signal) signal.addEventListener('abort', abort, { once: true });
  });
}

/**
 * onUnauthorized sets the one handler called when an authenticated call is
 * answered 401: the session was revoked or expired.
 */
export function onUnauthorized(fn) {
  unauthorized = fn;
}

function timeoutSignal(ms, signal) {
  const t = AbortSignal.timeout ? AbortSignal.timeout(ms) : undefined;
  if (!signal) return t;
  if (!t) return signal;
  return AbortSignal.any ? AbortSignal.any([signal, t]) : signal;
}

/**
 * send performs one call and returns the Response once its headers arrived.
 * Options: body (JSON-encoded), auth (default true), background (log flag),
 * signal, timeout in ms (0 = none, for streams), accept.
 *
 * It sends this tab's bookmark and keeps the one of every response, errors
 * included. A 503 "behind" is tried again after its Retry-After (twice at most),
 * and a refused bookmark is dropped and the call made once more without it:
 * both are refused before any handler runs, so even a POST is safe to repeat.
 */
export async function send(method, path, opts = {}) {
  const { auth = true, signal } = opts;
  const used = auth ? credentials.token() : '';
  if (auth && !used) throw new ApiError(401, 'unauthorized', 'not signed in');
  const body = opts.body === undefined ? undefined : JSON.stringify(opts.body);
  let behind = 0;
  let dropped = false;
  for (;;) {
    const sent = bookmark;
    const res = await attempt(method, path, opts, used, body, sent);
    const got = res.headers.get(BOOKMARK_HEADER) || '';
    keepBookmark(sent, got);
    if (res.ok) return res;

    const err = await errorFrom(res);
    if (sent && !dropped && badBookmark(err, got)) {
      dropped = true;
      if (bookmark === sent) storeBookmark('');
      continue;
    }
    if (err.code === 'behind' && behind < BEHIND_RETRIES) {
      behind++;
      await pause(Math.min(Math.max(err.retryAfter, 1), BEHIND_WAIT_MAX_S) * 1000, signal);
      continue;
    }
    // Only the token this call used can have ended; a newer sign-in is unaffected. An
    // account that lost its name to a concurrent registration (409 username_conflict)
    // cannot go on either: its message says what happened.
    const ended = res.status === 401 || err.code === 'username_conflict';
    if (auth && ended && used === credentials.token()) unauthorized(err);
    throw err;
  }
}

/** attempt makes one request of send and logs who answered it. */
async function attempt(method, path, opts, token, body, sentBookmark) {
  const { background = false, signal, timeout = DEFAULT_TIMEOUT_MS } = opts;
  const headers = { Accept: opts.accept || 'application/json' };
  if (token) headers.Authorization = 'Bearer ' + token;
  if (sentBookmark) headers[BOOKMARK_HEADER] = sentBookmark;
  const init = { method, headers, cache: 'no-store', credentials: 'omit' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = body;
  }
  init.signal = timeout ? timeoutSignal(timeout, signal) : signal;

  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    if (signal && signal.aborted) throw e; // the caller cancelled: not an error to show
    const timedOut = e && (e.name === 'TimeoutError' || e.name === 'AbortError');
    throw new ApiError(0, timedOut ? 'timeout' : 'network', timedOut ? 'the server took too long to answer' : 'no reply from the server');
  }
  record({
    at: new Date().toISOString(),
    method,
    path: path.split('?')[0],
    status: res.status,
    node: res.headers.get('X-Served-By') || '',
    background,
  });
  return res;
}

async function errorFrom(res) {
  let code = 'http_' + res.status;
  let message = res.statusText || 'HTTP ' + res.status;
  try {
    const j = await res.json();
    if (j && j.error) {
      code = j.error.code || code;
      message = j.error.message || message;
    }
  } catch {
    // not JSON, e.g. a load balancer's error page
  }
  const ra = Number.parseInt(res.headers.get('Retry-After') || '', 10);
  return new ApiError(res.status, code, message, Number.isFinite(ra) ? ra : 0);
}

/** request performs one JSON call and returns the decoded body (null for 204). */
export async function request(method, path, opts) {
  const res = await send(method, path, opts);
  if (res.status === 204) return null;
  const text = await res.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    throw new ApiError(res.status, 'bad_response', 'the server sent a reply that is not JSON');
  }
}

export const get = (path, opts) => request('GET', path, opts);
export const post = (path, body, opts) => request('POST', path, { ...opts, body });
export const patch = (path, body, opts) => request('PATCH', path, { ...opts, body });
export const del = (path, opts) => request('DELETE', path, opts);

/** query builds "path?k=v&…" from the defined, non-empty values of params. */
export function query(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? path + '?' + s : path;
}
