// Models: versions per kind with their metrics (sortable), one version in
// detail, two side by side; activate and retire with confirmation.
import { type ModelVersion, api, unwrap } from '../api/client';
import { lineChart } from '../charts/chart';
import { type Child, h, mount } from '../lib/dom';
import { dateTime, num, shortId, signed } from '../lib/format';
import { KEY_METRICS, type MetricTable, direction, history, historySeries, splitMetrics, verdict } from '../lib/metrics';
import type { PageContext } from '../router';
import { type Column, badge, confirmDialog, facts, notify, pageHeader, problemBox, section, sortableTable } from '../ui';
import { allPages } from './util';

async function allVersions(signal: AbortSignal): Promise<ModelVersion[]> {
  const { items } = await allPages((cursor) =>
    unwrap(api.GET('/v1/models', { params: { query: { limit: 200, ...(cursor ? { cursor } : {}) } }, signal })),
  );
  return items;
}

/** Asks, then activates or retires; true when it happened. */
async function act(v: ModelVersion, action: 'activate' | 'retire'): Promise<boolean> {
  const ok = await confirmDialog(
    action === 'activate'
      ? {
          title: `Activate ${v.kind} version ${v.version}?`,
          body: h('p', null, `Every artifact's checksum is verified, then this version replaces the served ${v.kind} version at once, on every replica, for all new predictions.`),
          confirm: 'Activate',
        }
      : {
          title: `Retire ${v.kind} version ${v.version}?`,
          body: h('p', null, 'A retired version is no longer offered for use; its artifacts and metrics stay for the record, and it can still be activated later.'),
          confirm: 'Retire',
          danger: true,
        },
  );
  if (!ok) return false;
  try {
    const path = { params: { path: { model_id: v.id } } };
    if (action === 'activate') await unwrap(api.POST('/v1/models/{model_id}/activate', path));
    else await unwrap(api.POST('/v1/models/{model_id}/retire', path));
    notify(action === 'activate' ? `${v.kind} version ${v.version} is now active.` : `${v.kind} version ${v.version} was retired.`);
    return true;
  } catch (e) {
    notify(`Could not ${action} ${v.version}: ${e instanceof Error ? e.message : String(e)}`, 'error');
    return false;
  }
}

function actions(v: ModelVersion, done: () => void): Child {
  const out: HTMLElement[] = [];
  // What the registry allows: ready and retired versions can be activated,
  // any version that is not served (and not retired yet) can be retired.
  if (v.status === 'ready' || v.status === 'retired') {
    out.push(h('button', { type: 'button', class: 'small primary', 'aria-label': `Activate ${v.version}`, onclick: async () => (await act(v, 'activate')) && done() }, 'Activate'));
  }
  if (v.status !== 'active' && v.status !== 'retired') {
    out.push(h('button', { type: 'button', class: 'small', 'aria-label': `Retire ${v.version}`, onclick: async () => (await act(v, 'retire')) && done() }, 'Retire'));
  }
  return out.length ? h('span', { class: 'row-actions' }, out) : h('span', { class: 'muted' }, '—');
}

function metricColumns(kindVersions: ModelVersion[]): Column<ModelVersion>[] {
  // The table's four: the paper's headline metrics (the detail page has them all).
  const wanted = ['jaccard', 'prauc', 'f1', 'ddi_rate'];
  const present = KEY_METRICS.filter((m) => wanted.includes(m.key) && kindVersions.some((v) => splitMetrics(v.metrics, 'val')?.[m.key] !== undefined));
  return present.map((m) => ({
    key: `val.${m.key}`,
    label: `${m.label} (val)`,
    numeric: true,
    first: m.better === 'lower' ? 'ascending' : 'descending',
    value: (v: ModelVersion) => splitMetrics(v.metrics, 'val')?.[m.key] ?? null,
    render: (v: ModelVersion) => num(splitMetrics(v.metrics, 'val')?.[m.key]),
  }));
}

