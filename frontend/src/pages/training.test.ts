import { describe, expect, it } from 'vitest';
import { jobFraction, uuid4 } from './training';

describe('training helpers', () => {
  it('reads a job’s fraction done from its latest progress', () => {
    expect(jobFraction({ status: 'succeeded', progress: null, params: {} })).toBe(1);
    expect(jobFraction({ status: 'queued', progress: null, params: {} })).toBe(0);
    expect(jobFraction({ status: 'running', progress: { type: 'step', epoch: 2, step: 5, steps: 10 }, params: { epochs: 4 } })).toBe(0.375);
    expect(jobFraction({ status: 'running', progress: { type: 'epoch', epoch: 3, epochs: 4, metrics: {} }, params: {} })).toBe(0.75);
    expect(jobFraction({ status: 'running', progress: { type: 'log', message: 'x' }, params: {} })).toBeNull();
  });

  it('makes version 4 UUIDs', () => {
    const ids = new Set(Array.from({ length: 100 }, uuid4));
    expect(ids.size).toBe(100);
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });
});
