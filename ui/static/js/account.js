// account.js — the sign-up, sign-in and profile screens.

import * as api from './api.js';
import * as auth from './auth.js';
import * as credentials from './credentials.js';
import * as router from './router.js';
import { h, replace, field, alertBox, showAlert, hideAlert, showError, busy, announce, loading, screenHeader, time } from './view.js';

const PROFILE_FIELDS = [
  { key: 'first_name', label: 'First name', autocomplete: 'given-name', max: 100 },
  { key: 'last_name', label: 'Last name', autocomplete: 'family-name', max: 100 },
  { key: 'email', label: 'Email', autocomplete: 'email', type: 'email', max: 254 },
  { key: 'address', label: 'Address', autocomplete: 'street-address', max: 500 },
];

let prefillUsername = '';

function input(id, props = {}) {
  return h('input', { id, name: id, type: 'text', 'data-testid': id, ...props });
}

function usernameInput(id) {
  return input(id, { autocomplete: 'username', autocapitalize: 'none', spellcheck: 'false', required: true, maxlength: 32 });
}

function missing(form, ids) {
  return ids.filter((id) => !form.querySelector('#' + id).value.trim()).map((id) => form.querySelector('label[for="' + id + '"]').textContent);
}

/** signup is #/signup: create an account, then sign in. */
export function signup(main) {
  const err = alertBox('signup-error');
  const ids = ['signup-username', 'signup-password', ...PROFILE_FIELDS.map((f) => 'signup-' + f.key.replace('_', '-'))];
  const submit = h('button', { type: 'submit', id: 'signup-submit', 'data-testid': 'signup-submit', class: 'btn btn-primary', text: 'Create account' });
  const form = h(
    'form',
    { id: 'signup-form', class: 'card form', novalidate: true },
    err,
    field('Username', usernameInput('signup-username'), '3–32 characters: lowercase letters, digits, _ . -'),
    field('Password', input('signup-password', { type: 'password', autocomplete: 'new-password', required: true, maxlength: 256 }), 'At least 8 characters.'),
    h(
      'div',
      { class: 'grid-2' },
      PROFILE_FIELDS.slice(0, 2).map((f) =>
        field(f.label, input('signup-' + f.key.replace('_', '-'), { autocomplete: f.autocomplete, required: true, maxlength: f.max })),
      ),
    ),
    PROFILE_FIELDS.slice(2).map((f) =>
      field(f.label, input('signup-' + f.key.replace('_', '-'), { type: f.type || 'text', autocomplete: f.autocomplete, required: true, maxlength: f.max })),
    ),
    h('div', { class: 'actions' }, submit, h('a', { href: '#/signin', id: 'signup-to-signin', text: 'I already have an account' })),
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    hideAlert(err);
    const val = (id) => form.querySelector('#' + id).value;
    const gaps = missing(form, ids);
    if (gaps.length) {
      showAlert(err, 'error', 'Please fill in: ' + gaps.join(', ') + '.');
      form.querySelector('#' + ids.find((id) => !val(id).trim())).focus();
      return;
    }
    const username = val('signup-username').trim();
    const profile = {};
    for (const f of PROFILE_FIELDS) profile[f.key] = val('signup-' + f.key.replace('_', '-')).trim();
    busy(submit, true, 'Creating…');
    try {
      await api.post('v1/users', { username, password: val('signup-password'), profile }, { auth: false });
      prefillUsername = username;
      credentials.setNotice('Account created for ' + username + '. Sign in to continue.', 'success');
      router.go('signin');
    } catch (ex) {
      busy(submit, false);
      showError(err, ex, { invalid_argument: 'Please check the form.' });
    }
  });
  replace(main, screenHeader('Create your account', 'One account, every region. Your sessions follow you wherever you sign in.'), form);
  form.querySelector('#signup-username').focus();
}

