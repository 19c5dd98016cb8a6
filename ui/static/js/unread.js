// unread.js — unread counts per conversation, kept in localStorage.
//
// The API reports a conversation's message count; this module remembers, per
// signed-in user and per conversation, how many of them this browser has
// shown. Unread = count − seen, and nothing is unread when the last message
// is the user's own (they answered, so they read it). localStorage is shared
// by the tabs of one browser, so reading in one tab clears the badge in all.

const PREFIX = 'sessiond.seen.';

// load returns the counts of me by username, in an object with no prototype: a user may
// be called __proto__, which on a plain object would name the prototype, not a count.
function load(me) {
  const out = Object.create(null);
  try {
    const v = JSON.parse(localStorage.getItem(PREFIX + me) || '{}');
    if (v && typeof v === 'object') Object.assign(out, v);
  } catch {
    // unreadable: start afresh
  }
  return out;
}

function store(me, v) {
  try {
    localStorage.setItem(PREFIX + me, JSON.stringify(v));
  } catch {
    // storage disabled: counts just do not persist
  }
}

/** seen is how many messages of the conversation with other this browser has shown. */
export function seen(me, other) {
  const n = load(me)[other];
  return Number.isFinite(n) ? n : 0;
}

const listeners = new Set();
let notifying = false;

/** markSeen records that count messages with other were shown; it never goes down. */
export function markSeen(me, other, count) {
  if (!me || !other || !Number.isFinite(count)) return;
  const v = load(me);
  const had = Number.isFinite(v[other]) ? v[other] : 0;
  if (had >= count) return;
  v[other] = count;
  store(me, v);
  // This tab's badges must follow too (the storage event reaches only the other tabs).
  // One call once the current script is done: markSeen also runs while a list is drawn.
  if (notifying) return;
  notifying = true;
  queueMicrotask(() => {
    notifying = false;
    for (const fn of listeners) fn();
  });
}

/** unreadIn returns the unread count of a conversation {with, last_message, count}. */
export function unreadIn(me, conv) {
  const count = Number(conv && conv.count) || 0;
  const last = conv && conv.last_message;
  if (last && last.from === me) {
    markSeen(me, conv.with, count);
    return 0;
  }
  return Math.max(0, count - seen(me, conv.with));
}

/** total sums the unread counts of conversations. */
export function total(me, conversations) {
  return (conversations || []).reduce((n, c) => n + unreadIn(me, c), 0);
}

/** onChange calls fn when this tab or another tab of this browser changes the counts. */
export function onChange(fn) {
  const handler = (e) => {
    if (e.key && e.key.startsWith(PREFIX)) fn();
  };
  const local = () => fn();
  window.addEventListener('storage', handler);
  listeners.add(local);
  return () => {
    window.removeEventListener('storage', handler);
    listeners.delete(local);
  };
}
