//! A synthetic cohort shaped like the MICRON MIMIC-III extract (micron.md,
//! "Reference data shape"), for `medchange synth`, demos and tests.
//!
//! The generator has latent structure a model can learn:
//! * chronic conditions persist across visits; each gives the patient a
//!   standing set of medications chosen at onset and kept (occasionally held);
//! * acute conditions come and go (a few carry over to the next visit) with
//!   short courses of their medications;
//! * every condition emits its own diagnosis codes and, mostly for acute
//!   ones, procedure codes;
//! * a set of ward medications is common at any visit;
//! * interacting medication pairs exist, and clinicians sometimes avoid
//!   them (the less essential drug is dropped), so the ground truth's DDI
//!   rate is lower than a random choice would give;
//! * random diagnosis, procedure and medication noise.
//!
//! Copying the previous visit's medications misses every acute change; a
//! model that reads the current diagnoses can see them. The constants below
//! keep the per-visit randomness of a medication that the structure calls
//! for modest (acute courses given 85-99 % of the time, standing ones 98 %,
//! interaction avoidance 10 %): at the default settings copy-previous scores
//! a Jaccard of about 0.49 and an oracle that knows the latent conditions
//! about 0.82, and MICRON lands in between (see the README). Randomness comes from
//! [`NumpyRandomState`] (MT19937), so a seed gives the same cohort on every
//! platform and crate version.
use std::collections::{BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use super::data::{RawPatient, RawVisit};
use super::rng::NumpyRandomState;

/// What to generate. Defaults follow the MIMIC-III extract of micron.md.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SynthConfig {
    pub seed: u64,
    pub patients: usize,
    /// Mean visits per patient (every patient has at least 2).
    pub mean_visits: f64,
    pub max_visits: usize,
    /// Size of each code universe (almost all codes occur in a full cohort).
    pub diag_codes: usize,
    pub proc_codes: usize,
    pub med_codes: usize,
    /// Target mean codes per visit.
    pub mean_diagnoses: f64,
    pub mean_procedures: f64,
    pub mean_medications: f64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            seed: 1203,
            patients: 6350,
            mean_visits: 2.37,
            max_visits: 29,
            diag_codes: 1958,
            proc_codes: 1430,
            med_codes: 131,
            mean_diagnoses: 13.6,
            mean_procedures: 4.5,
            mean_medications: 19.2,
        }
    }
}

/// A configuration the generator cannot honour.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("synth config: {0}")]
pub struct SynthConfigError(pub String);

impl SynthConfig {
    /// Checks the ranges the generator supports: code universes large
    /// enough for conditions and small enough for their code formats
    /// (diagnoses 50..=50000, procedures 10..=5000, medications 20..=2000),
    /// 2 <= mean_visits <= max_visits, non-negative code means.
    pub fn validate(&self) -> Result<(), SynthConfigError> {
        let err = |m: String| Err(SynthConfigError(m));
        for (name, v, lo, hi) in [
            ("diag_codes", self.diag_codes, 50, 50_000),
            ("proc_codes", self.proc_codes, 10, 5_000),
            ("med_codes", self.med_codes, 20, 2_000),
        ] {
            if v < lo || v > hi {
                return err(format!("{name} = {v}, expected {lo}..={hi}"));
            }
        }
        if self.max_visits < 2 || !(2.0..=self.max_visits as f64).contains(&self.mean_visits) {
            return err(format!(
                "mean_visits = {} and max_visits = {}: need 2 <= mean_visits <= max_visits",
                self.mean_visits, self.max_visits
            ));
        }
        for (name, v) in [
            ("mean_diagnoses", self.mean_diagnoses),
            ("mean_procedures", self.mean_procedures),
            ("mean_medications", self.mean_medications),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return err(format!("{name} = {v}, expected a finite non-negative number"));
            }
        }
        Ok(())
    }
}

/// A generated cohort: patients (ids `synth-000001`, ...) and the
/// interacting medication code pairs.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthCohort {
    pub patients: Vec<RawPatient>,
    pub ddi_pairs: Vec<(String, String)>,
    /// The latent model, for oracles and diagnostics.
    pub world: SynthWorld,
}

/// One latent condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub chronic: bool,
    /// Diagnosis code indices; the first is always recorded when active.
    pub diags: Vec<usize>,
    pub procs: Vec<usize>,
    /// Medication indices and the chance each is given (acute) or chosen as
    /// a standing medication at onset (chronic).
    pub meds: Vec<(usize, f64)>,
    /// Relative frequency.
    pub weight: f64,
}

/// The latent structure behind a cohort.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthWorld {
    pub diag_codes: Vec<String>,
    pub proc_codes: Vec<String>,
    pub med_codes: Vec<String>,
    pub conditions: Vec<Condition>,
    /// condition of each diagnosis code, if any
    pub condition_of_diag: Vec<Option<usize>>,
    /// ward medications and their per-visit chance
    pub ward_meds: Vec<(usize, f64)>,
    /// interaction flags, `n_med * n_med`
    interacts: Vec<bool>,
}

