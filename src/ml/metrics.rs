//! The evaluation of micron.md, exactly as the reference computes it.
//! (Types are fixed here; implementation lands with the data work.)
use serde::{Deserialize, Serialize};

use super::data::DdiMatrix;

/// One scored visit (t >= 1) of a patient.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VisitPrediction {
    /// Y: medications recorded at this visit (sorted indices).
    pub truth: Vec<u32>,
    /// Yh: predicted medication set (sorted indices).
    pub predicted: Vec<u32>,
    /// p: probability of every medication in the vocabulary.
    pub probs: Vec<f32>,
    /// The set before this visit: the set predicted one step earlier, or the
    /// truth of visit 0 at t = 1. Used by Err(add) / Err(remove).
    pub prev: Vec<u32>,
}

/// All scored visits of one patient, in order (visits t >= 1).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PatientPrediction {
    pub visits: Vec<VisitPrediction>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricOptions {
    /// Reproduce the reference's aliasing quirk: for patients with 3+ visits,
    /// Jaccard/precision/recall/F1 of every visit are computed against the
    /// patient's final predicted set.
    pub aliasing_quirk: bool,
}

/// The metric table of micron.md.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub ddi_rate: f64,
    pub jaccard: f64,
    pub prauc: f64,
    pub f1: f64,
    pub precision: f64,
    pub recall: f64,
    pub err_add: f64,
    pub err_remove: f64,
    pub avg_med: f64,
    /// Number of patients / visits scored.
    pub patients: usize,
    pub visits: usize,
}

impl MetricOptions {
    /// The service default: every visit scored against its own prediction.
    pub const CLEAN: MetricOptions = MetricOptions { aliasing_quirk: false };
    /// The reference code's behaviour (see [`MetricOptions::aliasing_quirk`]).
    pub const REFERENCE: MetricOptions = MetricOptions { aliasing_quirk: true };
}

/// |a ∩ b| for sorted, de-duplicated index lists.
fn intersection(a: &[u32], b: &[u32]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

fn sorted_unique(v: &[u32]) -> Vec<u32> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// Jaccard, precision, recall and F1 of one visit, as the reference's
/// `multi_label_metric` computes them. Empty union gives Jaccard 0 (the
/// reference intends 0 there but would divide by zero); empty prediction
/// gives precision 0, empty truth recall 0, P + R = 0 gives F1 0.
pub fn set_scores(truth: &[u32], predicted: &[u32]) -> (f64, f64, f64, f64) {
    let (y, yh) = (sorted_unique(truth), sorted_unique(predicted));
    let inter = intersection(&y, &yh) as f64;
    let union = (y.len() + yh.len()) as f64 - inter;
    let jaccard = if union == 0.0 { 0.0 } else { inter / union };
    let precision = if yh.is_empty() { 0.0 } else { inter / yh.len() as f64 };
    let recall = if y.is_empty() { 0.0 } else { inter / y.len() as f64 };
    let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
    (jaccard, precision, recall, f1)
}

/// The binary-classification curve of sklearn's `_binary_clf_curve`: for
/// every distinct score, from the highest down, the cumulative true and
/// false positives at that threshold.
fn clf_curve(labels: &[bool], scores: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f32>) {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tps, mut fps, mut thr) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tp, mut fp) = (0.0, 0.0);
    for (k, &i) in order.iter().enumerate() {
        if labels[i] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        let last_of_value = k + 1 == order.len() || scores[order[k + 1]] != scores[i];
        if last_of_value {
            tps.push(tp);
            fps.push(fp);
            thr.push(scores[i]);
        }
    }
    (tps, fps, thr)
}

