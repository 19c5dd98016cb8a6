// app.js — starts the UI: the navigation, the route table and the footer.
//
// Routes (hash): #/signin  #/signup  #/profile  #/session  #/sessions
//                #/messages  #/messages/NAME  #/cluster  #/signout
// Signed-out visitors of a signed-in route go to #/signin and come back after.
//
// Test ids (element id, also set as data-testid); the full list with
// per-row data-testid values is in ui/README.md:
//   nav: #nav-toggle #nav-signin #nav-signup #nav-profile #nav-session #nav-sessions
//        #nav-messages #nav-messages-unread #nav-cluster #nav-signout
//   any screen: #notice (one-shot message, e.g. "Your session ended: …")
//   sign up: #signup-username #signup-password #signup-first-name #signup-last-name
//            #signup-email #signup-address #signup-submit #signup-error
//   sign in: #signin-username #signin-password #signin-submit #signin-error
//   profile: #profile-username #profile-first-name #profile-last-name #profile-email
//            #profile-address #profile-save #profile-saved #profile-error
//            #delete-account #delete-account-confirm #delete-account-cancel
//   session: #session-id #session-created #session-expires #session-idle-expires
//            #session-data (rows [data-testid=session-data-row][data-key])
//            #data-key #data-value #data-save #data-error #data-saved
//   sessions: #sessions-list ([data-testid=session-item][data-session-id][data-current])
//             [data-testid=session-revoke] #sessions-revoke-all #sessions-refresh
//   messages: #conversations ([data-testid=conversation-item][data-with] with
//             [data-testid=unread-count]) #new-conversation-username
//             #new-conversation-submit #thread ([data-testid=message]) #thread-empty
//             #message-body #message-send #message-error
//   cluster: #cluster-node #cluster-members ([data-testid=cluster-region][data-region],
//            [data-testid=cluster-member][data-name][data-status]) #served-by
//            ([data-testid=served-by-row][data-node]) #served-by-background
//   footer: #whoami #served-by-last #live-status

import * as api from './api.js';
import * as auth from './auth.js';
import * as credentials from './credentials.js';
import * as live from './live.js';
import * as router from './router.js';
import * as unread from './unread.js';
import * as account from './account.js';
import * as sessions from './sessions.js';
import * as messages from './messages.js';
import * as cluster from './cluster.js';
import { h, replace, showAlert, alertBox } from './view.js';

const ROUTES = {
  signin: { screen: account.signin, title: 'Sign in' },
  signup: { screen: account.signup, title: 'Sign up' },
  profile: { screen: account.profile, title: 'Profile', auth: true },
  session: { screen: sessions.current, title: 'This session', auth: true },
  sessions: { screen: sessions.list, title: 'Active sessions', auth: true },
  messages: { screen: messages.screen, title: 'Messages', auth: true },
  cluster: { screen: cluster.screen, title: 'Cluster', auth: true },
};

const SIGNED_IN_NAV = [
  ['profile', 'Profile'],
  ['session', 'This session'],
  ['sessions', 'Sessions'],
  ['messages', 'Messages'],
  ['cluster', 'Cluster'],
];
const SIGNED_OUT_NAV = [
  ['signin', 'Sign in'],
  ['signup', 'Sign up'],
];

const nav = document.getElementById('nav');
const toggle = document.getElementById('nav-toggle');
const main = document.getElementById('main');

function renderNav() {
  const route = router.parse(location.hash).name;
  const items = auth.signedIn() ? SIGNED_IN_NAV : SIGNED_OUT_NAV;
  const links = items.map(([name, label]) =>
    h(
      'a',
      { href: '#/' + name, id: 'nav-' + name, 'data-testid': 'nav-' + name, class: 'nav-link', 'aria-current': route === name ? 'page' : null },
      label,
      name === 'messages' ? h('span', { id: 'nav-messages-unread', 'data-testid': 'nav-messages-unread', class: 'badge badge-count', hidden: true }) : null,
    ),
  );
  if (auth.signedIn()) {
    const out = h('button', { type: 'button', id: 'nav-signout', 'data-testid': 'nav-signout', class: 'nav-link nav-button', text: 'Sign out' });
    out.addEventListener('click', () => {
      out.disabled = true;
      auth.signOut();
    });
    links.push(out);
  }
  replace(nav, links);
  renderUnread();
  const who = document.getElementById('whoami');
  who.textContent = auth.signedIn() ? 'Signed in as ' + credentials.username() : 'Not signed in';
}

