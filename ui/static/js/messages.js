// messages.js — the messages screen: conversations with unread counts, one
// thread at a time, a send box, and new messages appearing live.
//
// A thread is read with GET v1/messages and followed with its `next` cursor.
// Messages from the live stream show at once; each one (and each reconnect of
// the stream) also triggers a catch-up from the cursor, which the API promises
// never skips a message that reaches this node late from another region.

import * as api from './api.js';
import * as credentials from './credentials.js';
import * as live from './live.js';
import * as router from './router.js';
import * as unread from './unread.js';
import { h, replace, field, alertBox, showAlert, hideAlert, showError, busy, loading, empty, screenHeader, time, relative } from './view.js';

const PAGE = 100;
const MAX_PAGES_AT_ONCE = 20;
const BODY_MAX_BYTES = 4096;
const USERNAME = /^[a-z0-9_.-]{3,32}$/;
// THREAD names whom a thread is with: a username, or an account that lost its name to a
// concurrent registration (NAME#1234abcd). Anything else in the hash is not shown.
const THREAD = /^[a-z0-9_.-]{3,32}(#[0-9a-f]{8})?$/;
const encoder = new TextEncoder();

// lastSent holds, per conversation (by the signed-in user's and the other's names), the
// id of the last message this tab sent in it. Each send names it as `after`, so the server orders the new message
// after it even if a load balancer sends the two to different nodes before they have
// replicated. Per conversation: the server refuses an `after` of another conversation.
const lastSent = new Map();

/** screen is #/messages and #/messages/NAME. */
export function screen(main, args, ctx) {
  const me = credentials.username();
  const name = (args[0] || '').trim();
  if (name && !THREAD.test(name)) {
    // A link that names no possible user (a crafted one, say): its text is not shown.
    router.redirect('messages');
    return;
  }
  const convList = h('ul', { id: 'conversations', 'data-testid': 'conversations', class: 'conv-list' });
  const layout = h('div', { class: ['messages-layout', name && 'has-thread'] }, conversationsPane(ctx, me, name, convList), name ? threadPane(ctx, me, name) : placeholderPane());
  replace(main, screenHeader('Messages', name ? null : 'Conversations update live as messages arrive, from any region.'), layout);

  const renderList = () => renderConversations(convList, me, name);
  const cur = live.conversationsList();
  if (cur.loaded) renderList();
  else replace(convList, h('li', {}, loading('Loading conversations…', 'conversations-loading')));
  ctx.onLeave(live.on('conversations', renderList));
  ctx.onLeave(unread.onChange(renderList));
  live.refreshConversations().catch((ex) => {
    if (ctx.signal.aborted) return;
    const err = document.getElementById('conversations-error');
    if (err) showError(err, ex);
  });
}

function conversationsPane(ctx, me, name, convList) {
  const err = alertBox('new-conversation-error');
  const who = h('input', {
    id: 'new-conversation-username',
    'data-testid': 'new-conversation-username',
    type: 'text',
    autocomplete: 'off',
    autocapitalize: 'none',
    spellcheck: 'false',
    maxlength: 32,
    placeholder: 'username',
  });
  const start = h('button', { type: 'submit', id: 'new-conversation-submit', 'data-testid': 'new-conversation-submit', class: 'btn btn-primary', text: 'Open' });
  const form = h('form', { id: 'new-conversation-form', class: 'form compact', novalidate: true }, err, field('Message someone new', who), h('div', { class: 'inline-submit' }, start));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    hideAlert(err);
    const to = who.value.trim().toLowerCase();
    if (!USERNAME.test(to)) {
      showAlert(err, 'error', 'Enter a username: 3–32 characters of a–z, 0–9, _ . -');
      who.focus();
      return;
    }
    router.go('messages', to);
  });
  return h(
    'aside',
    { class: 'card conversations-pane', 'aria-labelledby': 'conversations-title' },
    form,
    h('h2', { id: 'conversations-title', text: 'Conversations' }),
    alertBox('conversations-error'),
    convList,
  );
}

