import { describe, expect, it } from 'vitest';
import type { AuditEntry, Visit } from '../api/client';
import { compareSets, confirmed, timeline } from './timeline';

function visit(seq: number, medications: string[] | null): Visit {
  return {
    id: `v${seq}`,
    patient_id: 'p',
    seq,
    occurred_at: `2026-01-0${seq}T00:00:00Z`,
    diagnoses: ['I10'],
    procedures: [],
    medications,
    created_at: '2026-01-01T00:00:00Z',
  };
}

function entry(visitSeq: number, created: string, predicted: string[]): AuditEntry {
  return {
    id: `e-${visitSeq}-${created}`,
    created_at: created,
    visit: { id: `v${visitSeq}`, seq: visitSeq, occurred_at: '2026-01-01T00:00:00Z', recorded_medications: null },
    prediction: { predicted } as unknown as AuditEntry['prediction'],
  };
}

describe('timeline', () => {
  it('compares a prediction with the record', () => {
    expect(compareSets(['A', 'B', 'C'], ['B', 'C', 'D'])).toEqual({
      both: ['B', 'C'],
      predictedOnly: ['A'],
      recordedOnly: ['D'],
      jaccard: 0.5,
    });
    expect(compareSets([], [])!.jaccard).toBeNull();
    expect(compareSets(['A'], null)).toBeNull();
  });

  it('puts visits newest first, each with its latest prediction', () => {
    const rows = timeline(
      [visit(1, ['A']), visit(3, null), visit(2, ['A', 'B'])],
      [entry(2, '2026-02-01T00:00:00Z', ['A']), entry(2, '2026-03-01T00:00:00Z', ['A', 'B']), entry(3, '2026-03-02T00:00:00Z', ['B'])],
    );
    expect(rows.map((r) => r.visit.seq)).toEqual([3, 2, 1]);
    expect(rows[1]!.prediction!.created_at).toBe('2026-03-01T00:00:00Z');
    expect(rows[1]!.earlier).toBe(1);
    expect(rows[1]!.agreement!.jaccard).toBe(1);
    expect(rows[0]!.agreement).toBeNull(); // nothing recorded
    expect(rows[2]!.prediction).toBeNull();
  });

  it('says whether a predicted change was borne out', () => {
    expect(confirmed('added', 'A', ['A'])).toBe(true);
    expect(confirmed('kept', 'A', [])).toBe(false);
    expect(confirmed('removed', 'A', ['B'])).toBe(true);
    expect(confirmed('removed', 'A', ['A'])).toBe(false);
    expect(confirmed('added', 'A', null)).toBeNull();
  });
});