impl SynthWorld {
    pub fn interacts(&self, a: usize, b: usize) -> bool {
        self.interacts[a * self.med_codes.len() + b]
    }
}

// Structural constants (tuned so the defaults match micron.md's shape).
const CHRONIC_PER_PATIENT: f64 = 3.3;
const CHRONIC_ONSET_PER_VISIT: f64 = 0.25;
const CHRONIC_CONTINUES: f64 = 0.96;
const STANDING_GIVEN: f64 = 0.98;
const ACUTE_PER_VISIT: f64 = 2.2;
const ACUTE_CARRIES_OVER: f64 = 0.2;
const DIAG_EMIT: f64 = 0.4;
const PROC_EMIT_ACUTE: f64 = 0.6;
const PROC_EMIT_CHRONIC: f64 = 0.1;
const WARD_MEDS: usize = 7;
const DDI_DENSITY: f64 = 0.09;
const DDI_AVOIDED: f64 = 0.1;
/// Medications per visit that the structure yields at the default settings;
/// noise medications make up the difference to `mean_medications`.
const STRUCTURAL_MEDS: f64 = 18.4;

struct Rng(NumpyRandomState);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(NumpyRandomState::from_array(&[seed as u32, (seed >> 32) as u32]))
    }
    /// Uniform in [0, 1) with 53 bits, as numpy's `random_sample`.
    fn f64(&mut self) -> f64 {
        let a = (self.0.next_u32() >> 5) as f64;
        let b = (self.0.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }
    fn below(&mut self, n: usize) -> usize {
        self.0.interval(n as u64 - 1) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f64()
    }
    fn poisson(&mut self, lambda: f64) -> usize {
        if lambda <= 0.0 {
            return 0;
        }
        let limit = (-lambda).exp();
        let (mut k, mut p) = (0, self.f64());
        while p > limit {
            k += 1;
            p *= self.f64();
        }
        k
    }
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.f64();
        let v = self.f64();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    /// An index drawn with the given (unnormalized) weights.
    fn weighted(&mut self, cumulative: &[f64]) -> usize {
        let x = self.f64() * cumulative.last().copied().unwrap_or(0.0);
        cumulative.partition_point(|&c| c <= x).min(cumulative.len() - 1)
    }
}

fn unique_codes(rng: &mut Rng, n: usize, mut make: impl FnMut(&mut Rng) -> String) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let c = make(rng);
        if seen.insert(c.clone()) {
            out.push(c);
        }
    }
    out
}

fn digits(rng: &mut Rng, k: usize) -> String {
    (0..k).map(|_| char::from(b'0' + rng.below(10) as u8)).collect()
}

/// ICD-9 diagnosis-like: `4019`, `25000`, `486`, `V4581`, `E8798`.
fn diag_code(rng: &mut Rng) -> String {
    let r = rng.f64();
    if r < 0.85 {
        let extra = rng.below(3);
        format!("{}{}", digits(rng, 3), digits(rng, extra))
    } else if r < 0.97 {
        let extra = rng.below(3);
        format!("V{}{}", digits(rng, 2), digits(rng, extra))
    } else {
        format!("E{}{}", digits(rng, 3), digits(rng, 1))
    }
}

/// ICD-9 procedure-like (MIMIC style, no dot): `3893`, `966`, `9904`.
fn proc_code(rng: &mut Rng) -> String {
    let extra = 1 + rng.below(2);
    format!("{}{}", digits(rng, 2), digits(rng, extra))
}

/// ATC level 3: anatomical group, two-digit therapeutic group, letter.
fn med_code(rng: &mut Rng) -> String {
    const GROUPS: &[u8] = b"ABCDGHJLMNPRSV";
    let g = GROUPS[rng.below(GROUPS.len())] as char;
    let sub = char::from(b'A' + rng.below(8) as u8);
    format!("{g}{:02}{sub}", 1 + rng.below(20))
}

fn cumulative(weights: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut acc = 0.0;
    weights
        .map(|w| {
            acc += w;
            acc
        })
        .collect()
}