/// sklearn's `average_precision_score` for one binary label vector:
/// `sum_n (R_n - R_{n-1}) P_n` over distinct score thresholds, highest first.
/// With no positive label it is 0 (what sklearn >= 1.1 returns).
pub fn average_precision(labels: &[bool], scores: &[f32]) -> f64 {
    assert_eq!(labels.len(), scores.len(), "labels and scores differ in length");
    let (tps, fps, _) = clf_curve(labels, scores);
    let total = tps.last().copied().unwrap_or(0.0);
    if total == 0.0 {
        return 0.0;
    }
    let mut ap = 0.0;
    let mut prev_recall = 0.0;
    for (tp, fp) in tps.iter().zip(&fps) {
        let recall = tp / total;
        let precision = tp / (tp + fp);
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
    }
    ap
}

/// The thresholds sklearn's `roc_curve(labels, scores)` returns with its
/// default `drop_intermediate=True`: distinct scores from high to low, minus
/// points collinear in (fps, tps), preceded by `+inf` (sklearn >= 1.3; older
/// versions put `max + 1` there, which calibration clips identically).
pub fn roc_thresholds(labels: &[bool], scores: &[f32]) -> Vec<f64> {
    assert_eq!(labels.len(), scores.len(), "labels and scores differ in length");
    let (tps, fps, thr) = clf_curve(labels, scores);
    let keep: Vec<usize> = if thr.len() > 2 {
        (0..thr.len())
            .filter(|&i| {
                i == 0
                    || i + 1 == thr.len()
                    || fps[i + 1] - 2.0 * fps[i] + fps[i - 1] != 0.0
                    || tps[i + 1] - 2.0 * tps[i] + tps[i - 1] != 0.0
            })
            .collect()
    } else {
        (0..thr.len()).collect()
    };
    std::iter::once(f64::INFINITY).chain(keep.into_iter().map(|i| thr[i] as f64)).collect()
}

/// The reference's test-mode threshold calibration (micron.md, Inference).
/// `truths[v]` and `probs[v]` are the true medication set and the
/// probability vector (length `n_med`) of validation visit `v`. For every
/// medication, over the thresholds `b` of its ROC curve (length L):
/// add = clip(b[max(0, round(0.05 L) - 1)], 0.5, 0.9),
/// remove = clip(b[min(round(0.95 L), L - 1)], 0.1, 0.5), with Python's
/// round-half-to-even. Medications with no positive (or no negative) visit
/// are included like the others, as sklearn still returns thresholds for
/// them. Returns the means over medications; (0.8, 0.2) when there is no
/// visit or no medication.
pub fn calibrate_thresholds(truths: &[Vec<u32>], probs: &[Vec<f32>], n_med: usize) -> (f32, f32) {
    assert_eq!(truths.len(), probs.len(), "truths and probs differ in length");
    if truths.is_empty() || n_med == 0 {
        return (0.8, 0.2);
    }
    let mut labels = vec![false; truths.len()];
    let mut scores = vec![0f32; truths.len()];
    let (mut add_sum, mut remove_sum) = (0.0f64, 0.0f64);
    for j in 0..n_med {
        for (v, (t, p)) in truths.iter().zip(probs).enumerate() {
            labels[v] = t.contains(&(j as u32));
            scores[v] = p[j];
        }
        let b = roc_thresholds(&labels, &scores);
        let l = b.len() as f64;
        let lo = ((l * 0.05).round_ties_even() as i64 - 1).max(0) as usize;
        let hi = ((l * 0.95).round_ties_even() as usize).min(b.len() - 1);
        add_sum += b[lo].clamp(0.5, 0.9);
        remove_sum += b[hi].clamp(0.1, 0.5);
    }
    ((add_sum / n_med as f64) as f32, (remove_sum / n_med as f64) as f32)
}

/// [`calibrate_thresholds`] over the scored visits of validation patients.
pub fn calibrate_from_predictions(patients: &[PatientPrediction], n_med: usize) -> (f32, f32) {
    let visits = patients.iter().flat_map(|p| &p.visits);
    let truths: Vec<Vec<u32>> = visits.clone().map(|v| v.truth.clone()).collect();
    let probs: Vec<Vec<f32>> = visits.map(|v| v.probs.clone()).collect();
    calibrate_thresholds(&truths, &probs, n_med)
}

