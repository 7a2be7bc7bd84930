// One job, live: progress bar, ETA, loss and validation-metric curves from
// the event stream; cancel.
import { type Job, api, unwrap } from '../api/client';
import { followJob } from '../api/sse';
import { lineChart } from '../charts/chart';
import { h, mount } from '../lib/dom';
import { dateTime, duration, num, pct } from '../lib/format';
import { type ProgressState, apply, initial, isTerminal } from '../lib/progress';
import type { PageContext } from '../router';
import { badge, confirmDialog, facts, notify, pageHeader, problemBox, section } from '../ui';

function progressBar(s: ProgressState): HTMLElement {
  const value = s.fraction === null ? null : Math.round(s.fraction * 100);
  const bar = h('div', {
    class: `progress ${value === null ? 'indeterminate' : ''} status-${s.status}`,
    role: 'progressbar',
    'aria-label': 'Job progress',
    'aria-valuemin': 0,
    'aria-valuemax': 100,
    'aria-valuenow': value,
    'aria-valuetext': value === null ? `${s.status}, progress unknown` : `${value} %`,
  });
  const fill = h('div', { class: 'progress-fill' });
  if (value !== null) fill.style.width = `${value}%`;
  bar.append(fill);
  return bar;
}

function progressFacts(s: ProgressState): HTMLElement {
  const eta = isTerminal(s.status) ? '—' : s.etaSecs === null ? 'estimating…' : `about ${duration(s.etaSecs)} left`;
  return facts([
    ['Done', h('span', { 'data-testid': 'percent' }, s.fraction === null ? '—' : pct(s.fraction, 0))],
    ['ETA', eta],
    ['Epoch', s.epoch === null ? '—' : `${s.epoch}${s.epochs ? ` of ${s.epochs}` : ''}`],
    ['Step', s.step === null ? '—' : `${s.step}${s.steps ? ` of ${s.steps}` : ''}`],
    ['Throughput', s.throughput === null ? '—' : `${num(s.throughput, 1)} per s`],
    ['Attempt', String(s.attempt || '—')],
  ]);
}

function charts(s: ProgressState): HTMLElement {
  const loss = lineChart({
    title: 'Training loss',
    xLabel: 'Epoch',
    yLabel: 'loss',
    xMin: 0,
    series: [
      { name: 'per step', points: s.stepLoss },
      { name: 'per epoch', points: s.epochLoss },
    ],
  });
  const metrics = lineChart({
    title: 'Validation metrics',
    xLabel: 'Epoch',
    yLabel: 'value',
    series: [...s.metrics].map(([name, points]) => ({ name, points })),
  });
  return h('div', { class: 'grid-2' }, loss, metrics);
}

function logList(s: ProgressState): HTMLElement {
  const items = s.log.slice(-30).reverse();
  return h(
    'ol',
    { class: 'event-log', reversed: true, 'aria-label': 'Latest events, newest first' },
    items.map((l) => h('li', null, h('time', { datetime: l.at }, dateTime(l.at).slice(11)), h('span', { class: `kind kind-${l.kind}` }, l.kind), l.text)),
  );
}