fn build_world(cfg: &SynthConfig, rng: &mut Rng) -> SynthWorld {
    let diag_codes = unique_codes(rng, cfg.diag_codes, diag_code);
    let proc_codes = unique_codes(rng, cfg.proc_codes, proc_code);
    let med_codes = unique_codes(rng, cfg.med_codes, med_code);
    let (nd, np, nm) = (cfg.diag_codes, cfg.proc_codes, cfg.med_codes);

    // ward medications: the first few after a shuffle
    let mut med_order: Vec<usize> = (0..nm).collect();
    rng.0.shuffle(&mut med_order);
    let n_ward = WARD_MEDS.min(nm / 4);
    let ward_meds: Vec<(usize, f64)> = med_order[..n_ward].iter().map(|&m| (m, rng.range(0.8, 0.97))).collect();
    let treat = &med_order[n_ward..];
    // treatment medications are not equally popular
    let treat_cum = cumulative((0..treat.len()).map(|i| 1.0 / (1.0 + i as f64 * 0.05)));

    // conditions take disjoint diagnosis codes: ~80 % of the universe
    let mut diag_order: Vec<usize> = (0..nd).collect();
    rng.0.shuffle(&mut diag_order);
    let mut proc_order: Vec<usize> = (0..np).collect();
    rng.0.shuffle(&mut proc_order);
    let mut conditions = Vec::new();
    let mut condition_of_diag = vec![None; nd];
    let (mut di, mut pi) = (0usize, 0usize);
    let diag_budget = nd * 9 / 10;
    while di + 5 <= diag_budget {
        let id = conditions.len();
        let chronic = rng.chance(0.35);
        let k = 2 + rng.below(4); // 2..=5 codes
        let diags: Vec<usize> = diag_order[di..di + k].to_vec();
        di += k;
        for &d in &diags {
            condition_of_diag[d] = Some(id);
        }
        let kp = if chronic { rng.below(2) } else { 1 + rng.below(3) };
        let procs: Vec<usize> = (0..kp).map(|_| proc_order[(pi + rng.below(3)) % np]).collect();
        pi = (pi + kp) % np;
        let km = if chronic { 2 + rng.below(4) } else { 2 + rng.below(3) };
        let mut meds: Vec<(usize, f64)> = Vec::new();
        while meds.len() < km.min(treat.len()) {
            let m = treat[rng.weighted(&treat_cum)];
            if !meds.iter().any(|(x, _)| *x == m) {
                let p = if chronic { rng.range(0.6, 0.95) } else { rng.range(0.85, 0.99) };
                meds.push((m, p));
            }
        }
        let weight = 1.0 / (1.0 + id as f64 * 0.1);
        conditions.push(Condition { chronic, diags, procs, meds, weight });
    }
    let mut interacts = vec![false; nm * nm];
    for a in 0..nm {
        for b in a + 1..nm {
            if rng.chance(DDI_DENSITY) {
                interacts[a * nm + b] = true;
                interacts[b * nm + a] = true;
            }
        }
    }
    SynthWorld { diag_codes, proc_codes, med_codes, conditions, condition_of_diag, ward_meds, interacts }
}

/// Medication priority when avoiding an interaction: the lower one goes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Priority {
    Noise,
    Ward,
    Acute,
    Standing,
}

struct PatientGen<'a> {
    world: &'a SynthWorld,
    chronic_cum: &'a [f64],
    chronic_ids: &'a [usize],
    acute_cum: &'a [f64],
    acute_ids: &'a [usize],
    diag_noise: f64,
    proc_noise: f64,
    med_noise: f64,
    noise_diags: Vec<usize>,
}