export async function modelsPage(ctx: PageContext): Promise<void> {
  const versions = await allVersions(ctx.signal);
  const kinds = [...new Set(versions.map((v) => v.kind))].sort();
  const selected = new Set<string>();
  const compareBtn = h('button', { type: 'button', class: 'primary', disabled: true }, 'Compare selected');
  const compareHint = h('span', { class: 'muted small', id: 'compare-hint', role: 'status' }, 'Select two versions to compare them.');
  const updateCompare = () => {
    compareBtn.disabled = selected.size !== 2;
    compareHint.textContent = selected.size === 2 ? 'Ready to compare.' : `Select two versions to compare them (${selected.size} selected).`;
  };
  compareBtn.addEventListener('click', () => {
    const [a, b] = [...selected];
    ctx.navigate(`/models/compare?a=${a}&b=${b}`);
  });
  const reload = () => void modelsPage(ctx).catch((e) => mount(ctx.main, problemBox(e)));
  const tables = kinds.map((kind) => {
    const rows = versions.filter((v) => v.kind === kind);
    const columns: Column<ModelVersion>[] = [
      {
        key: 'select',
        label: 'Compare',
        sortable: false,
        value: () => null,
        render: (v) =>
          h('input', {
            type: 'checkbox',
            'aria-label': `Select ${v.version} for comparison`,
            checked: selected.has(v.id),
            onchange: (e: Event) => {
              const box = e.target as HTMLInputElement;
              if (box.checked) selected.add(v.id);
              else selected.delete(v.id);
              updateCompare();
            },
          }),
      },
      { key: 'version', label: 'Version', value: (v) => v.version, render: (v) => h('a', { href: `/models/${v.id}` }, v.version) },
      { key: 'status', label: 'Status', value: (v) => v.status, render: (v) => badge(v.status) },
      { key: 'created', label: 'Created', value: (v) => v.created_at, render: (v) => dateTime(v.created_at), first: 'descending' },
      { key: 'source', label: 'Source', value: (v) => v.source },
      ...metricColumns(rows),
      { key: 'actions', label: 'Actions', sortable: false, value: () => null, render: (v) => actions(v, reload) },
    ];
    return section(
      `${kind} (${rows.length})`,
      sortableTable({
        caption: `${kind} versions`,
        columns,
        rows,
        initial: { column: 'created', dir: 'descending' },
        rowAttrs: (v) => ({ 'data-version': v.version, 'data-status': v.status }),
      }),
    );
  });
  mount(ctx.main, 
    pageHeader('Models', h('div', { class: 'header-extra' }, compareHint, compareBtn)),
    versions.length === 0 ? h('p', null, 'No model versions yet. ', h('a', { href: '/training' }, 'Train one'), '.') : null,
    ...tables,
  );
}

function metricTable(title: string, t: MetricTable | null): HTMLElement {
  if (!t) return h('p', { class: 'muted' }, `No ${title.toLowerCase()} reported.`);
  const known = KEY_METRICS.filter((m) => t[m.key] !== undefined);
  const others = Object.keys(t).filter((k) => !KEY_METRICS.some((m) => m.key === k));
  return h(
    'table',
    { class: 'mini' },
    h('caption', null, title),
    h('tbody', null, [
      ...known.map((m) => h('tr', null, h('th', { scope: 'row' }, m.label), h('td', { class: 'num' }, num(t[m.key])))),
      ...others.map((k) => h('tr', null, h('th', { scope: 'row' }, k), h('td', { class: 'num' }, num(t[k])))),
    ]),
  );
}

function curves(title: string, versions: { label: string; metrics: unknown }[]): HTMLElement[] {
  const perVersion = versions.map((v) => ({ label: v.label, series: historySeries(history(v.metrics)) }));
  const names = [...new Set(perVersion.flatMap((v) => [...v.series.keys()]))];
  return names.map((name) =>
    lineChart({
      title: `${title}: ${name}`,
      xLabel: 'Epoch',
      yLabel: name,
      series: perVersion.map((v) => ({ name: versions.length > 1 ? v.label : name, points: v.series.get(name) ?? [] })),
    }),
  );
}