function renderConversations(ul, me, active) {
  const { conversations, loaded } = live.conversationsList();
  if (!loaded) return;
  if (!conversations.length) {
    replace(ul, h('li', {}, empty('No conversations yet. Start one above.', 'conversations-empty')));
    return;
  }
  replace(
    ul,
    conversations.map((c) => {
      const n = unread.unreadIn(me, c);
      const last = c.last_message || {};
      const preview = last.body ? (last.from === me ? 'You: ' : '') + last.body : '';
      return h(
        'li',
        { 'data-testid': 'conversation-item', data: { with: c.with, unread: n } },
        h(
          'a',
          { href: router.href('messages', c.with), class: ['conv', n > 0 && 'conv-unread'], 'aria-current': c.with === active ? 'page' : null },
          h(
            'span',
            { class: 'conv-top' },
            h('span', { class: 'conv-name', text: c.with }),
            n > 0 ? h('span', { class: 'badge badge-count', 'data-testid': 'unread-count', 'aria-label': n + ' unread', text: String(n) }) : null,
          ),
          h('span', { class: 'conv-bottom' }, h('span', { class: 'conv-preview', text: preview }), last.sent_at ? h('span', { class: 'conv-time muted', text: relative(last.sent_at) }) : null),
        ),
      );
    }),
  );
}

function placeholderPane() {
  return h(
    'section',
    { class: 'card thread-pane thread-placeholder', id: 'thread-placeholder' },
    h('p', { class: 'empty', text: 'Choose a conversation, or type a username to start a new one.' }),
  );
}