impl PatientGen<'_> {
    fn onset(&self, rng: &mut Rng, active: &mut Vec<(usize, Vec<usize>)>) {
        if self.chronic_ids.is_empty() {
            return;
        }
        let c = self.chronic_ids[rng.weighted(self.chronic_cum)];
        if active.iter().any(|(x, _)| *x == c) {
            return;
        }
        let cond = &self.world.conditions[c];
        let mut standing: Vec<usize> = cond.meds.iter().filter(|(_, p)| rng.chance(*p)).map(|(m, _)| *m).collect();
        if standing.is_empty() {
            standing.extend(cond.meds.first().map(|(m, _)| *m));
        }
        // a standing regimen avoids interactions with the other regimens
        let others: Vec<usize> = active.iter().flat_map(|(_, s)| s.iter().copied()).collect();
        standing.retain(|&m| !others.iter().any(|&o| self.world.interacts(m, o)) || rng.chance(0.5));
        active.push((c, standing));
    }

    fn patient(&self, rng: &mut Rng, n_visits: usize) -> Vec<RawVisit> {
        let w = self.world;
        let mut chronic: Vec<(usize, Vec<usize>)> = Vec::new();
        for _ in 0..rng.poisson(CHRONIC_PER_PATIENT) {
            self.onset(rng, &mut chronic);
        }
        let mut acute_prev: Vec<usize> = Vec::new();
        let mut visits = Vec::with_capacity(n_visits);
        for t in 0..n_visits {
            if t > 0 {
                chronic.retain(|_| rng.chance(CHRONIC_CONTINUES));
                if rng.chance(CHRONIC_ONSET_PER_VISIT) {
                    self.onset(rng, &mut chronic);
                }
            }
            let mut acute: Vec<usize> = acute_prev.iter().copied().filter(|_| rng.chance(ACUTE_CARRIES_OVER)).collect();
            let n_acute = if self.acute_ids.is_empty() { 0 } else { rng.poisson(ACUTE_PER_VISIT).max(1) };
            for _ in 0..n_acute {
                let c = self.acute_ids[rng.weighted(self.acute_cum)];
                if !acute.contains(&c) {
                    acute.push(c);
                }
            }
            let mut diags: Vec<usize> = Vec::new();
            let mut procs: Vec<usize> = Vec::new();
            let mut meds: Vec<(usize, Priority)> = Vec::new();
            let add_med =
                |m: usize, p: Priority, meds: &mut Vec<(usize, Priority)>| match meds.iter_mut().find(|(x, _)| *x == m)
                {
                    Some(e) => e.1 = e.1.max(p),
                    None => meds.push((m, p)),
                };
            for (c, standing) in &chronic {
                let cond = &w.conditions[*c];
                emit(rng, &cond.diags, DIAG_EMIT, &mut diags);
                for &p in &cond.procs {
                    if rng.chance(PROC_EMIT_CHRONIC) {
                        procs.push(p);
                    }
                }
                for &m in standing {
                    if rng.chance(STANDING_GIVEN) {
                        add_med(m, Priority::Standing, &mut meds);
                    }
                }
            }
            for &c in &acute {
                let cond = &w.conditions[c];
                emit(rng, &cond.diags, DIAG_EMIT, &mut diags);
                for &p in &cond.procs {
                    if rng.chance(PROC_EMIT_ACUTE) {
                        procs.push(p);
                    }
                }
                for &(m, p) in &cond.meds {
                    if rng.chance(p) {
                        add_med(m, Priority::Acute, &mut meds);
                    }
                }
            }
            // ward medications are more likely the sicker the visit looks
            let sickness = 0.6 + 0.2 * acute.len() as f64;
            for &(m, p) in &w.ward_meds {
                if rng.chance((p * sickness).min(0.97)) {
                    add_med(m, Priority::Ward, &mut meds);
                }
            }
            for _ in 0..rng.poisson(self.med_noise) {
                add_med(rng.below(w.med_codes.len()), Priority::Noise, &mut meds);
            }
            // incidental diagnoses: mostly codes no condition explains
            for _ in 0..rng.poisson(self.diag_noise) {
                if rng.chance(0.85) && !self.noise_diags.is_empty() {
                    diags.push(self.noise_diags[rng.below(self.noise_diags.len())]);
                } else {
                    diags.push(rng.below(w.diag_codes.len()));
                }
            }
            for _ in 0..rng.poisson(self.proc_noise) {
                procs.push(rng.below(w.proc_codes.len()));
            }
            // clinicians avoid most interacting pairs: drop the less essential drug
            let mut k = 0;
            while k < meds.len() {
                let (m, p) = meds[k];
                let clash = meds.iter().position(|&(o, q)| o != m && w.interacts(m, o) && q >= p);
                if clash.is_some() && p != Priority::Standing && rng.chance(DDI_AVOIDED) {
                    meds.remove(k);
                } else {
                    k += 1;
                }
            }
            // every visit has at least one code of each kind (as in the extract)
            if diags.is_empty() {
                diags.push(rng.below(w.diag_codes.len()));
            }
            if procs.is_empty() {
                procs.push(rng.below(w.proc_codes.len()));
            }
            if meds.is_empty() {
                meds.push((w.ward_meds[0].0, Priority::Ward));
            }
            visits.push(RawVisit {
                diagnoses: codes(&w.diag_codes, diags),
                procedures: codes(&w.proc_codes, procs),
                medications: Some(codes(&w.med_codes, meds.into_iter().map(|(m, _)| m).collect())),
            });
            acute_prev = acute;
        }
        visits
    }
}

fn emit(rng: &mut Rng, diags: &[usize], p: f64, out: &mut Vec<usize>) {
    for (i, &d) in diags.iter().enumerate() {
        if i == 0 || rng.chance(p) {
            out.push(d);
        }
    }
}

/// Codes of a visit, de-duplicated, in first-appearance order.
fn codes(universe: &[String], idx: Vec<usize>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    idx.into_iter().filter(|i| seen.insert(*i)).map(|i| universe[i].clone()).collect()
}

/// Draws a visit count >= 2 with the configured mean, capped at `max_visits`:
/// 2 + (0 with probability 1 - q, else ceil(lognormal)).
fn visit_count(rng: &mut Rng, cfg: &SynthConfig) -> usize {
    let extra_mean = (cfg.mean_visits - 2.0).max(0.0);
    if extra_mean == 0.0 || cfg.max_visits <= 2 {
        return 2.min(cfg.max_visits.max(1));
    }
    // ceil(lognormal(mu, SIGMA)) has mean about exp(mu + SIGMA^2 / 2) + 0.5
    const TAIL_MEAN: f64 = 1.5;
    const SIGMA: f64 = 1.3;
    // measured mean of the capped tail draw
    const TAIL_MEASURED: f64 = 1.6;
    let q = (extra_mean / TAIL_MEASURED).min(1.0);
    if !rng.chance(q) {
        return 2;
    }
    let mu = (TAIL_MEAN - 0.5).ln() - SIGMA * SIGMA / 2.0;
    let x = (mu + SIGMA * rng.normal()).exp().ceil() as usize;
    (2 + x.max(1)).min(cfg.max_visits)
}

