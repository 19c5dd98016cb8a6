// sessions.js — the "this session" screen (details and key/value data) and
// the "active sessions" screen (list, revoke one, sign out everywhere).

import * as api from './api.js';
import * as auth from './auth.js';
import * as credentials from './credentials.js';
import { h, replace, field, alertBox, showAlert, hideAlert, showError, busy, announce, loading, empty, screenHeader, time } from './view.js';

/**
 * parseValue reads what the user typed as a session data value: valid JSON
 * is taken as JSON, anything else as a plain string. null is not a value
 * (it means "delete"), so "null" stays the string "null".
 */
export function parseValue(text) {
  const t = text.trim();
  if (t === '') return text;
  try {
    const v = JSON.parse(t);
    return v === null ? text : v;
  } catch {
    return text;
  }
}

/** editText is the inverse of parseValue: what to put in the box to edit v. */
export function editText(v) {
  if (typeof v === 'string') return parseValue(v) === v ? v : JSON.stringify(v);
  return JSON.stringify(v);
}

function kindOf(v) {
  if (Array.isArray(v)) return 'array';
  if (v === null) return 'null';
  return typeof v;
}

function shortId(id) {
  return id && id.length > 14 ? id.slice(0, 12) + '…' : id || '';
}

/** current is #/session: this session's details and data. */
export function current(main, _args, ctx) {
  const refresh = h('button', { type: 'button', id: 'session-refresh', 'data-testid': 'session-refresh', class: 'btn', text: 'Refresh' });
  const header = screenHeader('This session', 'The session of this browser tab. Its data is shared with every node, in every region.', refresh);
  const facts = h('dl', { class: 'facts', id: 'session-facts' });
  const loadErr = alertBox('session-error');
  const dataBody = h('div', { id: 'session-data', 'data-testid': 'session-data' });
  const err = alertBox('data-error');
  const ok = alertBox('data-saved');
  ok.setAttribute('role', 'status');
  const keyIn = h('input', { id: 'data-key', name: 'data-key', 'data-testid': 'data-key', type: 'text', autocomplete: 'off', spellcheck: 'false', maxlength: 128 });
  const valIn = h('input', { id: 'data-value', name: 'data-value', 'data-testid': 'data-value', type: 'text', autocomplete: 'off', spellcheck: 'false' });
  const save = h('button', { type: 'submit', id: 'data-save', 'data-testid': 'data-save', class: 'btn btn-primary', text: 'Save' });
  const form = h(
    'form',
    { id: 'data-form', class: 'form data-form', novalidate: true },
    h('h3', { id: 'data-form-title', text: 'Add or change a key' }),
    err,
    ok,
    h(
      'div',
      { class: 'grid-kv' },
      field('Key', keyIn),
      field('Value', valIn, 'Plain text is saved as a string; valid JSON (42, true, [1,2], {"a":1}, "quoted") as JSON.'),
    ),
    h('div', { class: 'actions' }, save),
  );
  let session = null;

  const renderFacts = (s) => {
    replace(
      facts,
      h('dt', { text: 'Session id' }),
      h('dd', {}, h('code', { id: 'session-id', 'data-testid': 'session-id', text: s.id || '' })),
      h('dt', { text: 'Signed in as' }),
      h('dd', { id: 'session-username', text: s.username || '' }),
      h('dt', { text: 'Created' }),
      h('dd', { id: 'session-created', 'data-testid': 'session-created' }, time(s.created_at)),
      s.last_used_at ? [h('dt', { text: 'Last used' }), h('dd', { id: 'session-last-used' }, time(s.last_used_at))] : null,
      h('dt', { text: 'Expires' }),
      h('dd', { id: 'session-expires', 'data-testid': 'session-expires' }, time(s.expires_at)),
      h('dt', { text: 'Idle expiry' }),
      h('dd', { id: 'session-idle-expires', 'data-testid': 'session-idle-expires' }, time(s.idle_expires_at), h('small', { class: 'hint block', text: 'Moves later each time the session is used.' })),
    );
  };

  const renderData = (data) => {
    const keys = Object.keys(data || {}).sort();
    if (!keys.length) {
      replace(dataBody, empty('No data in this session yet. Add a key below.', 'session-data-empty'));
      return;
    }
    const rows = keys.map((k) => {
      const v = data[k];
      const edit = h('button', { type: 'button', class: 'btn btn-small', 'data-testid': 'session-data-edit', 'aria-label': 'Edit ' + k, text: 'Edit' });
      const del = h('button', { type: 'button', class: 'btn btn-small btn-danger-outline', 'data-testid': 'session-data-delete', 'aria-label': 'Delete ' + k, text: 'Delete' });
      edit.addEventListener('click', () => {
        keyIn.value = k;
        valIn.value = editText(v);
        valIn.focus();
        valIn.select();
      });
      del.addEventListener('click', () => write({ [k]: null }, del, 'Deleted “' + k + '”.'));
      return h(
        'tr',
        { 'data-testid': 'session-data-row', data: { key: k } },
        h('th', { scope: 'row' }, h('code', { class: 'data-key', text: k })),
        h('td', { class: 'data-value', 'data-testid': 'session-data-value' }, typeof v === 'string' ? h('span', { class: 'value-text', text: v }) : h('code', { class: 'value-json', text: JSON.stringify(v) })),
        h('td', { class: 'data-kind' }, h('span', { class: 'tag', text: kindOf(v) })),
        h('td', { class: 'row-actions' }, edit, del),
      );
    });
    replace(
      dataBody,
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          { class: 'table', id: 'session-data-table' },
          h('caption', { class: 'sr-only', text: 'Session data' }),
          h('thead', {}, h('tr', {}, h('th', { scope: 'col', text: 'Key' }), h('th', { scope: 'col', text: 'Value' }), h('th', { scope: 'col', text: 'Type' }), h('th', { scope: 'col' }, h('span', { class: 'sr-only', text: 'Actions' })))),
          h('tbody', {}, rows),
        ),
      ),
    );
  };

  const show = (s) => {
    session = s;
    renderFacts(s);
    renderData(s.data);
  };

  async function write(data, button, message) {
    hideAlert(err);
    hideAlert(ok);
    busy(button, true);
    try {
      const r = await api.patch('v1/sessions/current', { data }, { signal: ctx.signal });
      if (ctx.signal.aborted) return;
      show(r.session);
      showAlert(ok, 'success', message);
      announce(message);
      return true;
    } catch (ex) {
      if (ctx.signal.aborted) return;
      showError(err, ex, { too_large: 'That is too large: a value may be at most 16 KiB and all data at most 64 KiB.' });
      return false;
    } finally {
      if (button.isConnected) busy(button, false);
    }
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const key = keyIn.value;
    if (!key.trim()) {
      hideAlert(ok);
      showAlert(err, 'error', 'Please enter a key.');
      keyIn.focus();
      return;
    }
    const existed = session && session.data && Object.prototype.hasOwnProperty.call(session.data, key);
    if (await write({ [key]: parseValue(valIn.value) }, save, (existed ? 'Changed “' : 'Added “') + key + '”.')) {
      keyIn.value = '';
      valIn.value = '';
      keyIn.focus();
    }
  });

  const load = async () => {
    busy(refresh, true);
    try {
      const r = await api.get('v1/sessions/current', { signal: ctx.signal });
      if (ctx.signal.aborted) return;
      hideAlert(loadErr);
      show(r.session);
    } catch (ex) {
      if (ctx.signal.aborted) return;
      showError(loadErr, ex);
    } finally {
      busy(refresh, false);
    }
  };
  refresh.addEventListener('click', load);

  replace(facts, h('dd', {}, loading('Loading this session…', 'session-loading')));
  replace(dataBody, loading('Loading data…'));
  replace(
    main,
    header,
    loadErr,
    h('section', { class: 'card', 'aria-labelledby': 'session-facts-title' }, h('h2', { id: 'session-facts-title', text: 'Details' }), facts),
    h('section', { class: 'card', 'aria-labelledby': 'session-data-title' }, h('h2', { id: 'session-data-title', text: 'Data' }), dataBody, form),
  );
  load();
}

