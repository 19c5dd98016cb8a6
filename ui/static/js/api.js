// api.js — a small client for the sessiond HTTP API (docs/API.md).
//
// Every call uses a relative URL, adds the bearer token of this tab, turns
// {"error":{"code","message"}} into an ApiError, and records the X-Served-By
// header of every response so the cluster screen can show which node answered.

import * as credentials from './credentials.js';

/** ApiError is a failed call: an API error, an unexpected reply, or no reply at all. */
export class ApiError extends Error {
  constructor(status, code, message, retryAfter = 0) {
    super(message || code);
    this.name = 'ApiError';
    this.status = status; // 0 when the server could not be reached
    this.code = code; // e.g. invalid_argument, unauthorized, network
    this.retryAfter = retryAfter; // seconds, from Retry-After on 429
  }
}

const LOG_KEY = 'sessiond.servedBy';
const LOG_MAX = 100;
const DEFAULT_TIMEOUT_MS = 15000;

let servedLog = loadLog();
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
 */
export async function send(method, path, opts = {}) {
  const { body, auth = true, background = false, signal, timeout = DEFAULT_TIMEOUT_MS } = opts;
  const headers = { Accept: opts.accept || 'application/json' };
  const used = auth ? credentials.token() : '';
  if (auth) {
    if (!used) throw new ApiError(401, 'unauthorized', 'not signed in');
    headers.Authorization = 'Bearer ' + used;
  }
  const init = { method, headers, cache: 'no-store', credentials: 'omit' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
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
  if (res.ok) return res;

  const err = await errorFrom(res);
  // Only the token this call used can have ended; a newer sign-in is unaffected.
  if (auth && res.status === 401 && used === credentials.token()) unauthorized(err);
  throw err;
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