/// Generates a cohort. Deterministic for a given configuration.
pub fn generate(cfg: &SynthConfig) -> Result<SynthCohort, SynthConfigError> {
    cfg.validate()?;
    let mut rng = Rng::new(cfg.seed);
    let world = build_world(cfg, &mut rng);
    let (mut chronic_ids, mut acute_ids) = (Vec::new(), Vec::new());
    for (i, c) in world.conditions.iter().enumerate() {
        if c.chronic { chronic_ids.push(i) } else { acute_ids.push(i) }
    }
    let chronic_cum = cumulative(chronic_ids.iter().map(|&i| world.conditions[i].weight));
    let acute_cum = cumulative(acute_ids.iter().map(|&i| world.conditions[i].weight));
    // expected structural codes per visit, the rest is noise
    let avg = |ids: &[usize], f: &dyn Fn(&Condition) -> f64| -> f64 {
        let total: f64 = ids.iter().map(|&i| world.conditions[i].weight).sum();
        ids.iter().map(|&i| world.conditions[i].weight * f(&world.conditions[i])).sum::<f64>() / total
    };
    let diag_per = |c: &Condition| 1.0 + (c.diags.len() - 1) as f64 * DIAG_EMIT;
    let n_chronic = CHRONIC_PER_PATIENT + 0.3;
    let n_acute = ACUTE_PER_VISIT + 0.25;
    let structural_diag = n_chronic * avg(&chronic_ids, &diag_per) + n_acute * avg(&acute_ids, &diag_per);
    let structural_proc = n_chronic * avg(&chronic_ids, &|c| c.procs.len() as f64 * PROC_EMIT_CHRONIC)
        + n_acute * avg(&acute_ids, &|c| c.procs.len() as f64 * PROC_EMIT_ACUTE);
    let generator = PatientGen {
        world: &world,
        chronic_cum: &chronic_cum,
        chronic_ids: &chronic_ids,
        acute_cum: &acute_cum,
        acute_ids: &acute_ids,
        diag_noise: (cfg.mean_diagnoses - structural_diag).max(0.0),
        proc_noise: (cfg.mean_procedures - structural_proc).max(0.0),
        med_noise: (cfg.mean_medications - STRUCTURAL_MEDS).max(0.0),
        noise_diags: (0..world.diag_codes.len()).filter(|&d| world.condition_of_diag[d].is_none()).collect(),
    };
    let patients = (0..cfg.patients)
        .map(|i| {
            let n = visit_count(&mut rng, cfg);
            RawPatient { id: format!("synth-{:06}", i + 1), visits: generator.patient(&mut rng, n) }
        })
        .collect();
    let nm = world.med_codes.len();
    let mut ddi_pairs = Vec::new();
    for a in 0..nm {
        for b in a + 1..nm {
            if world.interacts(a, b) {
                ddi_pairs.push((world.med_codes[a].clone(), world.med_codes[b].clone()));
            }
        }
    }
    Ok(SynthCohort { patients, ddi_pairs, world })
}

impl SynthCohort {
    /// The cohort as native records (`source` = `"synth"`), with visit
    /// times: patient i's first visit on 2130-01-01 plus i hours, later
    /// visits 20 to 200 days apart (deterministic).
    pub fn to_native(&self) -> Vec<super::formats::NativePatient> {
        const BASE: i64 = 5_049_129_600; // 2130-01-01T00:00:00Z
        self.patients
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut native = super::formats::NativePatient::from_raw(p);
                native.source = Some("synth".into());
                let mut at = BASE + i as i64 * 3600;
                for (t, v) in native.visits.iter_mut().enumerate() {
                    if t > 0 {
                        at += 86_400 * (20 + ((i * 37 + t * 101) % 181) as i64);
                    }
                    v.occurred_at = Some(format_rfc3339(at));
                }
                native
            })
            .collect()
    }
}

/// Files written by [`write_cohort`], inside the output directory.
pub const COHORT_FILES: [&str; 4] = ["patients.jsonl", "ddi_pairs.csv", "records.json", "voc.json"];

/// Writes a cohort into `dir` (created if missing): native JSON lines
/// (`patients.jsonl`), the interacting pairs (`ddi_pairs.csv`) and the
/// MICRON research layout (`records.json`, `voc.json`). Returns the paths.
pub fn write_cohort(cohort: &SynthCohort, dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let (records, voc) = super::formats::write_micron_layout(&cohort.patients, None)
        .expect("a vocabulary built from the patients covers them");
    let contents = [
        super::formats::write_native_jsonl(&cohort.to_native()),
        super::formats::write_ddi_csv(&cohort.ddi_pairs),
        records,
        voc,
    ];
    let mut paths = Vec::new();
    for (name, text) in COHORT_FILES.iter().zip(contents) {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        paths.push(path);
    }
    Ok(paths)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch.
pub fn format_rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil from days, Howard Hinnant's algorithm
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Predicts a visit's medications from its diagnoses and the previous
/// visit's medications, knowing the latent world: the ceiling a model that
/// reads diagnoses could approach (noise and random holds aside).
pub struct SynthOracle<'a> {
    world: &'a SynthWorld,
    diag_index: std::collections::HashMap<&'a str, usize>,
    med_index: std::collections::HashMap<&'a str, usize>,
}

