// cluster.js — the cluster screen: members grouped by region with status and
// replication lag, and which node served each of this tab's recent requests
// (from the X-Served-By header that api.js records).

import * as api from './api.js';
import { h, replace, alertBox, hideAlert, showError, busy, loading, empty, screenHeader, time } from './view.js';

const REFRESH_MS = 5000;
const SHOWN_REQUESTS = 50;
const STATUS_ORDER = { alive: 0, suspect: 1, failed: 2, left: 3, removed: 4 };

function lagText(ms) {
  if (ms === undefined || ms === null || !Number.isFinite(Number(ms))) return '—';
  const n = Number(ms);
  if (n < 1000) return Math.round(n) + ' ms';
  if (n < 60000) return (n / 1000).toFixed(1) + ' s';
  return Math.round(n / 60000) + ' min';
}

/** screen is #/cluster. */
export function screen(main, _args, ctx) {
  const err = alertBox('cluster-error');
  const refresh = h('button', { type: 'button', id: 'cluster-refresh', 'data-testid': 'cluster-refresh', class: 'btn', text: 'Refresh' });
  const nodeLine = h('p', { id: 'cluster-node', 'data-testid': 'cluster-node', class: 'lead' }, 'Asking the cluster…');
  const members = h('div', { id: 'cluster-members', 'data-testid': 'cluster-members', class: 'regions' }, loading('Loading members…', 'cluster-loading'));
  const updated = h('p', { id: 'cluster-updated', class: 'muted small' });

  const render = (r) => {
    const node = (r && r.node) || {};
    const list = (r && Array.isArray(r.members) ? r.members : []).slice();
    replace(
      nodeLine,
      'This page is talking to ',
      h('strong', { id: 'cluster-node-name', text: node.name || 'an unknown node' }),
      node.region ? [' in region ', h('strong', { id: 'cluster-node-region', text: node.region })] : null,
      '.',
    );
    if (!list.length) {
      replace(members, empty('No members reported.', 'cluster-members-empty'));
      return;
    }
    const regions = new Map();
    for (const m of list) {
      const region = m.region || 'unknown';
      if (!regions.has(region)) regions.set(region, []);
      regions.get(region).push(m);
    }
    const names = [...regions.keys()].sort((a, b) => (a === node.region ? -1 : b === node.region ? 1 : a.localeCompare(b)));
    replace(
      members,
      names.map((region) => {
        const ms = regions.get(region).sort((a, b) => (STATUS_ORDER[a.status] ?? 9) - (STATUS_ORDER[b.status] ?? 9) || String(a.name).localeCompare(String(b.name)));
        const alive = ms.filter((m) => m.status === 'alive').length;
        const titleId = 'region-' + region.replace(/[^a-zA-Z0-9_-]/g, '_');
        return h(
          'section',
          { class: 'region card', 'data-testid': 'cluster-region', data: { region }, 'aria-labelledby': titleId },
          h('div', { class: 'region-head' }, h('h2', { id: titleId, text: region }), h('span', { class: 'muted', text: alive + ' of ' + ms.length + ' alive' })),
          h(
            'div',
            { class: 'table-wrap' },
            h(
              'table',
              { class: 'table' },
              h('caption', { class: 'sr-only', text: 'Members in region ' + region }),
              h(
                'thead',
                {},
                h(
                  'tr',
                  {},
                  h('th', { scope: 'col', text: 'Node' }),
                  h('th', { scope: 'col', text: 'Status' }),
                  h('th', { scope: 'col', class: 'col-optional', text: 'Address' }),
                  h('th', { scope: 'col', text: 'Replication lag' }),
                ),
              ),
              h(
                'tbody',
                {},
                ms.map((m) =>
                  h(
                    'tr',
                    { 'data-testid': 'cluster-member', data: { name: m.name || '', status: m.status || '' }, class: m.name === node.name ? 'row-self' : null },
                    h('th', { scope: 'row' }, h('span', { text: m.name || m.id || '?' }), m.name === node.name ? h('span', { class: 'badge badge-accent', text: 'this node' }) : null),
                    h('td', {}, h('span', { class: 'status status-' + (m.status || 'unknown'), 'data-testid': 'member-status', text: m.status || 'unknown' })),
                    h('td', { class: 'col-optional' }, h('code', { class: 'addr', text: m.addr || '—' })),
                    h('td', { 'data-testid': 'member-lag' }, m.name === node.name ? '—' : lagText(m.lag_ms)),
                  ),
                ),
              ),
            ),
          ),
        );
      }),
    );
  };

  const load = async (background) => {
    if (!background) busy(refresh, true);
    try {
      const r = await api.get('v1/cluster', { signal: ctx.signal, background });
      if (ctx.signal.aborted) return;
      hideAlert(err);
      render(r);
      updated.textContent = 'Updated ' + new Date().toLocaleTimeString() + '; refreshes every ' + REFRESH_MS / 1000 + ' s.';
    } catch (ex) {
      if (ctx.signal.aborted) return;
      showError(err, ex);
    } finally {
      if (!background) busy(refresh, false);
    }
  };
  refresh.addEventListener('click', () => load(false));
  ctx.every(REFRESH_MS, () => {
    if (document.visibilityState !== 'hidden') load(true);
  });

  replace(
    main,
    screenHeader('Cluster', null, refresh),
    nodeLine,
    err,
    members,
    updated,
    servedByCard(ctx),
  );
  load(false);
}