function renderUnread() {
  const badge = document.getElementById('nav-messages-unread');
  if (!badge) return;
  const n = auth.signedIn() ? live.totalUnread() : 0;
  badge.textContent = String(n);
  badge.setAttribute('aria-label', n + ' unread');
  badge.hidden = n === 0;
}

function renderLastServed() {
  const el = document.getElementById('served-by-last');
  const log = api.servedBy();
  const last = log[log.length - 1];
  el.textContent = last && last.node ? 'Last reply from ' + last.node : '';
}

function renderLiveState(state, info) {
  const el = document.getElementById('live-status');
  if (!el) return;
  const text = {
    open: 'Live',
    connecting: 'Connecting…',
    waiting: 'Reconnecting' + (info && info.retryInMs ? ' in ' + Math.ceil(info.retryInMs / 1000) + ' s' : '…'),
    closed: '',
  }[state];
  el.textContent = text || '';
  el.dataset.state = state;
  el.hidden = !text;
}

function setNavOpen(open) {
  document.body.classList.toggle('nav-open', open);
  toggle.setAttribute('aria-expanded', String(open));
}

function resolve(route, ctx) {
  setNavOpen(false);
  if (route.name === 'signout') {
    if (auth.signedIn()) auth.signOut();
    else router.go('signin');
    return;
  }
  if (!route.name) {
    router.go(auth.signedIn() ? 'profile' : 'signin');
    return;
  }
  const r = ROUTES[route.name];
  if (!r) {
    document.title = 'Page not found · sessiond';
    renderNav(); // no link is the current page any more
    replace(main, h('div', { class: 'card' }, h('h1', { tabindex: '-1', class: 'screen-title', text: 'Page not found' }), h('p', {}, h('a', { href: '#/', text: 'Go to the start page' }))));
    focusTitle();
    return;
  }
  if (r.auth && !auth.signedIn()) {
    auth.rememberReturn(location.hash);
    router.go('signin');
    return;
  }
  document.title = r.title + ' · sessiond';
  renderNav();
  r.screen(main, route.args, ctx);
  const notice = credentials.takeNotice();
  if (notice) {
    const box = alertBox('notice');
    showAlert(box, notice.kind, notice.text);
    box.setAttribute('role', notice.kind === 'error' ? 'alert' : 'status');
    const header = main.querySelector('.screen-header');
    if (header) header.after(box);
    else main.prepend(box);
  }
  if (!main.contains(document.activeElement) || document.activeElement === main) focusTitle();
}

function focusTitle() {
  const t = main.querySelector('h1');
  (t || main).focus({ preventScroll: true });
  window.scrollTo(0, 0);
}

function boot() {
  const footer = document.querySelector('.footer');
  footer.append(h('span', { id: 'live-status', 'data-testid': 'live-status', class: 'live-status', hidden: true }));

  api.onUnauthorized(auth.sessionEnded);
  auth.onChange(renderNav);
  api.onServed(renderLastServed);
  live.on('conversations', renderUnread);
  live.on('state', renderLiveState);
  unread.onChange(renderUnread);

  // The skip link must not change the hash: that is the router's.
  document.getElementById('skip-link').addEventListener('click', (e) => {
    e.preventDefault();
    focusTitle();
  });
  toggle.addEventListener('click', () => setNavOpen(!document.body.classList.contains('nav-open')));
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && document.body.classList.contains('nav-open')) {
      setNavOpen(false);
      toggle.focus();
    }
  });

  renderNav();
  renderLastServed();
  if (auth.signedIn()) live.start();
  router.start(resolve);
}

boot();