impl SynthWorld {
    pub fn oracle(&self) -> SynthOracle<'_> {
        SynthOracle {
            world: self,
            diag_index: self.diag_codes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect(),
            med_index: self.med_codes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect(),
        }
    }
}

impl SynthOracle<'_> {
    /// Medication codes the oracle predicts for a visit.
    pub fn predict(&self, diagnoses: &[String], previous: &[String]) -> Vec<String> {
        let w = self.world;
        let prev: HashSet<usize> = previous.iter().filter_map(|c| self.med_index.get(c.as_str()).copied()).collect();
        let active: BTreeSet<usize> = diagnoses
            .iter()
            .filter_map(|d| self.diag_index.get(d.as_str()).and_then(|&i| w.condition_of_diag[i]))
            .collect();
        let mut out: BTreeSet<usize> = BTreeSet::new();
        let mut acute = 0usize;
        for &c in &active {
            let cond = &w.conditions[c];
            if cond.chronic {
                let standing: Vec<usize> = cond.meds.iter().map(|(m, _)| *m).filter(|m| prev.contains(m)).collect();
                if standing.is_empty() {
                    out.extend(cond.meds.iter().filter(|(_, p)| *p >= 0.75).map(|(m, _)| *m));
                } else {
                    out.extend(standing);
                }
            } else {
                acute += 1;
                out.extend(cond.meds.iter().filter(|(_, p)| *p >= 0.5).map(|(m, _)| *m));
            }
        }
        let sickness = 0.6 + 0.2 * acute as f64;
        out.extend(w.ward_meds.iter().filter(|(_, p)| p * sickness >= 0.5).map(|(m, _)| *m));
        out.into_iter().map(|m| w.med_codes[m].clone()).collect()
    }
}

/// Shape statistics of a raw cohort (micron.md's "Reference data shape").
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CohortStats {
    pub patients: usize,
    pub visits: usize,
    pub mean_visits: f64,
    pub max_visits: usize,
    pub diag_codes: usize,
    pub proc_codes: usize,
    pub med_codes: usize,
    pub mean_diagnoses: f64,
    pub mean_procedures: f64,
    pub mean_medications: f64,
    /// Between consecutive visits with known medications.
    pub mean_added: f64,
    pub mean_removed: f64,
    pub mean_kept: f64,
    /// Pooled DDI rate of the recorded medication sets.
    pub ddi_rate: f64,
}

