// live.js — what a signed-in tab keeps running in the background:
//   - the message stream (GET v1/messages/stream), reconnecting with backoff;
//   - a revocation check: GET v1/sessions/current every few seconds, so a
//     session revoked from another browser ends here within seconds (the 401
//     goes through api.js's handler, which returns the tab to sign-in);
//   - the conversations list and its unread counts, refreshed when a message
//     arrives or the stream comes back.

import * as api from './api.js';
import * as credentials from './credentials.js';
import * as unread from './unread.js';
import * as stream from './stream.js';

const CHECK_MS = 3000;
const REFRESH_DEBOUNCE_MS = 250;
// The conversations list is read a page at a time (the server's pages hold at most 500);
// the tab reads up to CONVERSATION_PAGES of them, newest first, for the list and the
// unread counts.
const CONVERSATION_PAGE = 100;
const CONVERSATION_PAGES = 20;

let es = null;
let checkTimer = 0;
let refreshTimer = 0;
let refreshing = null;
let refreshAgain = false;
let state = 'closed';
let conversations = [];
let conversationsLoaded = false;
let openThread = '';
const listeners = { message: new Set(), reconnect: new Set(), conversations: new Set(), state: new Set() };

function emit(kind, ...args) {
  for (const fn of listeners[kind]) {
    try {
      fn(...args);
    } catch (e) {
      console.error(kind, e);
    }
  }
}

/**
 * on subscribes to "message" (m), "reconnect" (), "conversations" (list) or
 * "state" (state, info); it returns the unsubscribe function.
 */
export function on(kind, fn) {
  listeners[kind].add(fn);
  return () => listeners[kind].delete(fn);
}

/** streamState is "connecting", "open", "waiting" or "closed". */
export function streamState() {
  return state;
}

async function check() {
  if (!credentials.token()) return;
  try {
    await api.get('v1/sessions/current', { background: true });
  } catch {
    // 401 is handled by api.js; a network error is not a revocation
  }
}

function onVisible() {
  if (document.visibilityState === 'visible') check();
}

/** start begins the background work for the signed-in user; calling it again restarts it. */
export function start() {
  stop();
  es = stream.open('v1/messages/stream', {
    onEvent(ev) {
      if (ev.type !== 'message') return;
      const obj = JSON.parse(ev.data);
      const m = obj && obj.message ? obj.message : obj;
      if (!m || typeof m !== 'object' || !m.id) return;
      emit('message', m);
      scheduleRefresh();
    },
    onOpen(reconnected) {
      if (reconnected) {
        emit('reconnect');
        scheduleRefresh();
      }
    },
    onState(s, info) {
      state = s;
      emit('state', s, info || {});
    },
  });
  checkTimer = setInterval(check, CHECK_MS);
  document.addEventListener('visibilitychange', onVisible);
  window.addEventListener('online', check);
  refreshConversations({ background: true }).catch(() => {});
}

/** stop ends all background work and forgets the cached conversations. */
export function stop() {
  if (es) es.close();
  es = null;
  clearInterval(checkTimer);
  clearTimeout(refreshTimer);
  document.removeEventListener('visibilitychange', onVisible);
  window.removeEventListener('online', check);
  conversations = [];
  conversationsLoaded = false;
  openThread = '';
  state = 'closed';
  emit('state', 'closed', {});
}

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => refreshConversations({ background: true }).catch(() => {}), REFRESH_DEBOUNCE_MS);
}

/** conversationsList returns the last fetched conversations and whether any fetch succeeded. */
export function conversationsList() {
  return { conversations: conversations.slice(), loaded: conversationsLoaded };
}

/**
 * refreshConversations reads GET v1/conversations (fetchConversations); concurrent calls
 * share one reading.
 * A call made while a request is on its way (which may have left before the message that
 * prompted the call) makes it fetch once more when it is back, so no change is missed.
 */
export function refreshConversations(opts = {}) {
  if (refreshing) {
    refreshAgain = true;
    return refreshing;
  }
  refreshing = (async () => {
    try {
      do {
        refreshAgain = false;
        conversations = await fetchConversations(!!opts.background);
        conversationsLoaded = true;
        markOpenThreadSeen();
        emit('conversations', conversations.slice());
      } while (refreshAgain);
      return conversations.slice();
    } finally {
      refreshing = null;
      refreshAgain = false;
    }
  })();
  return refreshing;
}

/**
 * fetchConversations reads the conversations page by page, following each page's `next`,
 * up to CONVERSATION_PAGES pages. A conversation that gets a message while the pages are
 * read moves to the front, behind the cursor: the next refresh (which that message
 * prompts) lists it.
 */
async function fetchConversations(background) {
  const out = [];
  const seen = new Set();
  let after = '';
  for (let i = 0; i < CONVERSATION_PAGES; i++) {
    const r = await api.get(api.query('v1/conversations', { after, limit: CONVERSATION_PAGE }), { background });
    for (const c of r && Array.isArray(r.conversations) ? r.conversations : []) {
      if (c && c.with && !seen.has(c.with)) {
        seen.add(c.with);
        out.push(c);
      }
    }
    after = (r && typeof r.next === 'string' && r.next) || '';
    if (!after) break;
  }
  return out;
}

function markOpenThreadSeen() {
  if (!openThread || document.visibilityState === 'hidden') return;
  const c = conversations.find((x) => x.with === openThread);
  if (c) unread.markSeen(credentials.username(), openThread, Number(c.count) || 0);
}

/** setOpenThread tells which conversation is on screen ("" for none), so it counts as read. */
export function setOpenThread(name) {
  openThread = name || '';
  markOpenThreadSeen();
}

/** totalUnread is the sum of unread counts over the known conversations. */
export function totalUnread() {
  return unread.total(credentials.username(), conversations);
}
