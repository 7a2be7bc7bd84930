//! Training data: the stored visits as of a job's first start.
//!
//! The snapshot is taken by the claim statement of the job's first attempt
//! ([`crate::store::jobs::claim`]). It records the newest visit `created_at` included and the
//! counts at that moment; every attempt of the job (and every evaluation
//! that names it) reads visits with `created_at <= as_of`, patients in id
//! order, visits in time order. Visits of patients erased since are gone
//! (erasure wins over reproducibility).
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::ml::data::{RawPatient, RawVisit, Split};

/// Which stored data a job used.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct DataSnapshot {
    /// `created_at` of the newest visit included; `null` when there was none.
    pub as_of: Option<DateTime<Utc>>,
    /// The id of that visit.
    pub last_visit_id: Option<Uuid>,
    pub visits: i64,
    pub patients: i64,
    pub taken_at: DateTime<Utc>,
}

/// The patients of a snapshot, in id order.
#[derive(Debug, Clone)]
pub struct TrainingData {
    pub snapshot: DataSnapshot,
    pub patients: Vec<RawPatient>,
}

impl TrainingData {
    /// The split by patient with `seed` (60 % train, 20 % test, 20 %
    /// validation after a seeded shuffle, as the MICRON reference does).
    pub fn split(&self, seed: u64) -> Split {
        Split::numpy_shuffle(self.patients.len(), seed)
    }

    /// The split as stored with a model (`split.json`): patient ids.
    pub fn split_file(&self, split: &Split) -> SplitFile {
        let ids = |ix: &[usize]| ix.iter().map(|&i| self.patients[i].id.clone()).collect();
        SplitFile { seed: split.seed, train: ids(&split.train), val: ids(&split.val), test: ids(&split.test) }
    }

    /// The patients named by a stored split part, in the data's order
    /// (patients erased since are skipped).
    pub fn select(&self, ids: &[String]) -> Vec<&RawPatient> {
        let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        self.patients.iter().filter(|p| wanted.contains(p.id.as_str())).collect()
    }
}

/// A split by patient id, as saved beside a model (`split.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SplitFile {
    pub seed: u64,
    pub train: Vec<String>,
    pub val: Vec<String>,
    pub test: Vec<String>,
}

/// Reads the visits of a snapshot.
pub async fn load(db: &PgPool, snapshot: &DataSnapshot) -> anyhow::Result<TrainingData> {
    let Some(as_of) = snapshot.as_of else {
        return Ok(TrainingData { snapshot: snapshot.clone(), patients: vec![] });
    };
    type Row = (Uuid, Vec<String>, Vec<String>, Option<Vec<String>>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT patient_id, diagnoses, procedures, medications FROM visits WHERE created_at <= $1
         ORDER BY patient_id, occurred_at, created_at, id",
    )
    .bind(as_of)
    .fetch_all(db)
    .await?;
    let mut patients: Vec<RawPatient> = vec![];
    let mut index: HashMap<Uuid, usize> = HashMap::new();
    for (pid, diagnoses, procedures, medications) in rows {
        let i = *index.entry(pid).or_insert_with(|| {
            patients.push(RawPatient { id: pid.to_string(), visits: vec![] });
            patients.len() - 1
        });
        patients[i].visits.push(RawVisit { diagnoses, procedures, medications });
    }
    Ok(TrainingData { snapshot: snapshot.clone(), patients })
}