/// Pooled DDI rate: interacting unordered pairs over all unordered pairs,
/// summed over every set; 0 when there is no pair at all.
pub fn ddi_rate(sets: &[Vec<u32>], ddi: &DdiMatrix) -> f64 {
    let (mut all, mut bad) = (0u64, 0u64);
    for s in sets {
        let s = sorted_unique(s);
        for (k, &a) in s.iter().enumerate() {
            for &b in &s[k + 1..] {
                all += 1;
                if ddi.interacts(a, b) {
                    bad += 1;
                }
            }
        }
    }
    if all == 0 { 0.0 } else { bad as f64 / all as f64 }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 }
}

/// The evaluation of micron.md. Patients without scored visits are skipped.
/// Jaccard / precision / recall / F1 / PRAUC / Err(add) / Err(remove) are
/// averaged per patient, then over patients; DDI rate and #med are pooled
/// over all scored visits. With `opts.aliasing_quirk`, the set scores of
/// every visit use the patient's final predicted set (the reference's
/// aliasing; it changes nothing for patients with one scored visit). An
/// empty input gives all-zero metrics.
pub fn evaluate(patients: &[PatientPrediction], ddi: &DdiMatrix, opts: MetricOptions) -> Metrics {
    let mut per = [const { Vec::new() }; 7]; // ja, prauc, p, r, f1, add, remove
    let mut predicted_sets: Vec<Vec<u32>> = Vec::new();
    let (mut med_cnt, mut visit_cnt) = (0usize, 0usize);
    for patient in patients {
        let Some(last) = patient.visits.last() else { continue };
        let mut acc = [0.0f64; 7];
        for v in &patient.visits {
            let scored = if opts.aliasing_quirk { &last.predicted } else { &v.predicted };
            let (ja, p, r, f1) = set_scores(&v.truth, scored);
            let truth = sorted_unique(&v.truth);
            let labels: Vec<bool> = (0..v.probs.len()).map(|j| truth.binary_search(&(j as u32)).is_ok()).collect();
            let prauc = average_precision(&labels, &v.probs);
            let (y, yh, prev) = (sorted_unique(&v.truth), sorted_unique(&v.predicted), sorted_unique(&v.prev));
            let minus = |a: &[u32], b: &[u32]| -> Vec<u32> {
                a.iter().copied().filter(|x| b.binary_search(x).is_err()).collect()
            };
            let sym = |a: &[u32], b: &[u32]| a.len() + b.len() - 2 * intersection(a, b);
            let err_add = sym(&minus(&yh, &prev), &minus(&y, &prev));
            let err_remove = sym(&minus(&prev, &yh), &minus(&prev, &y));
            for (a, x) in acc.iter_mut().zip([ja, prauc, p, r, f1, err_add as f64, err_remove as f64]) {
                *a += x;
            }
            med_cnt += yh.len();
            visit_cnt += 1;
            predicted_sets.push(yh);
        }
        let n = patient.visits.len() as f64;
        for (list, a) in per.iter_mut().zip(acc) {
            list.push(a / n);
        }
    }
    Metrics {
        ddi_rate: ddi_rate(&predicted_sets, ddi),
        jaccard: mean(&per[0]),
        prauc: mean(&per[1]),
        precision: mean(&per[2]),
        recall: mean(&per[3]),
        f1: mean(&per[4]),
        err_add: mean(&per[5]),
        err_remove: mean(&per[6]),
        avg_med: if visit_cnt == 0 { 0.0 } else { med_cnt as f64 / visit_cnt as f64 },
        patients: per[0].len(),
        visits: visit_cnt,
    }
}

/// One step of the inference recurrence's set update: start from `prev`,
/// add every j with `probs[j] >= add`, then remove every j with
/// `probs[j] < remove` (the reference's order: removal wins if the
/// thresholds cross). Returns the sorted new set.
pub fn apply_thresholds(prev: &[u32], probs: &[f32], add: f32, remove: f32) -> Vec<u32> {
    let mut on = vec![false; probs.len()];
    for &j in prev {
        if let Some(x) = on.get_mut(j as usize) {
            *x = true;
        }
    }
    for (x, &p) in on.iter_mut().zip(probs) {
        if p >= add {
            *x = true;
        }
        if p < remove {
            *x = false;
        }
    }
    on.iter().enumerate().filter(|(_, x)| **x).map(|(j, _)| j as u32).collect()
}

