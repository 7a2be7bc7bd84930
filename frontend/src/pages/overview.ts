// Overview: service health, the served model of each kind with its
// headline metrics, the job queue and predictions per hour.
import { type Job, type ModelVersion, api, unwrap } from '../api/client';
import { barChart } from '../charts/chart';
import { h, mount } from '../lib/dom';
import { dateTime, duration, num, secondsBetween, shortId } from '../lib/format';
import { KEY_METRICS, splitMetrics } from '../lib/metrics';
import type { PageContext } from '../router';
import { badge, facts, loading, pageHeader, problemBox, section } from '../ui';
import { every } from './util';

async function health(): Promise<HTMLElement> {
  const [live, ready] = await Promise.allSettled([unwrap(api.GET('/healthz')), unwrap(api.GET('/readyz'))]);
  const item = (name: string, ok: boolean, text: string) =>
    h('li', { class: `health ${ok ? 'ok' : 'bad'}` }, h('span', { class: 'dot', 'aria-hidden': 'true' }), h('strong', null, name), ` ${text}`);
  return h(
    'ul',
    { class: 'health-list', 'aria-label': 'Service health' },
    item('Liveness', live.status === 'fulfilled', live.status === 'fulfilled' ? live.value.status : String(live.reason?.message ?? live.reason)),
    item(
      'Readiness',
      ready.status === 'fulfilled',
      ready.status === 'fulfilled' ? `${ready.value.status} (migration ${ready.value.migration})` : String(ready.reason?.message ?? ready.reason),
    ),
  );
}

async function activeModels(signal: AbortSignal): Promise<HTMLElement> {
  const served = await unwrap(api.GET('/v1/models/active', { signal }));
  if (served.length === 0) return h('p', { class: 'muted' }, 'No model version is active. Train one and activate it on the Models page.');
  const versions = await Promise.all(
    served.map((m) => unwrap(api.GET('/v1/models/{model_id}', { params: { path: { model_id: m.model_id } }, signal })).catch(() => null)),
  );
  return h(
    'div',
    { class: 'model-cards' },
    served.map((m, i) => {
      const v: ModelVersion | null = versions[i] ?? null;
      const val = v ? splitMetrics(v.metrics, 'val') : null;
      const test = v ? splitMetrics(v.metrics, 'test') : null;
      const shown = KEY_METRICS.filter((k) => val?.[k.key] !== undefined || test?.[k.key] !== undefined).slice(0, 4);
      return h(
        'article',
        { class: 'model-card', 'aria-label': `Active ${m.kind} model` },
        h('h3', null, m.kind),
        h('p', null, h('a', { href: `/models/${m.model_id}` }, m.version)),
        v ? h('p', { class: 'muted small' }, `${v.source}, created ${dateTime(v.created_at)}`) : null,
        shown.length > 0
          ? h(
              'table',
              { class: 'mini' },
              h('caption', { class: 'sr-only' }, `Headline metrics of ${m.version}`),
              h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'metric'), h('th', { scope: 'col', class: 'num' }, 'validation'), h('th', { scope: 'col', class: 'num' }, 'test'))),
              h(
                'tbody',
                null,
                shown.map((k) => h('tr', null, h('th', { scope: 'row' }, k.label), h('td', { class: 'num' }, num(val?.[k.key])), h('td', { class: 'num' }, num(test?.[k.key])))),
              ),
            )
          : h('p', { class: 'muted' }, 'No metrics reported.'),
      );
    }),
  );
}

function jobRow(j: Job): HTMLElement {
  const secs = j.started_at ? secondsBetween(j.started_at, j.finished_at) : null;
  return h(
    'tr',
    null,
    h('td', null, h('a', { href: `/training/jobs/${j.id}` }, shortId(j.id))),
    h('td', null, j.kind),
    h('td', null, badge(j.status)),
    h('td', null, dateTime(j.created_at)),
    h('td', { class: 'num' }, secs === null ? '—' : duration(secs)),
  );
}

async function queue(signal: AbortSignal): Promise<HTMLElement> {
  const [queued, running, recent] = await Promise.all([
    unwrap(api.GET('/v1/jobs', { params: { query: { status: 'queued', limit: 100 } }, signal })),
    unwrap(api.GET('/v1/jobs', { params: { query: { status: 'running', limit: 100 } }, signal })),
    unwrap(api.GET('/v1/jobs', { params: { query: { limit: 8 } }, signal })),
  ]);
  const count = (p: { items: unknown[]; next_cursor?: string | null }) => `${p.items.length}${p.next_cursor ? '+' : ''}`;
  return h(
    'div',
    null,
    facts([
      ['Queued', count(queued)],
      ['Running', count(running)],
    ]),
    recent.items.length === 0
      ? h('p', { class: 'muted' }, 'No jobs yet. ', h('a', { href: '/training' }, 'Start one'), '.')
      : h(
          'div',
          { class: 'table-wrap' },
          h(
            'table',
            null,
            h('caption', { class: 'sr-only' }, 'Recent jobs'),
            h('thead', null, h('tr', null, ['job', 'kind', 'status', 'created', 'ran for'].map((c, i) => h('th', { scope: 'col', class: i === 4 ? 'num' : null }, c)))),
            h('tbody', null, recent.items.map(jobRow)),
          ),
        ),
  );
}

async function predictions(signal: AbortSignal): Promise<HTMLElement> {
  const stats = await unwrap(api.GET('/v1/predictions/stats', { params: { query: { hours: 24 } }, signal }));
  const withWarnings = stats.per_hour.reduce((a, b) => a + b.with_interactions, 0);
  return h(
    'div',
    null,
    facts([
      ['Last 24 hours', `${stats.total} prediction${stats.total === 1 ? '' : 's'}`],
      ['With interaction warnings', String(withWarnings)],
    ]),
    barChart({
      title: 'Predictions per hour (last 24 hours)',
      xLabel: 'Hour',
      yLabel: 'predictions',
      names: ['without warning', 'with interaction warning'],
      bars: stats.per_hour.map((b) => ({
        label: new Date(b.hour).toLocaleTimeString('en-GB', { hour: '2-digit', minute: '2-digit' }),
        values: [b.count - b.with_interactions, b.with_interactions],
      })),
      labelEvery: 4,
    }),
  );
}

export async function overviewPage(ctx: PageContext): Promise<void> {
  const parts: [string, (s: AbortSignal) => Promise<HTMLElement>][] = [
    ['Service health', () => health()],
    ['Active models', activeModels],
    ['Job queue', queue],
    ['Predictions', predictions],
  ];
  const bodies = parts.map(() => h('div', null, loading()));
  mount(ctx.main, 
    pageHeader('Overview', h('p', { class: 'muted small', id: 'refreshed' }, '')),
    h('div', { class: 'grid-2' }, parts.map(([title], i) => section(title, bodies[i]))),
  );
  const refresh = async () => {
    await Promise.all(
      parts.map(async ([title, load], i) => {
        try {
          const el = await load(ctx.signal);
          if (!ctx.signal.aborted) bodies[i]!.replaceChildren(el);
        } catch (e) {
          if (!ctx.signal.aborted) bodies[i]!.replaceChildren(problemBox(e, `Could not load ${title.toLowerCase()}`));
        }
      }),
    );
    const r = document.getElementById('refreshed');
    if (r) r.textContent = `Updated ${new Date().toLocaleTimeString('en-GB')}; refreshes every 15 s.`;
  };
  await refresh();
  every(ctx.signal, 15_000, refresh);
}