/** signin is #/signin. */
export function signin(main) {
  const err = alertBox('signin-error');
  const submit = h('button', { type: 'submit', id: 'signin-submit', 'data-testid': 'signin-submit', class: 'btn btn-primary', text: 'Sign in' });
  const user = usernameInput('signin-username');
  const pass = input('signin-password', { type: 'password', autocomplete: 'current-password', required: true, maxlength: 256 });
  if (prefillUsername) user.value = prefillUsername;
  prefillUsername = '';
  const form = h(
    'form',
    { id: 'signin-form', class: 'card form narrow', novalidate: true },
    err,
    field('Username', user),
    field('Password', pass),
    h('div', { class: 'actions' }, submit, h('a', { href: '#/signup', id: 'signin-to-signup', text: 'Create an account' })),
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    hideAlert(err);
    const username = user.value.trim();
    if (!username || !pass.value) {
      showAlert(err, 'error', 'Please enter your username and password.');
      (username ? pass : user).focus();
      return;
    }
    busy(submit, true, 'Signing in…');
    try {
      await auth.signIn(username, pass.value);
    } catch (ex) {
      busy(submit, false);
      showError(err, ex, {
        unauthorized: 'Wrong username or password.',
        not_found: 'Wrong username or password.',
        rate_limited: 'Too many sign-in attempts.',
      });
      pass.select();
    }
  });
  const lead = auth.signedIn() ? 'This tab is already signed in; signing in again starts a new session.' : 'Welcome back.';
  replace(main, screenHeader('Sign in', lead), form);
  (user.value ? pass : user).focus();
}

/** profile is #/profile: view and edit the four fields; delete the account. */
export function profile(main, _args, ctx) {
  replace(main, screenHeader('Your profile'), loading('Loading your profile…', 'profile-loading'));
  const err = alertBox('profile-error');
  const saved = alertBox('profile-saved');
  saved.setAttribute('role', 'status');
  let baseline = {};

  const inputs = {};
  for (const f of PROFILE_FIELDS) {
    const id = 'profile-' + f.key.replace('_', '-');
    inputs[f.key] = input(id, { type: f.type || 'text', autocomplete: f.autocomplete, maxlength: f.max });
  }
  const submit = h('button', { type: 'submit', id: 'profile-save', 'data-testid': 'profile-save', class: 'btn btn-primary', text: 'Save changes' });
  const who = h('dl', { class: 'facts', id: 'profile-facts' });
  const form = h(
    'form',
    { id: 'profile-form', class: 'card form', novalidate: true },
    h('h2', { text: 'Details' }),
    who,
    err,
    saved,
    h('div', { class: 'grid-2' }, field('First name', inputs.first_name), field('Last name', inputs.last_name)),
    field('Email', inputs.email),
    field('Address', inputs.address),
    h('div', { class: 'actions' }, submit),
  );

  const show = (user) => {
    const p = (user && user.profile) || {};
    baseline = {};
    for (const f of PROFILE_FIELDS) {
      baseline[f.key] = p[f.key] || '';
      inputs[f.key].value = baseline[f.key];
    }
    replace(
      who,
      h('dt', { text: 'Username' }),
      h('dd', { id: 'profile-username', 'data-testid': 'profile-username', text: user.username || '' }),
      h('dt', { text: 'Member since' }),
      h('dd', {}, time(user.created_at, { rel: false })),
    );
  };

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    hideAlert(err);
    hideAlert(saved);
    // Send only what changed: fields merge last-writer-wins one by one, so an
    // unchanged field must not overwrite a newer edit made elsewhere.
    const changes = {};
    for (const f of PROFILE_FIELDS) {
      const v = inputs[f.key].value.trim();
      if (v !== baseline[f.key]) changes[f.key] = v;
    }
    if (!Object.keys(changes).length) {
      showAlert(saved, 'info', 'Nothing to save: no field was changed.');
      return;
    }
    busy(submit, true, 'Saving…');
    try {
      const r = await api.patch('v1/users/me', { profile: changes }, { signal: ctx.signal });
      if (ctx.signal.aborted) return;
      show(r.user);
      showAlert(saved, 'success', 'Profile saved.');
      announce('Profile saved.');
    } catch (ex) {
      if (ctx.signal.aborted) return;
      showError(err, ex);
    } finally {
      busy(submit, false);
    }
  });

  const portability = exportCard(ctx);
  const danger = deleteAccountCard(ctx);

  api
    .get('v1/users/me', { signal: ctx.signal })
    .then((r) => {
      if (ctx.signal.aborted) return;
      show(r.user);
      const hadFocus = main.contains(document.activeElement);
      replace(main, screenHeader('Your profile', 'Changes reach every region; edits to different fields made at the same time both survive.'), form, portability, danger);
      if (hadFocus || document.activeElement === document.body) main.querySelector('h1').focus({ preventScroll: true });
    })
    .catch((ex) => {
      if (ctx.signal.aborted) return;
      const box = alertBox('profile-error');
      replace(main, screenHeader('Your profile'), box);
      showError(box, ex);
    });
}

