// Shared pieces of the pages: badges, problems, sortable tables, dialogs,
// notifications.
import { ApiProblem } from './api/client';
import { type Child, h, uid } from './lib/dom';
import { type Direction, type SortValue, nextDirection, sortRows } from './lib/sort';

/** A status as a coloured badge (text, never colour alone). */
export function badge(status: string): HTMLSpanElement {
  return h('span', { class: `badge status-${status.replace(/[^a-z_]/gi, '')}` }, status);
}

/** An error shown where the content would be. */
export function problemBox(err: unknown, what?: string): HTMLElement {
  const p = err instanceof ApiProblem ? err : null;
  const title = what ?? (p ? p.problem.title : 'Something went wrong');
  const detail = p ? p.message : err instanceof Error ? err.message : String(err);
  return h(
    'div',
    { class: 'problem', role: 'alert' },
    h('strong', null, title),
    h('p', null, detail),
    p?.fieldErrors.length ? h('ul', null, p.fieldErrors.map((e) => h('li', null, h('code', null, e.pointer), ` ${e.detail}`))) : null,
    p?.problem.request_id ? h('p', { class: 'muted small' }, `Request id ${p.problem.request_id}`) : null,
  );
}

export function loading(text = 'Loading…'): HTMLElement {
  return h('p', { class: 'loading', role: 'status' }, text);
}

export function pageHeader(title: string, ...extra: Child[]): HTMLElement {
  return h('div', { class: 'page-header' }, h('h1', { tabindex: '-1' }, title), ...extra);
}

export function section(title: string, ...children: Child[]): HTMLElement {
  const id = uid('section');
  return h('section', { class: 'card', 'aria-labelledby': id }, h('h2', { id }, title), ...children);
}

/** A definition list from pairs. */
export function facts(pairs: [string, Child][]): HTMLDListElement {
  return h(
    'dl',
    { class: 'facts' },
    pairs.map(([k, v]) => [h('dt', null, k), h('dd', null, v)]),
  );
}

export interface Column<T> {
  key: string;
  label: string;
  value: (row: T) => SortValue;
  render?: (row: T) => Child;
  numeric?: boolean;
  sortable?: boolean;
  /** Direction of the first click (default ascending; descending suits scores and dates). */
  first?: Direction;
}

/**
 * A table whose column headers are buttons that sort it (keyboard
 * operable; `aria-sort` tells assistive technology the order).
 */
export function sortableTable<T>(opts: {
  caption: string;
  columns: Column<T>[];
  rows: T[];
  initial?: { column: string; dir: Direction };
  rowAttrs?: (row: T) => Record<string, string>;
  empty?: string;
}): HTMLElement {
  let sort = opts.initial ?? null;
  const tbody = h('tbody');
  const heads = new Map<string, HTMLTableCellElement>();
  const fill = () => {
    const col = sort ? opts.columns.find((c) => c.key === sort!.column) : undefined;
    const rows = col && sort ? sortRows(opts.rows, col.value, sort.dir) : opts.rows;
    tbody.replaceChildren(
      ...(rows.length === 0
        ? [h('tr', null, h('td', { colspan: opts.columns.length, class: 'muted' }, opts.empty ?? 'Nothing here yet.'))]
        : rows.map((r) =>
            h(
              'tr',
              opts.rowAttrs?.(r) ?? null,
              opts.columns.map((c) => h('td', { class: c.numeric ? 'num' : null }, c.render ? c.render(r) : String(c.value(r) ?? '—'))),
            ),
          )),
    );
    for (const [key, th] of heads) {
      th.setAttribute('aria-sort', sort && sort.column === key ? sort.dir : 'none');
    }
  };
  const thead = h(
    'thead',
    null,
    h(
      'tr',
      null,
      opts.columns.map((c) => {
        if (c.sortable === false) return h('th', { scope: 'col', class: c.numeric ? 'num' : null }, c.label);
        const th = h(
          'th',
          { scope: 'col', class: c.numeric ? 'num' : null },
          h(
            'button',
            {
              type: 'button',
              class: 'sort',
              onclick: () => {
                sort = { column: c.key, dir: nextDirection(sort, c.key, c.first) };
                fill();
              },
            },
            c.label,
            h('span', { class: 'sort-icon', 'aria-hidden': 'true' }),
          ),
        );
        heads.set(c.key, th);
        return th;
      }),
    ),
  );
  fill();
  return h('div', { class: 'table-wrap' }, h('table', null, h('caption', { class: 'sr-only' }, opts.caption), thead, tbody));
}

/** A modal confirmation (native <dialog>: focus is trapped, Escape cancels). */
export function confirmDialog(opts: { title: string; body: Child; confirm: string; danger?: boolean }): Promise<boolean> {
  return new Promise((resolve) => {
    const titleId = uid('dialog-title');
    const dialog = h('dialog', { class: 'dialog', 'aria-labelledby': titleId });
    const close = (ok: boolean) => {
      dialog.close();
      dialog.remove();
      resolve(ok);
    };
    const cancel = h('button', { type: 'button', onclick: () => close(false) }, 'Cancel');
    dialog.append(
      h('h2', { id: titleId }, opts.title),
      h('div', { class: 'dialog-body' }, opts.body),
      h(
        'div',
        { class: 'actions' },
        cancel,
        h('button', { type: 'button', class: opts.danger ? 'danger' : 'primary', onclick: () => close(true) }, opts.confirm),
      ),
    );
    dialog.addEventListener('cancel', (e) => {
      e.preventDefault();
      close(false);
    });
    document.body.append(dialog);
    dialog.showModal();
    cancel.focus();
  });
}

/** A short message in the polite live region. */
export function notify(text: string, kind: 'ok' | 'error' = 'ok'): void {
  const region = document.getElementById('notices');
  if (!region) return;
  const item = h('p', { class: `notice ${kind}` }, text);
  region.append(item);
  setTimeout(() => item.remove(), 6000);
}

/** Chips of medication codes. */
export function chips(codes: readonly string[], cls = ''): HTMLElement {
  if (codes.length === 0) return h('span', { class: 'muted' }, 'none');
  return h(
    'ul',
    { class: 'chips' },
    codes.map((c) => h('li', { class: `chip ${cls}` }, c)),
  );
}