export async function jobPage(ctx: PageContext): Promise<void> {
  const id = ctx.params[0]!;
  let job: Job = await unwrap(api.GET('/v1/jobs/{job_id}', { params: { path: { job_id: id } }, signal: ctx.signal }));
  const state = initial(job);
  state.status = 'queued'; // replayed events bring it up to date
  if (job.status === 'succeeded') state.fraction = null;

  const statusEl = h('span');
  const live = h('span', { class: 'live muted small', role: 'status' });
  const bar = h('div');
  const factsEl = h('div');
  const chartsEl = h('div');
  const logEl = h('div');
  const resultEl = h('div', { 'aria-live': 'polite' });
  const cancelBtn = h('button', { type: 'button', class: 'danger' }, 'Cancel job');
  const meta = h('div');

  const renderMeta = () => {
    meta.replaceChildren(
      facts([
        ['Kind', job.kind],
        ['Id', h('code', null, job.id)],
        ['Parameters', h('code', null, JSON.stringify(job.params))],
        ['Created', dateTime(job.created_at)],
        ['Started', dateTime(job.started_at)],
        ['Finished', dateTime(job.finished_at)],
        ['Worker', job.lease_owner ?? '—'],
      ]),
    );
  };
  const renderResult = () => {
    const parts: HTMLElement[] = [];
    const modelId = job.model_id ?? state.modelId;
    if (modelId) {
      parts.push(
        h(
          'p',
          { class: 'result ok' },
          'Registered version ',
          h('a', { href: `/models/${modelId}`, 'data-testid': 'new-version' }, state.version ?? modelId),
          '. ',
          h('a', { href: '/models' }, 'Compare and activate it on the Models page'),
          '.',
        ),
      );
    }
    const error = job.error ?? state.error;
    if (error && state.status !== 'succeeded') {
      parts.push(h('p', { class: `result ${state.status === 'cancelled' ? 'neutral' : 'bad'}`, role: 'alert' }, `${state.status}: ${error}`));
    }
    if (job.result) parts.push(h('pre', { class: 'json' }, JSON.stringify(job.result, null, 2)));
    resultEl.replaceChildren(...parts);
  };
  let scheduled = false;
  const renderLive = () => {
    scheduled = false;
    statusEl.replaceChildren(badge(state.status));
    bar.replaceChildren(progressBar(state));
    factsEl.replaceChildren(progressFacts(state));
    chartsEl.replaceChildren(charts(state));
    logEl.replaceChildren(logList(state));
    cancelBtn.hidden = isTerminal(state.status) || job.cancel_requested;
    renderResult();
  };
  const schedule = () => {
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(renderLive);
    }
  };

  cancelBtn.addEventListener('click', async () => {
    const ok = await confirmDialog({
      title: 'Cancel this job?',
      body: h('p', null, 'A queued job is cancelled at once; a running one stops at its next batch and its partial artifacts are removed.'),
      confirm: 'Cancel job',
      danger: true,
    });
    if (!ok) return;
    try {
      job = await unwrap(api.POST('/v1/jobs/{job_id}/cancel', { params: { path: { job_id: id } } }));
      notify(job.status === 'cancelled' ? 'The job was cancelled.' : 'Cancellation requested: the job stops at its next batch.');
      renderMeta();
      schedule();
    } catch (e) {
      resultEl.replaceChildren(problemBox(e, 'Could not cancel'));
    }
  });

  mount(ctx.main, 
    pageHeader(`Job ${job.kind}`, h('div', { class: 'header-extra' }, statusEl, live, cancelBtn)),
    section('Progress', bar, factsEl, resultEl),
    section('Curves', chartsEl),
    h('div', { class: 'grid-2' }, section('Events', logEl), section('Details', meta)),
  );
  renderMeta();
  renderLive();

  // Follow the stream from the start: the replay draws the curves so far.
  void followJob(id, {
    after: 0,
    signal: ctx.signal,
    onEvent: (ev) => {
      apply(state, ev);
      schedule();
    },
    onState: async (st, detail) => {
      live.textContent =
        st === 'live' ? '● live' : st === 'connecting' ? 'connecting…' : st === 'reconnecting' ? `reconnecting…${detail ? ` (${detail})` : ''}` : 'stream ended';
      if (st === 'ended' && !ctx.signal.aborted) {
        try {
          job = await unwrap(api.GET('/v1/jobs/{job_id}', { params: { path: { job_id: id } }, signal: ctx.signal }));
          if (isTerminal(job.status)) state.status = job.status;
          if (job.status === 'succeeded') state.fraction = 1;
          renderMeta();
          schedule();
        } catch {
          // keep what the stream showed
        }
      }
    },
  });
}