export async function modelPage(ctx: PageContext): Promise<void> {
  const id = ctx.params[0]!;
  const v = await unwrap(api.GET('/v1/models/{model_id}', { params: { path: { model_id: id } }, signal: ctx.signal }));
  const reload = () => void modelPage(ctx).catch((e) => mount(ctx.main, problemBox(e)));
  const charts = curves('Training history', [{ label: v.version, metrics: v.metrics }]);
  mount(ctx.main, 
    pageHeader(`${v.kind} ${v.version}`, h('div', { class: 'header-extra' }, badge(v.status), actions(v, reload))),
    h(
      'div',
      { class: 'grid-2' },
      section(
        'Version',
        facts([
          ['Id', h('code', null, v.id)],
          ['Source', v.source],
          ['Created', dateTime(v.created_at)],
          ['Activated', dateTime(v.activated_at)],
          ['Retired', dateTime(v.retired_at)],
          ['Validation score', num(v.val_score)],
          ['Trained by', v.job_id ? h('a', { href: `/training/jobs/${v.job_id}` }, `job ${shortId(v.job_id)}`) : '—'],
          ['Parent', v.parent_id ? h('a', { href: `/models/${v.parent_id}` }, shortId(v.parent_id)) : '—'],
          ['Data', v.data_snapshot ? `${v.data_snapshot.patients} patients, ${v.data_snapshot.visits} visits (as of ${dateTime(v.data_snapshot.as_of)})` : '—'],
          ['Vocabulary', h('code', null, JSON.stringify(v.vocab))],
        ]),
      ),
      section('Metrics', h('div', { class: 'metric-tables' }, metricTable('Validation', splitMetrics(v.metrics, 'val')), metricTable('Test', splitMetrics(v.metrics, 'test')))),
    ),
    charts.length ? section('Training history', h('div', { class: 'grid-2' }, charts)) : null,
    section(
      'Artifacts',
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          null,
          h('caption', { class: 'sr-only' }, 'Artifact files and their SHA-256'),
          h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'file'), h('th', { scope: 'col' }, 'sha256'))),
          h('tbody', null, Object.entries(v.files).map(([f, sha]) => h('tr', null, h('td', null, f), h('td', null, h('code', { class: 'hash' }, sha))))),
        ),
      ),
      h('p', { class: 'muted small' }, `Folder: ${v.artifact_path}`),
    ),
    section('Configuration', h('pre', { class: 'json' }, JSON.stringify(v.config, null, 2))),
    h('p', null, h('a', { href: `/models/compare?a=${v.id}` }, 'Compare with another version')),
  );
}

function picker(id: string, labelText: string, versions: ModelVersion[], value: string | null): HTMLElement {
  return h(
    'div',
    { class: 'field' },
    h('label', { for: id }, labelText),
    h(
      'select',
      { id, name: id },
      h('option', { value: '' }, 'choose a version'),
      versions.map((v) => h('option', { value: v.id, selected: v.id === value }, `${v.kind} ${v.version} (${v.status})`)),
    ),
  );
}

function diffCell(name: string, a: number | null | undefined, b: number | null | undefined): HTMLElement {
  const d = a !== null && a !== undefined && b !== null && b !== undefined ? b - a : null;
  const v = verdict(name, a, b);
  const word = v > 0 ? 'better' : v < 0 ? 'worse' : '';
  return h('td', { class: `num ${v > 0 ? 'better' : v < 0 ? 'worse' : ''}` }, signed(d), word ? h('span', { class: 'sr-only' }, ` (${word})`) : null, word ? h('span', { 'aria-hidden': 'true', class: 'verdict' }, v > 0 ? ' ▲' : ' ▼') : null);
}