function servedByCard(ctx) {
  const includeBg = h('input', { type: 'checkbox', id: 'served-by-background', 'data-testid': 'served-by-background' });
  const clear = h('button', { type: 'button', id: 'served-by-clear', 'data-testid': 'served-by-clear', class: 'btn btn-small', text: 'Clear' });
  const summary = h('p', { id: 'served-by-summary', 'data-testid': 'served-by-summary', class: 'chips' });
  const body = h('tbody', { id: 'served-by-rows' });
  const wrap = h('div', { class: 'table-wrap' });
  const table = h(
    'table',
    { class: 'table', id: 'served-by', 'data-testid': 'served-by' },
    h('caption', { class: 'sr-only', text: 'Which node served each recent request' }),
    // The time is the column a phone can spare (col-optional hides it on narrow screens).
    h('thead', {}, h('tr', {}, ['Time', 'Served by', 'Request', 'Status'].map((t) => h('th', { scope: 'col', class: t === 'Time' ? 'col-optional' : null, text: t })))),
    body,
  );

  const render = () => {
    const all = api.servedBy().filter((e) => includeBg.checked || !e.background);
    const rows = all.slice(-SHOWN_REQUESTS).reverse();
    const counts = new Map();
    for (const e of all) counts.set(e.node || '(none)', (counts.get(e.node || '(none)') || 0) + 1);
    replace(
      summary,
      [...counts.entries()].sort((a, b) => b[1] - a[1]).map(([n, c]) => h('span', { class: 'chip', data: { node: n } }, h('strong', { text: n }), ' ', String(c))),
    );
    if (!rows.length) {
      replace(wrap, empty('No requests recorded yet.', 'served-by-empty'));
      return;
    }
    replace(
      body,
      rows.map((e) =>
        h(
          'tr',
          { 'data-testid': 'served-by-row', data: { node: e.node || '' } },
          h('td', { class: 'nowrap col-optional' }, time(e.at, { clock: true })),
          h('td', { class: 'served-node', 'data-testid': 'served-by-node', text: e.node || '—' }),
          h('td', {}, h('code', { text: e.method + ' ' + e.path }), e.background ? h('span', { class: 'tag', text: 'background' }) : null),
          h('td', { class: e.status >= 400 ? 'status-bad' : null, text: String(e.status) }),
        ),
      ),
    );
    if (!table.isConnected) replace(wrap, table);
  };

  includeBg.addEventListener('change', render);
  clear.addEventListener('click', () => {
    api.clearServedBy();
    render();
  });
  ctx.onLeave(api.onServed(render));
  render();

  return h(
    'section',
    { class: 'card', 'aria-labelledby': 'served-by-title' },
    h('div', { class: 'region-head' }, h('h2', { id: 'served-by-title', text: 'Your recent requests' }), clear),
    h('p', { class: 'muted', text: 'Each response names the node that served it (X-Served-By). Behind a load balancer, consecutive requests may reach different nodes.' }),
    h('div', { class: 'check' }, includeBg, h('label', { for: 'served-by-background', text: 'Include background checks' })),
    summary,
    wrap,
  );
}
