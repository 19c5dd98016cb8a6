// router.js — hash routes such as #/signin or #/messages/bob.
//
// A screen is a function (main, args, ctx) that fills main. ctx.signal aborts
// when the user leaves the screen (pass it to API calls and stop touching the
// DOM once it fired); ctx.every(ms, fn) runs fn on an interval until then;
// ctx.onLeave(fn) registers other clean-up.

let current = null; // {ctrl, cleanups}
let resolve = () => null;

/** parse splits "#/messages/bob" into {name: "messages", args: ["bob"]}. */
export function parse(hash) {
  const path = (hash || '').replace(/^#\/?/, '');
  const parts = path.split('/').filter(Boolean).map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  });
  return { name: parts[0] || '', args: parts.slice(1) };
}

/** href builds a hash link from route parts, escaping each one. */
export function href(...parts) {
  return '#/' + parts.map((p) => encodeURIComponent(p)).join('/');
}

/** redirect replaces the current route with another (no history entry for the first). */
export function redirect(...parts) {
  location.replace(href(...parts));
}

/** go navigates to a route; when already there it renders the screen again. */
export function go(...parts) {
  const target = href(...parts);
  if (location.hash === target) render();
  else location.hash = target;
}

function leave() {
  if (!current) return;
  current.ctrl.abort();
  for (const fn of current.cleanups) {
    try {
      fn();
    } catch (e) {
      console.error(e);
    }
  }
  current = null;
}

/** render shows the screen for the current hash. */
export function render() {
  leave();
  const route = parse(location.hash);
  const ctrl = new AbortController();
  const cleanups = [];
  current = { ctrl, cleanups };
  const ctx = {
    route,
    signal: ctrl.signal,
    onLeave: (fn) => cleanups.push(fn),
    every(ms, fn) {
      const id = setInterval(() => {
        if (!ctrl.signal.aborted) fn();
      }, ms);
      cleanups.push(() => clearInterval(id));
    },
  };
  resolve(route, ctx);
}

/** start routes with resolver(route, ctx) on every hash change. */
export function start(resolver) {
  resolve = resolver;
  window.addEventListener('hashchange', render);
  render();
}