function threadPane(ctx, me, name) {
  const threadErr = alertBox('thread-error');
  const sendErr = alertBox('message-error');
  const thread = h('div', { id: 'thread', 'data-testid': 'thread', class: 'thread', role: 'log', 'aria-live': 'polite', 'aria-label': 'Messages with ' + name, tabindex: '0' }, loading('Loading messages…', 'thread-loading'));
  const more = h('button', { type: 'button', id: 'thread-load-more', 'data-testid': 'thread-load-more', class: 'btn btn-small', text: 'Load newer messages', hidden: true });
  const body = h('textarea', { id: 'message-body', name: 'message-body', 'data-testid': 'message-body', rows: 2, maxlength: BODY_MAX_BYTES, placeholder: 'Write a message…' });
  const send = h('button', { type: 'submit', id: 'message-send', 'data-testid': 'message-send', class: 'btn btn-primary', text: 'Send' });
  const hint = h('small', { class: 'hint', id: 'message-body-hint', text: 'Enter sends; Shift+Enter starts a new line.' });
  body.setAttribute('aria-describedby', 'message-body-hint');
  const form = h(
    'form',
    { id: 'message-form', class: 'send-form', novalidate: true },
    sendErr,
    h('label', { for: 'message-body', class: 'sr-only', text: 'Message to ' + name }),
    h('div', { class: 'send-row' }, body, send),
    hint,
  );

  const list = h('ol', { class: 'msgs', id: 'thread-messages' });
  const ids = new Set();
  let cursor = '';
  let loadedOnce = false;
  let catching = null;
  let again = false;

  const nearBottom = () => thread.scrollHeight - thread.scrollTop - thread.clientHeight < 80;
  const toBottom = () => {
    thread.scrollTop = thread.scrollHeight;
  };

  function append(msgs) {
    const stick = !loadedOnce || nearBottom();
    let added = 0;
    for (const m of msgs) {
      if (!m || !m.id || ids.has(m.id)) continue;
      ids.add(m.id);
      list.append(messageItem(m, me));
      added++;
    }
    if (!loadedOnce) return added;
    if (ids.size && !list.isConnected) replace(thread, list);
    if (added) {
      unread.markSeen(me, name, ids.size);
      if (stick) toBottom();
    }
    return added;
  }

  async function fetchPages(background) {
    for (let page = 0; ; page++) {
      const r = await api.get(api.query('v1/messages', { with: name, after: cursor, limit: PAGE }), { signal: ctx.signal, background });
      if (ctx.signal.aborted) return;
      const msgs = (r && Array.isArray(r.messages) ? r.messages : []);
      if (r && r.next) cursor = r.next;
      append(msgs);
      const full = msgs.length >= PAGE;
      more.hidden = !(full && page + 1 >= MAX_PAGES_AT_ONCE);
      if (!full || page + 1 >= MAX_PAGES_AT_ONCE) return;
    }
  }

  function catchUp(background = true) {
    if (catching) {
      again = true;
      return catching;
    }
    catching = (async () => {
      try {
        do {
          again = false;
          await fetchPages(background);
        } while (again && !ctx.signal.aborted);
        hideAlert(threadErr);
        // Loaded at last after a failed first load (the stream came back): show the
        // empty state the failure left out.
        if (loadedOnce && !ids.size && !thread.firstChild) replace(thread, empty('No messages yet. Say hello!', 'thread-empty'));
      } catch (ex) {
        if (!ctx.signal.aborted) showError(threadErr, ex, { not_found: noSuchUser(name) });
      } finally {
        catching = null;
      }
    })();
    return catching;
  }

  (async () => {
    await catchUp(false);
    if (ctx.signal.aborted) return;
    loadedOnce = true;
    if (ids.size) {
      replace(thread, list);
      unread.markSeen(me, name, ids.size);
    } else if (threadErr.hidden) {
      replace(thread, empty('No messages yet. Say hello!', 'thread-empty'));
    } else {
      replace(thread);
    }
    toBottom();
    live.setOpenThread(name);
  })();
  ctx.onLeave(() => live.setOpenThread(''));

  more.addEventListener('click', () => catchUp(false));

  ctx.onLeave(
    live.on('message', (m) => {
      const other = m.from === me ? m.to : m.from;
      if (other !== name) return;
      if (loadedOnce) append([m]);
      catchUp(true);
    }),
  );
  ctx.onLeave(live.on('reconnect', () => catchUp(true)));

  body.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });

  let sending = false;
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (sending) return; // Enter pressed again while the last message is on its way
    hideAlert(sendErr);
    // Leading blank lines and trailing white space are never meant.
    const text = body.value.replace(/^\s*\n/, '').trimEnd();
    if (!text.trim()) {
      showAlert(sendErr, 'error', 'Write a message first.');
      body.focus();
      return;
    }
    const bytes = encoder.encode(text).length;
    if (bytes > BODY_MAX_BYTES) {
      showAlert(sendErr, 'error', 'That message is too long: ' + bytes + ' bytes, the limit is ' + BODY_MAX_BYTES + '.');
      return;
    }
    sending = true;
    busy(send, true, 'Sending…');
    body.value = ''; // cleared at once, so typing on is not lost; put back on failure
    const conv = me + '\n' + name; // another user may sign in to this tab later
    try {
      const after = lastSent.get(conv);
      const r = await api.post('v1/messages', after ? { to: name, body: text, after } : { to: name, body: text }, { signal: ctx.signal });
      if (r && r.message) lastSent.set(conv, r.message.id);
      if (ctx.signal.aborted) return;
      if (!body.value.trim()) body.value = '';
      if (r && r.message) {
        if (!loadedOnce) loadedOnce = true;
        append([r.message]);
        toBottom();
      }
      live.refreshConversations({ background: true }).catch(() => {});
    } catch (ex) {
      // A refused send may be a refused `after` (an account of the same name, erased and
      // registered again): the next send goes without it.
      if (ex && ex.code === 'invalid_argument') lastSent.delete(conv);
      if (ctx.signal.aborted) return;
      if (!body.value) body.value = text;
      showError(sendErr, ex, {
        not_found: noSuchUser(name),
        invalid_argument: 'That message could not be sent.',
      });
    } finally {
      sending = false;
      busy(send, false);
      if (!ctx.signal.aborted) body.focus();
    }
  });

  return h(
    'section',
    { class: 'card thread-pane', 'aria-labelledby': 'thread-title' },
    h(
      'div',
      { class: 'thread-head' },
      h('a', { href: '#/messages', id: 'thread-back', class: 'back-link', text: '← All conversations' }),
      h('h2', { id: 'thread-title', 'data-testid': 'thread-title', text: name === me ? name + ' (you)' : name }),
    ),
    threadErr,
    thread,
    more,
    form,
  );
}

function noSuchUser(name) {
  return 'There is no user named “' + name + '”. Check the spelling of the username.';
}

function messageItem(m, me) {
  const mine = m.from === me;
  return h(
    'li',
    { class: ['msg', mine ? 'msg-mine' : 'msg-theirs'], 'data-testid': 'message', data: { messageId: m.id, from: m.from } },
    h('p', { class: 'msg-body', 'data-testid': 'message-text', text: m.body }),
    h('p', { class: 'msg-meta' }, h('span', { class: 'msg-from', text: mine ? 'You' : m.from }), ' · ', time(m.sent_at, { short: true })),
  );
}