/// Computes [`CohortStats`]; `ddi_pairs` are interacting code pairs.
pub fn cohort_stats(patients: &[RawPatient], ddi_pairs: &[(String, String)]) -> CohortStats {
    let mut s = CohortStats { patients: patients.len(), ..Default::default() };
    let (mut d, mut p, mut m) = (HashSet::new(), HashSet::new(), HashSet::new());
    let pairs: HashSet<(&str, &str)> =
        ddi_pairs.iter().flat_map(|(a, b)| [(a.as_str(), b.as_str()), (b.as_str(), a.as_str())]).collect();
    let (mut sum_d, mut sum_p, mut sum_m, mut med_visits) = (0usize, 0usize, 0usize, 0usize);
    let (mut added, mut removed, mut kept, mut transitions) = (0usize, 0usize, 0usize, 0usize);
    let (mut all_pairs, mut bad_pairs) = (0u64, 0u64);
    for pt in patients {
        s.visits += pt.visits.len();
        s.max_visits = s.max_visits.max(pt.visits.len());
        let mut prev: Option<HashSet<&str>> = None;
        for v in &pt.visits {
            sum_d += v.diagnoses.len();
            sum_p += v.procedures.len();
            d.extend(v.diagnoses.iter().map(String::as_str));
            p.extend(v.procedures.iter().map(String::as_str));
            let Some(meds) = &v.medications else {
                prev = None;
                continue;
            };
            let cur: HashSet<&str> = meds.iter().map(String::as_str).collect();
            m.extend(cur.iter().copied());
            sum_m += cur.len();
            med_visits += 1;
            let list: Vec<&str> = cur.iter().copied().collect();
            for (i, a) in list.iter().enumerate() {
                for b in &list[i + 1..] {
                    all_pairs += 1;
                    bad_pairs += pairs.contains(&(*a, *b)) as u64;
                }
            }
            if let Some(pr) = &prev {
                transitions += 1;
                added += cur.difference(pr).count();
                removed += pr.difference(&cur).count();
                kept += cur.intersection(pr).count();
            }
            prev = Some(cur);
        }
    }
    let div = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    s.mean_visits = div(s.visits, s.patients);
    s.diag_codes = d.len();
    s.proc_codes = p.len();
    s.med_codes = m.len();
    s.mean_diagnoses = div(sum_d, s.visits);
    s.mean_procedures = div(sum_p, s.visits);
    s.mean_medications = div(sum_m, med_visits);
    s.mean_added = div(added, transitions);
    s.mean_removed = div(removed, transitions);
    s.mean_kept = div(kept, transitions);
    s.ddi_rate = if all_pairs == 0 { 0.0 } else { bad_pairs as f64 / all_pairs as f64 };
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::data::{DdiMatrix, Vocabularies};
    use crate::ml::metrics::{MetricOptions, PatientPrediction, VisitPrediction, copy_previous, evaluate};

    /// (copy-previous, oracle) metrics over every patient of a cohort.
    fn baselines(c: &SynthCohort) -> (crate::ml::metrics::Metrics, crate::ml::metrics::Metrics) {
        let voc = Vocabularies::build(&c.patients);
        let (ddi, _) = DdiMatrix::from_pairs(&c.ddi_pairs, &voc.med);
        let n_med = voc.med.len();
        let enc = |codes: &[String]| -> Vec<u32> {
            let mut v: Vec<u32> = codes.iter().filter_map(|x| voc.med.get(x)).collect();
            v.sort_unstable();
            v
        };
        let meds: Vec<Vec<Vec<u32>>> = c
            .patients
            .iter()
            .map(|p| p.visits.iter().map(|v| enc(v.medications.as_deref().unwrap_or(&[]))).collect())
            .collect();
        let copy = evaluate(&copy_previous(&meds, n_med), &ddi, MetricOptions::CLEAN);
        let oracle = c.world.oracle();
        let preds: Vec<PatientPrediction> = c
            .patients
            .iter()
            .filter(|p| p.visits.len() >= 2)
            .map(|p| PatientPrediction {
                visits: p
                    .visits
                    .windows(2)
                    .map(|w| {
                        let prev = enc(w[0].medications.as_deref().unwrap_or(&[]));
                        let predicted =
                            enc(&oracle.predict(&w[1].diagnoses, w[0].medications.as_deref().unwrap_or(&[])));
                        let mut probs = vec![0.0; n_med];
                        for &j in &predicted {
                            probs[j as usize] = 1.0;
                        }
                        VisitPrediction {
                            truth: enc(w[1].medications.as_deref().unwrap_or(&[])),
                            predicted,
                            probs,
                            prev,
                        }
                    })
                    .collect(),
            })
            .collect();
        (copy, evaluate(&preds, &ddi, MetricOptions::CLEAN))
    }

    /// The default cohort matches micron.md's data shape, and copying the
    /// previous visit is clearly beaten by reading the diagnoses.
    #[test]
    fn default_cohort_shape_and_baselines() {
        let c = generate(&SynthConfig::default()).unwrap();
        let s = cohort_stats(&c.patients, &c.ddi_pairs);
        eprintln!("{s:#?}");
        let near = |x: f64, want: f64, tol: f64| (x - want).abs() <= tol;
        assert_eq!(s.patients, 6350);
        assert!(near(s.mean_visits, 2.37, 0.05), "{}", s.mean_visits);
        assert!(s.max_visits <= 29 && s.max_visits >= 15, "{}", s.max_visits);
        assert!(near(s.mean_diagnoses, 13.6, 0.7), "{}", s.mean_diagnoses);
        assert!(near(s.mean_procedures, 4.5, 0.3), "{}", s.mean_procedures);
        assert!(near(s.mean_medications, 19.2, 0.8), "{}", s.mean_medications);
        assert!(near(s.ddi_rate, 0.085, 0.007), "{}", s.ddi_rate);
        assert!(s.diag_codes >= 1900 && s.diag_codes <= 1958, "{}", s.diag_codes);
        assert!(s.proc_codes >= 1350 && s.proc_codes <= 1430, "{}", s.proc_codes);
        assert_eq!(s.med_codes, 131);
        assert!(s.mean_kept > 10.0 && s.mean_added > 6.0 && s.mean_removed > 6.0, "{s:?}");
        let (copy, oracle) = baselines(&c);
        eprintln!("{}", crate::ml::metrics::format_table(&[("copy-previous", copy), ("oracle", oracle)]));
        assert!(copy.jaccard > 0.38 && copy.jaccard < 0.5, "{}", copy.jaccard);
        assert!(oracle.jaccard > copy.jaccard + 0.12, "{} vs {}", oracle.jaccard, copy.jaccard);
    }

    #[test]
    fn deterministic_for_a_seed() {
        let cfg = SynthConfig { patients: 200, ..Default::default() };
        let (a, b) = (generate(&cfg).unwrap(), generate(&cfg).unwrap());
        assert_eq!(a.patients, b.patients);
        assert_eq!(a.ddi_pairs, b.ddi_pairs);
        let c = generate(&SynthConfig { seed: 7, ..cfg.clone() }).unwrap();
        assert_ne!(a.patients, c.patients);
        assert_eq!(a.patients[0].id, "synth-000001");
        // a fixed fingerprint: changes to the generator must be deliberate
        let first = &a.patients[0].visits[0];
        assert_eq!(first.medications.as_ref().unwrap()[..3], ["B03E", "A13D", "M06G"]);
        assert_eq!(first.diagnoses[..2], ["077", "367"]);
    }

    #[test]
    fn codes_look_like_their_systems_and_pass_validation() {
        let c = generate(&SynthConfig { patients: 300, ..Default::default() }).unwrap();
        let atc = |s: &str| {
            let b = s.as_bytes();
            b.len() == 4
                && b[0].is_ascii_uppercase()
                && b[1].is_ascii_digit()
                && b[2].is_ascii_digit()
                && b[3].is_ascii_uppercase()
        };
        let icd9 = |s: &str| {
            let (head, rest) = s.split_at(1);
            let digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
            match head {
                "V" => (3..=5).contains(&s.len()) && digits(rest),
                "E" => s.len() == 5 && digits(rest),
                _ => (3..=5).contains(&s.len()) && digits(s),
            }
        };
        let proc = |s: &str| (3..=4).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
        assert!(c.world.med_codes.iter().all(|m| atc(m)));
        assert!(c.world.diag_codes.iter().all(|d| icd9(d)));
        assert!(c.world.proc_codes.iter().all(|p| proc(p)));
        for p in &c.patients {
            for v in &p.visits {
                assert!(!v.diagnoses.is_empty() && !v.procedures.is_empty());
                let meds = v.medications.as_ref().unwrap();
                assert!(!meds.is_empty());
                for set in [&v.diagnoses, &v.procedures, meds] {
                    assert_eq!(&crate::ml::data::normalize_codes(set).unwrap(), set);
                }
            }
        }
        assert!(c.ddi_pairs.iter().all(|(a, b)| a != b && atc(a) && atc(b)));
        // native export passes the native reader
        let text = crate::ml::formats::write_native_jsonl(&c.to_native());
        let back = crate::ml::formats::parse_native_jsonl("synth.jsonl", &text).unwrap();
        assert_eq!(back.iter().map(|p| p.to_raw()).collect::<Vec<_>>(), c.patients);
        assert_eq!(back[0].visits[0].occurred_at.as_deref(), Some("2130-01-01T00:00:00Z"));
    }

    #[test]
    fn small_and_invalid_configs() {
        let tiny = SynthConfig {
            patients: 30,
            diag_codes: 50,
            proc_codes: 10,
            med_codes: 20,
            mean_visits: 3.0,
            max_visits: 5,
            ..Default::default()
        };
        let c = generate(&tiny).unwrap();
        assert_eq!(c.patients.len(), 30);
        assert!(c.patients.iter().all(|p| (2..=5).contains(&p.visits.len())));
        for bad in [
            SynthConfig { med_codes: 5, ..Default::default() },
            SynthConfig { mean_visits: 1.5, ..Default::default() },
            SynthConfig { max_visits: 1, ..Default::default() },
            SynthConfig { mean_diagnoses: f64::NAN, ..Default::default() },
            SynthConfig { proc_codes: 100_000, ..Default::default() },
        ] {
            assert!(generate(&bad).is_err(), "{bad:?}");
        }
        let none = generate(&SynthConfig { patients: 0, ..Default::default() }).unwrap();
        assert!(none.patients.is_empty() && !none.ddi_pairs.is_empty());
    }

    #[test]
    fn write_cohort_files_read_back() {
        use crate::ml::formats::{read_ddi_csv, read_micron_layout, read_native_jsonl};
        let c = generate(&SynthConfig { patients: 50, ..Default::default() }).unwrap();
        let dir = std::env::temp_dir().join(format!("medchange-synth-test-{}", std::process::id()));
        let paths = write_cohort(&c, &dir).unwrap();
        assert_eq!(paths.len(), 4);
        let native = read_native_jsonl(&dir.join("patients.jsonl")).unwrap();
        assert_eq!(native.iter().map(|p| p.to_raw()).collect::<Vec<_>>(), c.patients);
        assert_eq!(read_ddi_csv(&dir.join("ddi_pairs.csv")).unwrap(), c.ddi_pairs);
        let (layout, _) = read_micron_layout(&dir).unwrap();
        assert_eq!(layout.len(), 50);
        assert_eq!(layout[3].visits, c.patients[3].visits);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rfc3339_formatting_inverts_parsing() {
        for t in [0i64, 951_868_800, 1_709_166_600, 5_049_129_600, -86_400] {
            assert_eq!(crate::ml::formats::parse_rfc3339(&format_rfc3339(t)), Some(t));
        }
        assert_eq!(format_rfc3339(5_049_129_600), "2130-01-01T00:00:00Z");
    }
}