/// Copy-previous baseline predictions for encoded medication sets of each
/// patient (`meds[p][t]` = true set of visit t): visit t >= 1 predicts the
/// true set of visit t - 1, probabilities 1 on it and 0 elsewhere, and prev
/// is that same set. Patients with fewer than two visits are omitted.
pub fn copy_previous(meds: &[Vec<Vec<u32>>], n_med: usize) -> Vec<PatientPrediction> {
    meds.iter()
        .filter(|p| p.len() >= 2)
        .map(|p| PatientPrediction {
            visits: p
                .windows(2)
                .map(|w| {
                    let prev = sorted_unique(&w[0]);
                    let mut probs = vec![0.0; n_med];
                    for &j in &prev {
                        probs[j as usize] = 1.0;
                    }
                    VisitPrediction { truth: sorted_unique(&w[1]), predicted: prev.clone(), probs, prev }
                })
                .collect(),
        })
        .collect()
}

impl Metrics {
    /// Column headers of [`Metrics::row`], in micron.md's order.
    pub const HEADERS: [&'static str; 9] =
        ["DDI", "Jaccard", "PRAUC", "F1", "Precision", "Recall", "Err(add)", "Err(remove)", "#med"];

    fn values(&self) -> [String; 9] {
        [
            format!("{:.4}", self.ddi_rate),
            format!("{:.4}", self.jaccard),
            format!("{:.4}", self.prauc),
            format!("{:.4}", self.f1),
            format!("{:.4}", self.precision),
            format!("{:.4}", self.recall),
            format!("{:.2}", self.err_add),
            format!("{:.2}", self.err_remove),
            format!("{:.1}", self.avg_med),
        ]
    }
}

/// A fixed-width text table: one row per `(label, metrics)`, columns as
/// [`Metrics::HEADERS`] plus patient and visit counts.
pub fn format_table(rows: &[(&str, Metrics)]) -> String {
    let label_w = rows.iter().map(|(l, _)| l.chars().count()).max().unwrap_or(0).max(5);
    let mut out = format!("{:<label_w$}", "model");
    for h in Metrics::HEADERS {
        out += &format!(" {h:>11}");
    }
    out += &format!(" {:>8} {:>7}\n", "patients", "visits");
    for (label, m) in rows {
        out += &format!("{label:<label_w$}");
        for v in m.values() {
            out += &format!(" {v:>11}");
        }
        out += &format!(" {:>8} {:>7}\n", m.patients, m.visits);
    }
    out
}

impl std::fmt::Display for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format_table(&[("", *self)]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    fn vp(truth: &[u32], predicted: &[u32], prev: &[u32], probs: &[f32]) -> VisitPrediction {
        VisitPrediction {
            truth: truth.to_vec(),
            predicted: predicted.to_vec(),
            prev: prev.to_vec(),
            probs: probs.to_vec(),
        }
    }

    fn ddi5() -> DdiMatrix {
        let mut d = DdiMatrix::new(5);
        d.set(0, 1);
        d.set(2, 4);
        d
    }

    #[test]
    fn average_precision_matches_sklearn() {
        // sklearn 1.9.1 average_precision_score on float32 scores
        let cases: [(&[u8], &[f32], f64); 5] = [
            (&[1, 0, 1, 0, 0, 1], &[0.9, 0.8, 0.7, 0.6, 0.5, 0.4], 0.7222222222222222),
            (&[0, 1, 1, 0, 1, 0, 0], &[0.3, 0.3, 0.9, 0.9, 0.1, 0.2, 0.3], 0.44285714285714284),
            (&[1, 0, 0, 0], &[0.2, 0.2, 0.2, 0.2], 0.25),
            (&[0, 0, 1], &[0.5, 0.6, 0.1], 0.3333333333333333),
            (&[0, 0, 0], &[0.5, 0.6, 0.1], 0.0),
        ];
        for (y, s, want) in cases {
            let y: Vec<bool> = y.iter().map(|&b| b == 1).collect();
            assert!(close(average_precision(&y, s), want), "{y:?} {s:?}");
        }
    }

    #[test]
    fn roc_thresholds_match_sklearn() {
        // sklearn roc_curve(y, s)[2] with drop_intermediate=True
        let t = roc_thresholds(&[true, false, true, false, false, true], &[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]);
        assert_eq!(t, vec![f64::INFINITY, 0.9f32 as f64, 0.8f32 as f64, 0.7f32 as f64, 0.5f32 as f64, 0.4f32 as f64]);
        let y = [false, true, true, false, true, false, false];
        let t = roc_thresholds(&y, &[0.3, 0.3, 0.9, 0.9, 0.1, 0.2, 0.3]);
        assert_eq!(t, vec![f64::INFINITY, 0.9f32 as f64, 0.3f32 as f64, 0.2f32 as f64, 0.1f32 as f64]);
        let t = roc_thresholds(&[false, false, false], &[0.5, 0.6, 0.1]);
        assert_eq!(t, vec![f64::INFINITY, 0.6f32 as f64, 0.1f32 as f64]);
        let t = roc_thresholds(&[true, false, false, false], &[0.2; 4]);
        assert_eq!(t, vec![f64::INFINITY, 0.2f32 as f64]);
    }

    #[test]
    fn calibration_matches_sklearn_reference_procedure() {
        // 300 visits, 6 medications; medication 4 never given, 5 always.
        // Python (sklearn 1.9.1 roc_curve + the reference's indexing) gives
        // per medication add 0.8061, 0.7913, 0.7814, 0.7715, 0.9, 0.9 and
        // remove 0.2586, 0.1596, 0.2339, 0.2339, 0.12, 0.42; means below.
        let lab = |v: usize, j: usize| match j {
            4 => false,
            5 => true,
            _ => (v * 7 + j * 3) % 5 < 2,
        };
        let prob = |v: usize, j: usize| {
            (((v * 37 + j * 11) % 101) as f64 / 101.0 * 0.5 + 0.3 * (lab(v, j) as u8 as f64) + 0.12) as f32
        };
        let truths: Vec<Vec<u32>> =
            (0..300).map(|v| (0..6).filter(|&j| lab(v, j)).map(|j| j as u32).collect()).collect();
        let probs: Vec<Vec<f32>> = (0..300).map(|v| (0..6).map(|j| prob(v, j)).collect()).collect();
        let (add, remove) = calibrate_thresholds(&truths, &probs, 6);
        assert!((add - 0.8250495).abs() < 1e-6, "{add}");
        assert!((remove - 0.23765676).abs() < 1e-6, "{remove}");
        assert_eq!(calibrate_thresholds(&[], &[], 6), (0.8, 0.2));
    }

    #[test]
    fn evaluate_hand_computed_clean_and_quirk() {
        let probs = [0.9, 0.8, 0.1, 0.3, 0.2];
        let patients = vec![
            PatientPrediction {
                visits: vec![vp(&[0, 1, 2], &[0, 1], &[0], &probs), vp(&[2, 3], &[2, 3, 4], &[0, 1], &probs)],
            },
            PatientPrediction { visits: vec![vp(&[4], &[], &[3], &probs)] },
            PatientPrediction { visits: vec![] },
        ];
        let ddi = ddi5();
        let m = evaluate(&patients, &ddi, MetricOptions::CLEAN);
        // patient A: J 2/3, 2/3; P 1, 2/3; R 2/3, 1; F1 0.8, 0.8. Patient B: all 0.
        assert!(close(m.jaccard, (2.0 / 3.0) / 2.0));
        assert!(close(m.precision, 5.0 / 12.0));
        assert!(close(m.recall, 5.0 / 12.0));
        assert!(close(m.f1, 0.4));
        // Err(add): A 1 and 1, B 1. Err(remove): all 0.
        assert!(close(m.err_add, 1.0) && close(m.err_remove, 0.0));
        // pooled DDI over {0,1} (1 of 1), {2,3,4} (1 of 3), {}: 2 / 4
        assert!(close(m.ddi_rate, 0.5));
        assert!(close(m.avg_med, 5.0 / 3.0));
        assert_eq!((m.patients, m.visits), (2, 3));
        // PRAUC: per-visit average precision, patient mean, then mean
        let ap = |t: &[u32]| average_precision(&(0..5u32).map(|j| t.contains(&j)).collect::<Vec<_>>(), &probs);
        let want = ((ap(&[0, 1, 2]) + ap(&[2, 3])) / 2.0 + ap(&[4])) / 2.0;
        assert!(close(m.prauc, want));

        // Quirk: A's first visit is scored against its final set {2,3,4}:
        // J 1/5, P 1/3, R 1/3, F1 1/3.
        let q = evaluate(&patients, &ddi, MetricOptions::REFERENCE);
        assert!(close(q.jaccard, ((0.2 + 2.0 / 3.0) / 2.0) / 2.0));
        assert!(close(q.precision, ((1.0 / 3.0 + 2.0 / 3.0) / 2.0) / 2.0));
        assert!(close(q.recall, ((1.0 / 3.0 + 1.0) / 2.0) / 2.0));
        assert!(close(q.f1, ((1.0 / 3.0 + 0.8) / 2.0) / 2.0));
        // unaffected by the quirk
        assert_eq!(
            (q.ddi_rate, q.prauc, q.err_add, q.err_remove, q.avg_med),
            (m.ddi_rate, m.prauc, m.err_add, m.err_remove, m.avg_med)
        );
        // a patient with a single scored visit is the same either way
        let one = &patients[1..2];
        assert_eq!(evaluate(one, &ddi, MetricOptions::CLEAN), evaluate(one, &ddi, MetricOptions::REFERENCE));
    }

    /// The demo fixture run through a re-enactment of the reference eval()
    /// loop in Python (numpy 2.4.6, sklearn 1.9.1), with a fake probability
    /// source p(patient, t, j) = ((7 patient + 31 t + 17 j) mod 100) / 100 and
    /// thresholds 0.8 / 0.2; "reference" keeps its aliasing of `y_old`.
    #[test]
    fn evaluate_matches_reference_loop_on_demo_fixture() {
        use crate::ml::formats::{read_ddi_csv, read_micron_layout};
        let dir =
            std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/micron-layout/mimic3-demo"));
        let (patients, voc) = read_micron_layout(dir).unwrap();
        let (ddi, skipped) = DdiMatrix::from_pairs(&read_ddi_csv(&dir.join("ddi_atc3_pairs.csv")).unwrap(), &voc.med);
        assert_eq!(skipped, 0);
        let n = voc.med.len();
        let preds: Vec<PatientPrediction> = patients
            .iter()
            .enumerate()
            .filter(|(_, p)| p.visits.len() >= 2)
            .map(|(pi, p)| {
                let encode = |t: usize| {
                    let mut v: Vec<u32> =
                        p.visits[t].medications.as_ref().unwrap().iter().map(|c| voc.med.get(c).unwrap()).collect();
                    v.sort_unstable();
                    v
                };
                let mut prev = encode(0);
                let mut visits = Vec::new();
                for t in 1..p.visits.len() {
                    let probs: Vec<f32> =
                        (0..n).map(|j| (((pi * 7 + t * 31 + j * 17) % 100) as f64 / 100.0) as f32).collect();
                    let predicted = apply_thresholds(&prev, &probs, 0.8, 0.2);
                    visits.push(VisitPrediction { truth: encode(t), predicted: predicted.clone(), probs, prev });
                    prev = predicted;
                }
                PatientPrediction { visits }
            })
            .collect();
        let near = |a: f64, b: f64| (a - b).abs() < 1e-12;
        let m = evaluate(&preds, &ddi, MetricOptions::CLEAN);
        let want = [
            0.07926879252397738,
            0.3033510036808449,
            0.26613585047254534,
            0.38203085759743105,
            0.6206535236634724,
            0.45761435490424757,
            15.353146853146853,
            10.031468531468532,
            31.2,
        ];
        let got = [m.ddi_rate, m.jaccard, m.prauc, m.precision, m.recall, m.f1, m.err_add, m.err_remove, m.avg_med];
        assert!(got.iter().zip(want).all(|(g, w)| near(*g, w)), "{got:?}");
        assert_eq!((m.patients, m.visits), (11, 25));
        let q = evaluate(&preds, &ddi, MetricOptions::REFERENCE);
        let want = [
            0.07926879252397738,
            0.2916260414452463,
            0.26613585047254534,
            0.36940777806258684,
            0.6001095115883598,
            0.4419123299241505,
            15.353146853146853,
            10.031468531468532,
            31.2,
        ];
        let got = [q.ddi_rate, q.jaccard, q.prauc, q.precision, q.recall, q.f1, q.err_add, q.err_remove, q.avg_med];
        assert!(got.iter().zip(want).all(|(g, w)| near(*g, w)), "{got:?}");
    }

    #[test]
    fn thresholds_update_the_previous_set() {
        let probs = [0.9, 0.5, 0.1, 0.85, 0.3];
        assert_eq!(apply_thresholds(&[1, 2, 4], &probs, 0.8, 0.2), vec![0, 1, 3, 4]);
        // crossed thresholds: removal wins, as in the reference
        assert_eq!(apply_thresholds(&[], &probs, 0.2, 0.95), Vec::<u32>::new());
    }

    #[test]
    fn evaluate_empty_inputs() {
        assert_eq!(evaluate(&[], &ddi5(), MetricOptions::CLEAN), Metrics::default());
        let m = evaluate(
            &[PatientPrediction { visits: vec![vp(&[], &[], &[], &[0.0; 5])] }],
            &ddi5(),
            MetricOptions::CLEAN,
        );
        assert_eq!(
            (m.jaccard, m.precision, m.recall, m.f1, m.prauc, m.ddi_rate, m.avg_med),
            (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        );
        assert_eq!((m.patients, m.visits), (1, 1));
    }

    #[test]
    fn ddi_rate_pools_pairs() {
        let d = ddi5();
        assert!(close(ddi_rate(&[vec![0, 1], vec![2, 3, 4], vec![]], &d), 0.5));
        assert!(close(ddi_rate(&[vec![1, 0, 1]], &d), 1.0));
        assert_eq!(ddi_rate(&[vec![3]], &d), 0.0);
    }

    #[test]
    fn copy_previous_baseline() {
        let meds = vec![vec![vec![0, 1], vec![1, 2], vec![2]], vec![vec![3]]];
        let p = copy_previous(&meds, 5);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].visits[1], vp(&[2], &[1, 2], &[1, 2], &[0.0, 1.0, 1.0, 0.0, 0.0]));
        let m = evaluate(&p, &ddi5(), MetricOptions::CLEAN);
        assert!(close(m.jaccard, (1.0 / 3.0 + 0.5) / 2.0));
        assert_eq!(m.err_add, 0.5); // visit 1 misses the add of 2 (1); visit 2 is right (0)
        assert_eq!(m.err_remove, 1.0); // visit 1 misses the removal of 0, visit 2 that of 1
    }

    #[test]
    fn table_and_json() {
        let m =
            Metrics { jaccard: 0.5234, ddi_rate: 0.0741, avg_med: 20.8, patients: 2, visits: 3, ..Default::default() };
        let t = format_table(&[("MICRON clean", m), ("MICRON quirk", m)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("model        ") && lines[0].contains("Jaccard"));
        assert!(lines[1].contains("0.5234") && lines[1].contains("0.0741") && lines[1].contains("20.8"));
        assert!(lines.iter().all(|l| l.len() == lines[0].len()));
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Metrics>(&json).unwrap(), m);
    }
}