/** list is #/sessions: the user's active sessions. */
export function list(main, _args, ctx) {
  const err = alertBox('sessions-error');
  const refresh = h('button', { type: 'button', id: 'sessions-refresh', 'data-testid': 'sessions-refresh', class: 'btn', text: 'Refresh' });
  const all = h('button', { type: 'button', id: 'sessions-revoke-all', 'data-testid': 'sessions-revoke-all', class: 'btn btn-danger', text: 'Sign out everywhere' });
  const box = h('ul', { id: 'sessions-list', 'data-testid': 'sessions-list', class: 'item-list', 'aria-busy': 'true' }, h('li', {}, loading('Loading sessions…', 'sessions-loading')));
  const count = h('p', { id: 'sessions-count', class: 'muted' });

  const render = (sessions) => {
    box.removeAttribute('aria-busy');
    count.textContent = sessions.length === 1 ? '1 active session' : sessions.length + ' active sessions';
    if (!sessions.length) {
      replace(box, h('li', {}, empty('No active sessions.', 'sessions-empty')));
      return;
    }
    replace(
      box,
      sessions.map((s) => {
        const revoke = h('button', {
          type: 'button',
          class: 'btn btn-small btn-danger-outline',
          'data-testid': 'session-revoke',
          'aria-label': s.current ? 'Revoke this session (signs you out)' : 'Revoke session ' + s.id,
          text: s.current ? 'Sign out' : 'Revoke',
        });
        revoke.addEventListener('click', () => revokeOne(s, revoke));
        return h(
          'li',
          { class: ['item', s.current && 'item-current'], 'data-testid': 'session-item', data: { sessionId: s.id, current: !!s.current } },
          h(
            'div',
            { class: 'item-main' },
            h(
              'p',
              { class: 'item-title' },
              h('span', { class: 'session-device', 'data-testid': 'session-device', text: s.device || 'Unknown device' }),
              ' ',
              h('code', { title: s.id, text: shortId(s.id) }),
              s.current ? h('span', { class: 'badge badge-accent', 'data-testid': 'session-current', text: 'This session' }) : null,
            ),
            h(
              'dl',
              { class: 'facts facts-inline' },
              s.client_address ? [h('dt', { text: 'From' }), h('dd', { 'data-testid': 'session-address', text: s.client_address })] : null,
              s.region || s.node ? [h('dt', { text: 'Signed in at' }), h('dd', { 'data-testid': 'session-where', text: [s.region, s.node].filter(Boolean).join(' · ') })] : null,
              h('dt', { text: 'Created' }),
              h('dd', { 'data-testid': 'session-created-at' }, time(s.created_at)),
              h('dt', { text: 'Last used' }),
              h('dd', { 'data-testid': 'session-last-used' }, time(s.last_used_at)),
              h('dt', { text: 'Expires' }),
              h('dd', {}, time(s.expires_at)),
            ),
          ),
          h('div', { class: 'item-actions' }, revoke),
        );
      }),
    );
  };

  const load = async () => {
    busy(refresh, true);
    try {
      const r = await api.get('v1/sessions', { signal: ctx.signal });
      if (ctx.signal.aborted) return;
      hideAlert(err);
      render((r && r.sessions) || []);
    } catch (ex) {
      if (ctx.signal.aborted) return;
      showError(err, ex);
    } finally {
      busy(refresh, false);
    }
  };

  async function revokeOne(s, button) {
    hideAlert(err);
    busy(button, true, 'Revoking…');
    try {
      await api.del('v1/sessions/' + encodeURIComponent(s.id), { signal: ctx.signal });
      if (s.current) {
        auth.endSession('You have signed out.', 'success');
        return;
      }
      announce('Session revoked.');
      await load();
      const next = document.querySelector('#sessions-list [data-testid="session-revoke"]');
      (next || refresh).focus();
    } catch (ex) {
      if (ctx.signal.aborted) return;
      busy(button, false);
      showError(err, ex, { not_found: 'That session no longer exists; it may have already ended.' });
    }
  }

  all.addEventListener('click', async () => {
    hideAlert(err);
    busy(all, true, 'Signing out…');
    try {
      await api.del('v1/sessions', { signal: ctx.signal });
      auth.forgetDevice(credentials.username());
      auth.endSession('You have signed out everywhere: every session of your account has ended.', 'success');
    } catch (ex) {
      if (ctx.signal.aborted) return;
      busy(all, false);
      showError(err, ex);
    }
  });
  refresh.addEventListener('click', load);

  replace(
    main,
    screenHeader('Active sessions', 'Every place your account is signed in. Revoking a session ends it on every node within seconds.', refresh),
    err,
    h('section', { class: 'card', 'aria-labelledby': 'sessions-title' }, h('h2', { id: 'sessions-title', class: 'sr-only', text: 'Sessions' }), count, box),
    h(
      'section',
      { class: 'card', 'aria-labelledby': 'everywhere-title' },
      h('h2', { id: 'everywhere-title', text: 'Sign out everywhere' }),
      h('p', { text: 'Ends all sessions of your account, this one included. You will need to sign in again on every device.' }),
      all,
    ),
  );
  load();
}
