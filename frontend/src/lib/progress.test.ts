import { describe, expect, it } from 'vitest';
import type { JobEvent } from '../api/client';
import { apply, initial } from './progress';

let nextId = 0;
function ev(kind: string, data: Record<string, unknown>, attempt = 1): JobEvent {
  nextId += 1;
  return { id: nextId, job_id: 'j', attempt, kind, data, created_at: `2026-12-04T06:42:${String(nextId).padStart(2, '0')}Z` };
}

// The events of a two-epoch train_micron run, as the server sends them.
function run(): JobEvent[] {
  nextId = 0;
  return [
    ev('status', { status: 'queued' }, 0),
    ev('status', { status: 'running', attempt: 1, worker: 'w' }),
    ev('log', { type: 'log', message: 'loading the stored visits' }),
    ev('step', { type: 'step', epoch: 1, step: 18, steps: 36, loss: 1.1, eta_secs: 3.5, throughput: 65 }),
    ev('epoch', { type: 'epoch', epoch: 1, epochs: 2, metrics: { best_epoch: null, train_loss: 0.78, val_jaccard: 0.35 } }),
    ev('step', { type: 'step', epoch: 2, step: 9, steps: 36, loss: 0.6, eta_secs: 1.2 }),
    ev('epoch', { type: 'epoch', epoch: 2, epochs: 2, metrics: { best_epoch: 2, train_loss: 0.56, val_jaccard: 0.36 } }),
    ev('status', { status: 'succeeded', model_id: 'm-1', version: 'v-1' }),
  ];
}

describe('progress', () => {
  it('follows a run to 100 % with curves, ETA and the new version', () => {
    const events = run();
    const s = initial({ status: 'queued', params: { epochs: 2 }, attempts: 0 });
    const seen: (number | null)[] = [];
    for (const e of events) {
      apply(s, e);
      seen.push(s.fraction);
    }
    expect(seen).toEqual([null, null, null, 0.25, 0.5, 0.625, 1, 1]);
    expect(s.status).toBe('succeeded');
    expect(s.etaSecs).toBe(0);
    expect(s.stepLoss).toEqual([
      { x: 0.5, y: 1.1 },
      { x: 1.25, y: 0.6 },
    ]);
    expect(s.epochLoss).toEqual([
      { x: 1, y: 0.78 },
      { x: 2, y: 0.56 },
    ]);
    expect([...s.metrics.keys()]).toEqual(['val_jaccard']);
    expect(s.metrics.get('val_jaccard')).toEqual([
      { x: 1, y: 0.35 },
      { x: 2, y: 0.36 },
    ]);
    expect(s.modelId).toBe('m-1');
    expect(s.version).toBe('v-1');
    expect(s.log.map((l) => l.kind)).toEqual(['status', 'status', 'log', 'epoch', 'epoch', 'status']);
    expect(s.log[3]!.text).toContain('epoch 1/2');
  });

  it('ignores repeated events (a resumed stream may overlap)', () => {
    const events = run();
    const s = initial({ status: 'queued', params: { epochs: 2 }, attempts: 0 });
    for (const e of events.slice(0, 5)) apply(s, e);
    for (const e of events) apply(s, e);
    expect(s.epochLoss).toHaveLength(2);
    expect(s.stepLoss).toHaveLength(2);
    expect(s.log).toHaveLength(6);
  });

  it('never moves backwards within an attempt, and a retry starts over', () => {
    nextId = 0;
    const s = initial({ status: 'queued', params: { epochs: 4 }, attempts: 0 });
    apply(s, ev('status', { status: 'running' }, 1));
    apply(s, ev('epoch', { type: 'epoch', epoch: 2, epochs: 4, metrics: { val_jaccard: 0.3 } }, 1));
    apply(s, ev('step', { type: 'step', epoch: 1, step: 1, steps: 10 }, 1));
    expect(s.fraction).toBe(0.5);
    apply(s, ev('status', { status: 'queued', reason: 'worker stopped heartbeating' }, 1));
    apply(s, ev('status', { status: 'running' }, 2));
    expect(s.fraction).toBe(0);
    expect(s.metrics.size).toBe(0);
    expect(s.attempt).toBe(2);
    expect(s.log.at(-2)!.text).toContain('worker stopped heartbeating');
  });

  it('shows failures and unknown totals honestly', () => {
    nextId = 0;
    const s = initial({ status: 'queued', params: {}, attempts: 0 });
    apply(s, ev('step', { type: 'step', epoch: 1, step: 5, steps: 20 }));
    expect(s.fraction).toBe(0.25); // no epoch count: the epoch's share
    apply(s, ev('status', { status: 'failed', error: 'out of memory' }));
    expect(s.status).toBe('failed');
    expect(s.error).toBe('out of memory');
    expect(s.fraction).toBe(0.25);
    expect(s.log.at(-1)!.text).toBe('failed (attempt 1): out of memory');
  });
});
