// Client-side routes (the server answers index.html for them) and the
// page lifecycle: each page gets an AbortSignal that fires when the person
// navigates away, which stops its streams and timers.
import { h } from './lib/dom';
import { isAdmin, session } from './session';
import { loading, problemBox } from './ui';

export interface PageContext {
  main: HTMLElement;
  signal: AbortSignal;
  params: string[];
  query: URLSearchParams;
  navigate: (to: string, opts?: { replace?: boolean }) => void;
}

export interface Route {
  pattern: RegExp;
  title: string;
  /** Needs an admin key (clinical keys see patients only). */
  admin: boolean;
  /** Public: no sign-in needed. */
  public?: boolean;
  render: (ctx: PageContext) => Promise<void> | void;
}

let routes: Route[] = [];
let controller: AbortController | null = null;
let onChange: ((path: string) => void) | null = null;

export function setRoutes(r: Route[], changed: (path: string) => void): void {
  routes = r;
  onChange = changed;
}

export function navigate(to: string, opts: { replace?: boolean } = {}): void {
  if (opts.replace) history.replaceState(null, '', to);
  else history.pushState(null, '', to);
  void render();
}

/** The landing page for the signed-in role. */
export function home(): string {
  return isAdmin() ? '/' : '/patients';
}

export async function render(): Promise<void> {
  const main = document.getElementById('main');
  if (!main) return;
  controller?.abort();
  controller = new AbortController();
  const signal = controller.signal;
  const path = location.pathname;
  const query = new URLSearchParams(location.search);
  let route: Route | undefined;
  let params: string[] = [];
  for (const r of routes) {
    const m = r.pattern.exec(path);
    if (m) {
      route = r;
      params = m.slice(1).map((p) => decodeURIComponent(p));
      break;
    }
  }
  if (!route) {
    document.title = 'Not found · medchange';
    main.replaceChildren(
      h('h1', { tabindex: '-1' }, 'Page not found'),
      h('p', null, 'There is no page at this address. ', h('a', { href: home() }, 'Go to the start page'), '.'),
    );
    onChange?.(path);
    main.querySelector('h1')?.focus();
    return;
  }
  if (!route.public && !session()) {
    navigate(`/signin?next=${encodeURIComponent(path + location.search)}`, { replace: true });
    return;
  }
  if (route.admin && !isAdmin()) {
    navigate('/patients', { replace: true });
    return;
  }
  document.title = `${route.title} · medchange`;
  onChange?.(path);
  main.replaceChildren(loading());
  const ctx: PageContext = { main, signal, params, query, navigate };
  try {
    await route.render(ctx);
  } catch (e) {
    if (signal.aborted) return;
    main.replaceChildren(h('h1', { tabindex: '-1' }, route.title), problemBox(e));
  }
  if (!signal.aborted && !main.contains(document.activeElement)) {
    // Move focus to the new page's heading so screen readers announce it.
    main.querySelector<HTMLElement>('h1')?.focus({ preventScroll: true });
  }
}

/** Internal links navigate without reloading. */
export function interceptLinks(): void {
  document.addEventListener('click', (e) => {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    const a = (e.target as Element | null)?.closest?.('a');
    if (!a || a.target || a.hasAttribute('download')) return;
    const href = a.getAttribute('href');
    if (!href || !href.startsWith('/') || href.startsWith('//')) return;
    if (/^\/(v1|docs|openapi\.json|healthz|readyz|metrics)(\/|$|\?)/.test(href)) return; // server pages
    e.preventDefault();
    if (href !== location.pathname + location.search) navigate(href);
  });
  window.addEventListener('popstate', () => void render());
}