export async function comparePage(ctx: PageContext): Promise<void> {
  const versions = await allVersions(ctx.signal);
  const a = ctx.query.get('a');
  const b = ctx.query.get('b');
  const form = h(
    'form',
    { class: 'compare-form', 'aria-label': 'Versions to compare' },
    picker('compare-a', 'Version A', versions, a),
    picker('compare-b', 'Version B', versions, b),
    h('button', { type: 'submit', class: 'primary' }, 'Compare'),
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const fa = (form.querySelector('#compare-a') as HTMLSelectElement).value;
    const fb = (form.querySelector('#compare-b') as HTMLSelectElement).value;
    if (fa && fb) ctx.navigate(`/models/compare?a=${fa}&b=${fb}`);
  });
  const body: Child[] = [];
  if (a && b) {
    const cmp = await unwrap(api.GET('/v1/models/compare', { params: { query: { a, b } }, signal: ctx.signal }));
    const rows: HTMLElement[] = [];
    for (const split of ['val', 'test'] as const) {
      const ta = splitMetrics(cmp.a.metrics, split);
      const tb = splitMetrics(cmp.b.metrics, split);
      for (const m of KEY_METRICS) {
        const x = ta?.[m.key];
        const y = tb?.[m.key];
        if (x === undefined && y === undefined) continue;
        rows.push(
          h(
            'tr',
            null,
            h('th', { scope: 'row' }, `${m.label} (${split === 'val' ? 'validation' : 'test'})`),
            h('td', { class: 'num' }, num(x)),
            h('td', { class: 'num' }, num(y)),
            diffCell(m.key, x, y),
          ),
        );
      }
    }
    const head = h(
      'thead',
      null,
      h('tr', null, h('th', { scope: 'col' }, 'metric'), h('th', { scope: 'col', class: 'num' }, `A: ${cmp.a.version}`), h('th', { scope: 'col', class: 'num' }, `B: ${cmp.b.version}`), h('th', { scope: 'col', class: 'num' }, 'B − A')),
    );
    const others = cmp.metrics.filter((m) => m.a !== null || m.b !== null);
    body.push(
      h(
        'div',
        { class: 'grid-2' },
        section('A', facts([['Version', h('a', { href: `/models/${cmp.a.id}` }, cmp.a.version)], ['Kind', cmp.a.kind], ['Status', badge(cmp.a.status)], ['Created', dateTime(cmp.a.created_at)]])),
        section('B', facts([['Version', h('a', { href: `/models/${cmp.b.id}` }, cmp.b.version)], ['Kind', cmp.b.kind], ['Status', badge(cmp.b.status)], ['Created', dateTime(cmp.b.created_at)]])),
      ),
      section(
        'Headline metrics',
        rows.length
          ? h('div', { class: 'table-wrap' }, h('table', { class: 'compare' }, h('caption', { class: 'sr-only' }, 'Metrics of A and B'), head, h('tbody', null, rows)))
          : h('p', { class: 'muted' }, 'Neither version reports validation or test metrics.'),
        h('p', { class: 'muted small' }, '▲ better, ▼ worse (for metrics with a known direction).'),
      ),
      section('Training history', h('div', { class: 'grid-2' }, curves('History', [{ label: `A ${cmp.a.version}`, metrics: cmp.a.metrics }, { label: `B ${cmp.b.version}`, metrics: cmp.b.metrics }]))),
      others.length
        ? section(
            'Every other numeric metric',
            h(
              'details',
              null,
              h('summary', null, `${others.length} metrics from the server's comparison`),
              h(
                'div',
                { class: 'table-wrap' },
                h(
                  'table',
                  null,
                  h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'pointer'), h('th', { scope: 'col', class: 'num' }, 'A'), h('th', { scope: 'col', class: 'num' }, 'B'), h('th', { scope: 'col', class: 'num' }, 'B − A'))),
                  h('tbody', null, others.map((m) => h('tr', null, h('td', null, h('code', null, m.metric)), h('td', { class: 'num' }, num(m.a)), h('td', { class: 'num' }, num(m.b)), direction(m.metric) ? diffCell(m.metric, m.a, m.b) : h('td', { class: 'num' }, signed(m.diff))))),
                ),
              ),
            ),
          )
        : null,
    );
  }
  mount(ctx.main, pageHeader('Compare versions'), section('Choose', form), ...body);
}
