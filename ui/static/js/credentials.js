// credentials.js — who is signed in, in this tab.
//
// The token lives in sessionStorage, so every tab (and every browser context)
// has its own session. A one-shot notice carries a message across a change of
// screen, such as "Your session ended" on the sign-in page.

const KEY = 'sessiond.credentials';
const NOTICE_KEY = 'sessiond.notice';

function read(key) {
  try {
    return JSON.parse(sessionStorage.getItem(key) || 'null');
  } catch {
    return null;
  }
}

/** current returns {token, username, sessionId} or null when signed out. */
export function current() {
  const c = read(KEY);
  return c && typeof c.token === 'string' && c.token ? c : null;
}

export function token() {
  const c = current();
  return c ? c.token : '';
}

export function username() {
  const c = current();
  return c ? c.username : '';
}

/** save stores the result of POST v1/sessions: {token, session}. */
export function save(token, session, fallbackUsername) {
  const c = {
    token,
    username: (session && session.username) || fallbackUsername || '',
    sessionId: (session && session.id) || '',
  };
  sessionStorage.setItem(KEY, JSON.stringify(c));
  return c;
}

export function clear() {
  sessionStorage.removeItem(KEY);
}

/** setNotice leaves a message for the next screen; kind is "info", "success" or "error". */
export function setNotice(text, kind = 'info') {
  sessionStorage.setItem(NOTICE_KEY, JSON.stringify({ text, kind }));
}

/** takeNotice returns and forgets the pending notice, or null. */
export function takeNotice() {
  const n = read(NOTICE_KEY);
  sessionStorage.removeItem(NOTICE_KEY);
  return n && n.text ? n : null;
}
