// A patient's visits next to the predictions made for them.
import type { AuditEntry, Visit } from '../api/client';

export interface SetComparison {
  /** Predicted and recorded. */
  both: string[];
  /** Predicted, not recorded. */
  predictedOnly: string[];
  /** Recorded, not predicted. */
  recordedOnly: string[];
  /** |both| / |union|; null when both sets are empty. */
  jaccard: number | null;
}

/** How a prediction compares with what was recorded (null when nothing was recorded). */
export function compareSets(predicted: readonly string[], recorded: readonly string[] | null | undefined): SetComparison | null {
  if (recorded === null || recorded === undefined) return null;
  const p = new Set(predicted);
  const r = new Set(recorded);
  const both = [...p].filter((c) => r.has(c)).sort();
  const predictedOnly = [...p].filter((c) => !r.has(c)).sort();
  const recordedOnly = [...r].filter((c) => !p.has(c)).sort();
  const union = both.length + predictedOnly.length + recordedOnly.length;
  return { both, predictedOnly, recordedOnly, jaccard: union === 0 ? null : both.length / union };
}

export interface TimelineRow {
  visit: Visit;
  /** The latest prediction made for this visit. */
  prediction: AuditEntry | null;
  /** How many earlier predictions were made for it. */
  earlier: number;
  /** The latest prediction against the visit's recorded medications. */
  agreement: SetComparison | null;
}

/** One row per visit, newest first, each with its latest prediction. */
export function timeline(visits: readonly Visit[], entries: readonly AuditEntry[]): TimelineRow[] {
  const byVisit = new Map<string, AuditEntry[]>();
  for (const e of entries) {
    const list = byVisit.get(e.visit.id) ?? [];
    list.push(e);
    byVisit.set(e.visit.id, list);
  }
  return [...visits]
    .sort((a, b) => b.seq - a.seq)
    .map((visit) => {
      const list = (byVisit.get(visit.id) ?? []).sort((a, b) => a.created_at.localeCompare(b.created_at));
      const prediction = list[list.length - 1] ?? null;
      return {
        visit,
        prediction,
        earlier: Math.max(0, list.length - 1),
        agreement: prediction ? compareSets(prediction.prediction.predicted, visit.medications) : null,
      };
    });
}

export type Change = 'added' | 'removed' | 'kept';

/**
 * Whether a predicted change turned out right: an added or kept code that
 * was recorded, a removed code that was not. Null when nothing was recorded.
 */
export function confirmed(change: Change, code: string, recorded: readonly string[] | null | undefined): boolean | null {
  if (recorded === null || recorded === undefined) return null;
  const has = recorded.includes(code);
  return change === 'removed' ? !has : has;
}
