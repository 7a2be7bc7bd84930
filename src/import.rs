//! `medchange import`: loads files into PostgreSQL. Each file is parsed and
//! validated whole first (errors name file, line and reason), then written
//! in batches inside one transaction, so a failure leaves nothing behind.
//! Patients that already exist (same source and external id) are skipped
//! and counted, never merged.
use std::{collections::BTreeMap, fmt, path::Path};

use chrono::{DateTime, TimeZone, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::ml::{
    data::RawPatient,
    formats::{self, NativePatient},
};

/// Rows per INSERT statement.
const BATCH: usize = 500;

/// What an import wrote and what it skipped, with reasons.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub patients: usize,
    pub visits: usize,
    pub ddi_pairs: usize,
    /// Reason -> count.
    pub skipped: BTreeMap<String, usize>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "imported {} patients, {} visits, {} interaction pairs", self.patients, self.visits, self.ddi_pairs)?;
        for (why, n) in &self.skipped {
            write!(f, "\n  skipped {n}: {why}")?;
        }
        Ok(())
    }
}

fn bar(len: usize, show: bool, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, ETA {eta})")
            .expect("template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// A patient ready to insert: visits with times, in order.
struct Prepared {
    external_id: String,
    visits: Vec<(DateTime<Utc>, Vec<String>, Vec<String>, Option<Vec<String>>)>,
}

/// Imports the native JSON-lines format (see `ml::formats`).
pub async fn native(pool: &PgPool, path: &Path, default_source: &str, progress: bool) -> anyhow::Result<Summary> {
    let patients = formats::read_native_jsonl(path)?;
    let mut by_source: BTreeMap<String, Vec<Prepared>> = BTreeMap::new();
    for p in patients {
        let source = p.source.clone().unwrap_or_else(|| default_source.to_string());
        by_source.entry(source).or_default().push(prepare_native(p));
    }
    write_patients(pool, by_source, progress).await
}

fn prepare_native(p: NativePatient) -> Prepared {
    // Visits without a time keep file order, one day apart after the last
    // known time (or from 2000-01-01).
    let mut last = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap();
    let visits = p
        .visits
        .into_iter()
        .map(|v| {
            let t = v
                .occurred_at
                .as_deref()
                .and_then(formats::parse_rfc3339)
                .and_then(|s| Utc.timestamp_opt(s, 0).single())
                .unwrap_or(last + chrono::Duration::days(1));
            last = t;
            (t, v.diagnoses, v.procedures, v.medications)
        })
        .collect();
    Prepared { external_id: p.external_id, visits }
}

fn prepare_raw(p: RawPatient) -> Prepared {
    let start = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap();
    let visits = p
        .visits
        .into_iter()
        .enumerate()
        .map(|(i, v)| (start + chrono::Duration::days(30 * i as i64), v.diagnoses, v.procedures, v.medications))
        .collect();
    Prepared { external_id: p.id, visits }
}

/// Imports the MICRON research layout (`records.json` + `voc.json` in `dir`).
/// Patients are named by their index in `records.json`; visits get
/// synthetic times 30 days apart (the layout has none) in file order.
pub async fn micron(pool: &PgPool, dir: &Path, source: &str, progress: bool) -> anyhow::Result<Summary> {
    let (patients, _voc) = formats::read_micron_layout(dir)?;
    let prepared = patients.into_iter().map(prepare_raw).collect();
    write_patients(pool, BTreeMap::from([(source.to_string(), prepared)]), progress).await
}

async fn write_patients(pool: &PgPool, by_source: BTreeMap<String, Vec<Prepared>>, progress: bool) -> anyhow::Result<Summary> {
    let total: usize = by_source.values().map(Vec::len).sum();
    let pb = bar(total, progress, "patients");
    let mut summary = Summary::default();
    let mut tx = pool.begin().await?;
    for (source, patients) in by_source {
        for chunk in patients.chunks(BATCH) {
            // Existing patients are skipped, not merged.
            let ids: Vec<&str> = chunk.iter().map(|p| p.external_id.as_str()).collect();
            let existing: Vec<String> =
                sqlx::query_scalar("SELECT external_id FROM patients WHERE source = $1 AND external_id = ANY($2)")
                    .bind(&source)
                    .bind(&ids)
                    .fetch_all(&mut *tx)
                    .await?;
            let existing: std::collections::HashSet<String> = existing.into_iter().collect();
            let fresh: Vec<(Uuid, &Prepared)> =
                chunk.iter().filter(|p| !existing.contains(&p.external_id)).map(|p| (Uuid::now_v7(), p)).collect();
            if !existing.is_empty() {
                *summary.skipped.entry(format!("patient already exists in source {source:?}")).or_default() += existing.len();
            }
            if !fresh.is_empty() {
                let mut q = QueryBuilder::<Postgres>::new("INSERT INTO patients (id, source, external_id, visit_count) ");
                q.push_values(&fresh, |mut b, (id, p)| {
                    b.push_bind(*id).push_bind(&source).push_bind(&p.external_id).push_bind(p.visits.len() as i32);
                });
                q.build().execute(&mut *tx).await?;
                let visits: Vec<_> = fresh
                    .iter()
                    .flat_map(|(id, p)| p.visits.iter().enumerate().map(move |(i, v)| (*id, i as i32 + 1, v)))
                    .collect();
                for vchunk in visits.chunks(BATCH) {
                    let mut q = QueryBuilder::<Postgres>::new(
                        "INSERT INTO visits (patient_id, id, seq, occurred_at, diagnoses, procedures, medications, source) ",
                    );
                    q.push_values(vchunk, |mut b, (pid, seq, v)| {
                        b.push_bind(*pid)
                            .push_bind(Uuid::now_v7())
                            .push_bind(*seq)
                            .push_bind(v.0)
                            .push_bind(&v.1)
                            .push_bind(&v.2)
                            .push_bind(&v.3)
                            .push_bind("import");
                    });
                    q.build().execute(&mut *tx).await?;
                }
                summary.patients += fresh.len();
                summary.visits += visits.len();
            }
            pb.inc(chunk.len() as u64);
        }
    }
    tx.commit().await?;
    pb.finish_and_clear();
    Ok(summary)
}

/// Imports interacting medication pairs from a CSV (see `ml::formats`).
/// Pairs already stored, and repeats within the file, are skipped.
pub async fn ddi(pool: &PgPool, path: &Path, source: &str, progress: bool) -> anyhow::Result<Summary> {
    let pairs = formats::read_ddi_csv(path)?;
    let mut unique = std::collections::BTreeSet::new();
    let mut summary = Summary::default();
    for (a, b) in pairs {
        let key = if a < b { (a, b) } else { (b, a) };
        if !unique.insert(key) {
            *summary.skipped.entry("pair repeated in the file".into()).or_default() += 1;
        }
    }
    let unique: Vec<_> = unique.into_iter().collect();
    let pb = bar(unique.len(), progress, "pairs");
    let mut tx = pool.begin().await?;
    for chunk in unique.chunks(BATCH) {
        let mut q = QueryBuilder::<Postgres>::new("INSERT INTO ddi_pairs (code_a, code_b, source) ");
        q.push_values(chunk, |mut b, (a, c)| {
            b.push_bind(a).push_bind(c).push_bind(source);
        });
        q.push(" ON CONFLICT DO NOTHING");
        let written = q.build().execute(&mut *tx).await?.rows_affected() as usize;
        summary.ddi_pairs += written;
        if written < chunk.len() {
            *summary.skipped.entry("pair already stored".into()).or_default() += chunk.len() - written;
        }
        pb.inc(chunk.len() as u64);
    }
    tx.commit().await?;
    pb.finish_and_clear();
    Ok(summary)
}

/// Every stored patient of a source with its visits in order, as the
/// models see them (id = external id).
pub async fn load_patients(pool: &PgPool, source: Option<&str>) -> anyhow::Result<Vec<RawPatient>> {
    type Row = (Uuid, String, Vec<String>, Vec<String>, Option<Vec<String>>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT p.id, p.external_id, v.diagnoses, v.procedures, v.medications
         FROM patients p JOIN visits v ON v.patient_id = p.id
         WHERE $1::text IS NULL OR p.source = $1
         ORDER BY p.id, v.seq",
    )
    .bind(source)
    .fetch_all(pool)
    .await?;
    let mut out: Vec<RawPatient> = vec![];
    let mut current = None;
    for (pid, ext, diagnoses, procedures, medications) in rows {
        if current != Some(pid) {
            current = Some(pid);
            out.push(RawPatient { id: ext, visits: vec![] });
        }
        out.last_mut().expect("pushed").visits.push(crate::ml::data::RawVisit { diagnoses, procedures, medications });
    }
    Ok(out)
}

/// Imports FHIR R4 files: Bundles (`.json`) and bulk NDJSON (`.ndjson`),
/// or every such file of a folder (e.g. Synthea's `output/fhir`), in name
/// order, one transaction per file (see `fhir::ingest`). A file that fails
/// stops the import with its name and the problems; earlier files stay.
pub async fn fhir(
    pool: &PgPool,
    path: &Path,
    opts: &crate::fhir::ingest::ImportOptions,
) -> anyhow::Result<FhirSummary> {
    let mut files: Vec<std::path::PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json" || x == "ndjson"))
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no .json or .ndjson file in {}", path.display());
    let mut summary = FhirSummary::default();
    for f in files {
        summary.files += 1;
        let bytes = std::fs::read(&f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        let is_ndjson = f.extension().is_some_and(|x| x == "ndjson");
        let explain = |e: crate::http::error::ApiError| {
            let p = e.to_problem();
            let mut s = format!("{}: {}", f.display(), p.detail);
            for fe in p.errors.iter().skip(1) {
                s.push_str(&format!("\n  {} at {}", fe.detail, fe.pointer));
            }
            anyhow::anyhow!(s)
        };
        let parsed = if is_ndjson { crate::fhir::parse_ndjson(&bytes) } else { crate::fhir::parse_bundle(&bytes) };
        let parsed = parsed.map_err(explain)?;
        let mut tx = pool.begin().await?;
        let report = crate::fhir::ingest::import(&mut tx, &parsed, opts).await.map_err(explain)?;
        tx.commit().await?;
        summary.summary.patients += report.patients_created + report.patients_matched;
        summary.summary.visits += report.visits_added;
        for (t, c) in &report.resources {
            for (why, n) in &c.skipped_reasons {
                *summary.summary.skipped.entry(format!("{t}: {why}")).or_default() += n;
            }
        }
        for (set, c) in &report.codes {
            let e = summary.codes.entry(set.clone()).or_default();
            e[0] += c.native;
            e[1] += c.mapped;
            e[2] += c.unmapped;
        }
    }
    Ok(summary)
}

/// What `import fhir` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FhirSummary {
    pub files: usize,
    pub summary: Summary,
    /// Per code set: native, mapped and unmapped codes.
    pub codes: BTreeMap<String, [usize; 3]>,
}

impl fmt::Display for FhirSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} file(s): {}", self.files, self.summary)?;
        for (set, [n, m, u]) in &self.codes {
            write!(f, "\n  {set} codes: {n} native, {m} mapped, {u} without a mapping (kept as alias:code)")?;
        }
        Ok(())
    }
}
