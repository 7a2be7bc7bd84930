//! Copy-previous: predict the previous visit's recorded medications.
use crate::ml::data::Visit;
use crate::ml::metrics::{PatientPrediction, VisitPrediction};

fn sorted(v: &[u32]) -> Vec<u32> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// Evaluation view of one patient: visit t is predicted as visit t-1's true
/// medications (probability 1 for those, 0 otherwise); `prev` is the set
/// predicted one step earlier (visit 0's truth at t = 1). Fewer than two
/// visits give no visits.
pub fn copy_prev_patient(visits: &[Visit], n_med: usize) -> PatientPrediction {
    let mut out = Vec::new();
    let mut prev = visits.first().map(|v| sorted(&v.med)).unwrap_or_default();
    for t in 1..visits.len() {
        let predicted = sorted(&visits[t - 1].med);
        let mut probs = vec![0f32; n_med];
        for &m in &predicted {
            if (m as usize) < n_med {
                probs[m as usize] = 1.0;
            }
        }
        out.push(VisitPrediction {
            truth: sorted(&visits[t].med),
            predicted: predicted.clone(),
            probs,
            prev: std::mem::replace(&mut prev, predicted),
        });
    }
    PatientPrediction { visits: out }
}

/// [`copy_prev_patient`] for every patient with two or more visits.
pub fn copy_prev_patients<'a>(patients: impl IntoIterator<Item = &'a [Visit]>, n_med: usize) -> Vec<PatientPrediction> {
    patients.into_iter().filter(|v| v.len() >= 2).map(|v| copy_prev_patient(v, n_med)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visit(med: &[u32]) -> Visit {
        Visit { diag: vec![], proc: vec![], med: med.to_vec() }
    }

    #[test]
    fn predicts_previous_truth() {
        let p = copy_prev_patient(&[visit(&[2, 1]), visit(&[1, 3]), visit(&[0])], 4);
        assert_eq!(p.visits.len(), 2);
        assert_eq!(p.visits[0].predicted, vec![1, 2]);
        assert_eq!(p.visits[0].prev, vec![1, 2]);
        assert_eq!(p.visits[0].truth, vec![1, 3]);
        assert_eq!(p.visits[1].predicted, vec![1, 3]);
        assert_eq!(p.visits[1].prev, vec![1, 2]);
        assert_eq!(p.visits[1].probs, vec![0.0, 1.0, 0.0, 1.0]);
        assert!(copy_prev_patient(&[visit(&[1])], 4).visits.is_empty());
    }
}
