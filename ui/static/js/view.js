// view.js — building DOM safely and the small pieces every screen shares:
// form fields, inline alerts, friendly error text, times, busy buttons.
//
// Text always goes in through textContent, never innerHTML, so nothing a user
// or the server sends can become markup. Nothing here sets a style attribute
// (the Content-Security-Policy forbids inline styles): use classes and hidden.

/**
 * h builds an element. props: class, text, on:{event: fn}, data:{key: v},
 * and any attribute; value/checked/disabled/hidden are set as properties.
 * children: nodes, strings, numbers, arrays, null/false (skipped).
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = Array.isArray(v) ? v.filter(Boolean).join(' ') : v;
    else if (k === 'text') el.textContent = String(v);
    else if (k === 'on') for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === 'data') for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = String(dv);
    else if (k === 'value' || k === 'checked' || k === 'disabled' || k === 'hidden') el[k] = v;
    else if (k === 'style' || k.startsWith('on')) throw new Error('h: ' + k + ' is not allowed under the CSP');
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** replace empties el and puts children in it. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/**
 * field is a labelled input: input must have an id. hint, if given, is
 * linked with aria-describedby.
 */
export function field(label, input, hint) {
  const parts = [h('label', { for: input.id, text: label }), input];
  if (hint) {
    const hintId = input.id + '-hint';
    input.setAttribute('aria-describedby', hintId);
    parts.push(h('small', { class: 'hint', id: hintId, text: hint }));
  }
  return h('div', { class: 'field' }, parts);
}

/** alertBox is an empty, hidden alert region with the given id. */
export function alertBox(id) {
  return h('div', { id, class: 'alert', role: 'alert', 'data-testid': id, hidden: true });
}

/** showAlert fills an alert box; kind is "error", "success" or "info". */
export function showAlert(el, kind, text, detail) {
  el.className = 'alert alert-' + kind;
  replace(el, h('p', { class: 'alert-text', text }), detail ? h('p', { class: 'alert-detail', text: detail }) : null);
  el.hidden = false;
}

export function hideAlert(el) {
  el.hidden = true;
  el.replaceChildren();
}

const FRIENDLY = {
  invalid_argument: 'Please check what you entered.',
  unauthorized: 'You are not signed in, or your session ended.',
  not_found: 'That could not be found.',
  username_taken: 'That username is already taken. Please choose another one.',
  username_conflict:
    'This username was registered at the same moment in another region, and the other registration won. Please sign up again with a different username.',
  too_large: 'That is too large for the server to accept.',
  rate_limited: 'Too many attempts in a short time.',
  internal: 'Something went wrong on the server. Please try again.',
  unavailable: 'The server is starting up or shutting down. Please try again in a moment.',
  behind: 'The server has not caught up with your latest changes yet. Please try again in a moment.',
  network: 'Could not reach the server. Check your connection and try again.',
  timeout: 'The server took too long to answer. Please try again.',
  bad_response: 'The server sent an unexpected reply. Please try again.',
};

/**
 * describe turns an error into {text, detail}: plain words for its code
 * (overrides win, by code) and the server's own message as detail.
 */
export function describe(err, overrides = {}) {
  const code = (err && err.code) || '';
  let text = overrides[code] || FRIENDLY[code];
  if (!text) text = err && err.status >= 500 ? FRIENDLY.internal : 'That did not work.';
  if (code === 'rate_limited' && err.retryAfter > 0) {
    text += ' Please wait ' + err.retryAfter + ' second' + (err.retryAfter === 1 ? '' : 's') + ' and try again.';
  } else if (code === 'rate_limited') {
    text += ' Please wait a little and try again.';
  }
  let detail = '';
  if (err && err.message && err.status) detail = 'Server said: ' + err.message + (code ? ' (' + code + ')' : '');
  return { text, detail };
}

/** showError puts describe(err) into an alert box. */
export function showError(el, err, overrides) {
  const d = describe(err, overrides);
  showAlert(el, 'error', d.text, d.detail);
}

const dateFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
const shortFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const clockFmt = new Intl.DateTimeFormat(undefined, { timeStyle: 'medium' });
const relFmt = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });

function parse(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? null : d;
}

/** relative says "in 3 hours" or "5 minutes ago". */
export function relative(iso, now = Date.now()) {
  const d = parse(iso);
  if (!d) return '';
  const s = Math.round((d.getTime() - now) / 1000);
  const a = Math.abs(s);
  if (a < 45) return relFmt.format(s, 'second');
  if (a < 45 * 60) return relFmt.format(Math.round(s / 60), 'minute');
  if (a < 36 * 3600) return relFmt.format(Math.round(s / 3600), 'hour');
  return relFmt.format(Math.round(s / 86400), 'day');
}

/**
 * time is a <time> element: the full date and time and then the relative
 * time; short gives hours and minutes only, clock the time with seconds.
 */
export function time(iso, { short = false, clock = false, rel = true } = {}) {
  const d = parse(iso);
  if (!d) return h('span', { class: 'muted', text: iso ? String(iso) : '—' });
  const brief = short || clock;
  const label = clock ? clockFmt.format(d) : short ? shortFmt.format(d) : dateFmt.format(d);
  return h(
    'time',
    { datetime: iso, title: dateFmt.format(d) },
    label,
    rel && !brief ? h('span', { class: 'muted rel', text: ' · ' + relative(iso) }) : null,
  );
}

/** busy disables a button while work runs and says so to assistive tech. */
export function busy(button, on, label) {
  if (!button) return;
  if (on) {
    if (button.getAttribute('aria-busy') !== 'true') button.dataset.label = button.textContent;
    if (label) button.textContent = label;
    button.disabled = true;
    button.setAttribute('aria-busy', 'true');
  } else {
    if (button.dataset.label) button.textContent = button.dataset.label;
    button.disabled = false;
    button.removeAttribute('aria-busy');
  }
}

/** announce speaks a short status through the polite live region. */
export function announce(text) {
  const el = document.getElementById('status');
  if (!el) return;
  el.textContent = '';
  // A fresh text node after a tick makes screen readers repeat equal messages.
  setTimeout(() => {
    el.textContent = text;
  }, 30);
}

/** loading is a placeholder shown while data is fetched. */
export function loading(text = 'Loading…', id) {
  return h('p', { class: 'loading muted', id, 'data-testid': id, text });
}

/** empty is an empty-state message. */
export function empty(text, id) {
  return h('p', { class: 'empty', id, 'data-testid': id, text });
}

/** screenHeader is the screen's h1 (focus target after navigation) and an optional lead line. */
export function screenHeader(title, lead, ...actions) {
  return h(
    'div',
    { class: 'screen-header' },
    h('div', {}, h('h1', { tabindex: '-1', class: 'screen-title', text: title }), lead ? h('p', { class: 'lead', text: lead }) : null),
    actions.length ? h('div', { class: 'screen-actions' }, actions) : null,
  );
}