/**
 * exportCard downloads the account's data — profile, sessions and every
 * message — as one JSON file (GET /v1/users/me/export).
 */
function exportCard(ctx) {
  const err = alertBox('export-error');
  const done = alertBox('export-done');
  done.setAttribute('role', 'status');
  const start = h('button', { type: 'button', id: 'export-account', 'data-testid': 'export-account', class: 'btn', text: 'Download my data' });
  start.addEventListener('click', async () => {
    hideAlert(err);
    hideAlert(done);
    busy(start, true, 'Preparing…');
    try {
      const data = await api.get('v1/users/me/export', { signal: ctx.signal });
      if (ctx.signal.aborted) return;
      const name = 'sessiond-export-' + ((data && data.user && data.user.username) || 'account') + '.json';
      const url = URL.createObjectURL(new Blob([JSON.stringify(data, null, 2)], { type: 'application/json' }));
      const a = h('a', { href: url, download: name, hidden: true, 'data-testid': 'export-link' });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      const n = ((data && data.conversations) || []).reduce((k, c) => k + ((c.messages && c.messages.length) || 0), 0);
      const plural = (k, one) => k + ' ' + one + (k === 1 ? '' : 's');
      const text = 'Downloaded ' + name + ': your profile, ' + plural(((data && data.sessions) || []).length, 'session') + ' and ' + plural(n, 'message') + '.';
      showAlert(done, 'success', text);
      announce(text);
    } catch (ex) {
      if (ctx.signal.aborted) return;
      showError(err, ex, { rate_limited: 'An export of your account is already running; try again in a moment.' });
    } finally {
      busy(start, false);
    }
  });
  return h(
    'section',
    { class: 'card', 'aria-labelledby': 'export-title' },
    h('h2', { id: 'export-title', text: 'Your data' }),
    h('p', { class: 'muted', text: 'Download everything this service keeps about you: your profile, your sessions and your messages, as JSON.' }),
    err,
    done,
    start,
  );
}

function deleteAccountCard(ctx) {
  const err = alertBox('delete-account-error');
  const start = h('button', { type: 'button', id: 'delete-account', 'data-testid': 'delete-account', class: 'btn btn-danger-outline', text: 'Delete account…' });
  const confirm = h('button', { type: 'button', id: 'delete-account-confirm', 'data-testid': 'delete-account-confirm', class: 'btn btn-danger', text: 'Yes, delete my account' });
  const cancel = h('button', { type: 'button', id: 'delete-account-cancel', 'data-testid': 'delete-account-cancel', class: 'btn', text: 'Cancel' });
  const panel = h(
    'div',
    { id: 'delete-account-panel', class: 'confirm', hidden: true, role: 'group', 'aria-labelledby': 'delete-account-question' },
    h('p', { id: 'delete-account-question', class: 'confirm-question', text: 'Delete your account for good?' }),
    h('p', { text: 'This erases your profile, all your sessions and all your messages, in every region. It cannot be undone.' }),
    h('div', { class: 'actions' }, confirm, cancel),
  );
  start.addEventListener('click', () => {
    panel.hidden = false;
    start.hidden = true;
    cancel.focus();
  });
  cancel.addEventListener('click', () => {
    panel.hidden = true;
    start.hidden = false;
    hideAlert(err);
    start.focus();
  });
  confirm.addEventListener('click', async () => {
    hideAlert(err);
    busy(confirm, true, 'Deleting…');
    cancel.disabled = true;
    try {
      await api.del('v1/users/me', { signal: ctx.signal });
      auth.forgetDevice(credentials.username(), true);
      auth.endSession('Your account and all its data have been deleted.', 'success');
    } catch (ex) {
      if (ctx.signal.aborted) return;
      busy(confirm, false);
      cancel.disabled = false;
      showError(err, ex);
    }
  });
  return h('section', { class: 'card danger-zone', 'aria-labelledby': 'danger-title' }, h('h2', { id: 'danger-title', text: 'Delete account' }), err, start, panel);
}
