// auth.js — signing in and out of this tab, and ending it when the server
// says the session is gone.

import * as api from './api.js';
import * as credentials from './credentials.js';
import * as live from './live.js';
import * as router from './router.js';

export const SESSION_ENDED = 'Your session ended: it was revoked or expired. Please sign in again.';

const changeListeners = new Set();
let returnTo = '';

/** onChange calls fn() whenever this tab signs in or out. */
export function onChange(fn) {
  changeListeners.add(fn);
  return () => changeListeners.delete(fn);
}

function changed() {
  for (const fn of changeListeners) fn();
}

export function signedIn() {
  return !!credentials.token();
}

/** rememberReturn keeps the hash to go back to after signing in. */
export function rememberReturn(hash) {
  returnTo = hash || '';
}

// Device tokens: a sign-in returns one, kept here per username (localStorage, so across
// tabs and restarts) and sent with the next sign-in to that account. While others guess
// an account's password from many addresses, the server keeps letting in the browsers
// that signed in to it before. It is not an access token: it cannot call the API.
const DEVICES_KEY = 'sessiond.devices';
const MAX_DEVICES = 20;

/** devices returns [[username, deviceToken], ...], most recent last. */
function devices() {
  try {
    const d = JSON.parse(localStorage.getItem(DEVICES_KEY) || '[]');
    return Array.isArray(d) ? d.filter((e) => Array.isArray(e) && typeof e[0] === 'string' && typeof e[1] === 'string') : [];
  } catch {
    return [];
  }
}

function deviceFor(username) {
  const e = devices().find(([u]) => u === username);
  return e ? e[1] : '';
}

function rememberDevice(username, device) {
  if (typeof device !== 'string' || !device) return;
  const d = devices().filter(([u]) => u !== username);
  d.push([username, device]);
  try {
    localStorage.setItem(DEVICES_KEY, JSON.stringify(d.slice(-MAX_DEVICES)));
  } catch {
    // storage full or disabled: signing in works without it
  }
}

/**
 * forgetDevice drops the device token of username: after signing out everywhere the
 * server no longer honours it, and after deleting the account nothing of it should stay
 * in this browser; with deleted, the account's unread counts go too.
 */
export function forgetDevice(username, deleted = false) {
  if (!username) return;
  try {
    localStorage.setItem(DEVICES_KEY, JSON.stringify(devices().filter(([u]) => u !== username)));
    if (deleted) localStorage.removeItem('sessiond.seen.' + username);
  } catch {
    // storage disabled: nothing was kept
  }
}

/** signIn logs in with POST v1/sessions, stores the token and starts the background work. */
export async function signIn(username, password) {
  const body = { username, password };
  const device = deviceFor(username);
  if (device) body.device = device;
  const r = await api.post('v1/sessions', body, { auth: false });
  if (!r || !r.token) throw new api.ApiError(500, 'bad_response', 'no token in the reply');
  rememberDevice(username, r.device);
  credentials.save(r.token, r.session, username);
  live.start();
  changed();
  const target = returnTo && !/^#\/?(signin|signup|signout)?$/.test(returnTo) ? returnTo : '#/profile';
  returnTo = '';
  location.hash = target;
}

/**
 * endSession forgets this tab's token without asking the server, shows text
 * on the sign-in screen and goes there.
 */
export function endSession(text, kind = 'info') {
  const wasSignedIn = signedIn();
  live.stop();
  credentials.clear();
  api.clearServedBy(); // the requests of this session are no business of the next one's
  if (text) credentials.setNotice(text, kind);
  if (wasSignedIn) changed();
  router.go('signin');
}

/** signOut ends this session on the server (DELETE v1/sessions/current) and locally. */
export async function signOut() {
  try {
    await api.del('v1/sessions/current');
    endSession('You have signed out.', 'success');
  } catch (e) {
    if (e && e.status === 401) return; // already ended; api.js took the tab to sign-in
    endSession(
      'You have signed out of this tab, but the server could not be told (' + (e.message || e.code) + '). The session ends by itself when it expires, or revoke it from another device.',
      'info',
    );
  }
}

/**
 * sessionEnded is api.js's handler of a session that ended: revoked or expired (401), or
 * its account lost its username (409 username_conflict, whose message says what to do).
 */
export function sessionEnded(err) {
  if (!signedIn()) return;
  rememberReturn(location.hash);
  endSession(err && err.code === 'username_conflict' ? err.message : SESSION_ENDED, 'error');
}
