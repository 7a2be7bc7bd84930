//! MICRON benchmark: prints tables, asserts nothing.
//!
//!     cargo bench --bench micron -- [--patients N] [--epochs E] [--backends flex,ndarray] [--skip-train]
//!
//! 1. Faithful-recipe training time per epoch on a synthetic cohort with the
//!    reference's shape (vocabularies 1958/1430/131, ~13.6 diagnoses, 4.5
//!    procedures, 19.2 medications per visit, 2.37 visits per patient), per
//!    CPU backend, and the same scaled to the reference's 3,810 training
//!    patients (60 % of 6,350).
//! 2. Cost of one prediction at history length L for: MICRON's incremental
//!    step from a stored state, MICRON re-reading the history (replay), and
//!    the full-history GRU baseline (burn forward over the history).
use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::Instant;

use medchange::ml::backend::BackendChoice;
use medchange::ml::baselines::{GruBaselineConfig, GruPredictor};
use medchange::ml::data::{DdiMatrix, Patient, Visit};
use medchange::ml::micron::{MicronConfig, MicronPredictor, PrevSource, Thresholds, TrainConfig, train};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const REF_TRAIN_PATIENTS: f64 = 3810.0;

fn codes(rng: &mut StdRng, n: usize, mean: f64) -> Vec<u32> {
    let k = ((mean * rng.random_range(0.5..1.5)) as usize).max(1);
    let s: BTreeSet<u32> = (0..k).map(|_| rng.random_range(0..n as u32)).collect();
    s.into_iter().collect()
}

fn visit(rng: &mut StdRng, cfg: &MicronConfig) -> Visit {
    Visit { diag: codes(rng, cfg.n_diag, 13.6), proc: codes(rng, cfg.n_proc, 4.5), med: codes(rng, cfg.n_med, 19.2) }
}

fn cohort(n: usize, cfg: &MicronConfig, seed: u64) -> Vec<Patient> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            // 2.37 visits on average, at least 2 (patients with one visit are skipped anyway).
            let t = 2 + (rng.random_range(0.0..1.0f64) < 0.25) as usize + (rng.random_range(0.0..1.0f64) < 0.12) as usize;
            Patient { visits: (0..t).map(|_| visit(&mut rng, cfg)).collect() }
        })
        .collect()
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Median wall time per call in microseconds.
fn time_us(mut f: impl FnMut(), min_iters: usize) -> f64 {
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < min_iters || (start.elapsed().as_secs_f64() < 0.3 && samples.len() < 10_000) {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[samples.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n_patients: usize = arg(&args, "--patients", 400);
    let epochs: usize = arg(&args, "--epochs", 1);
    let backends: String = arg(&args, "--backends", "flex,ndarray".to_string());
    let skip_train = args.iter().any(|a| a == "--skip-train");
    let cfg = MicronConfig::new(1958, 1430, 131);
    let mut ddi = DdiMatrix::new(cfg.n_med);
    let mut rng = StdRng::seed_from_u64(99);
    for _ in 0..800 {
        ddi.set(rng.random_range(0..131), rng.random_range(0..131));
    }

    if !skip_train {
        let patients = cohort(n_patients, &cfg, 1);
        let val = cohort(100, &cfg, 2);
        println!("## Faithful recipe (RMSprop, one step per patient), {n_patients} synthetic patients, {epochs} epoch(s)\n");
        println!("| backend | s/epoch (measured) | s/epoch scaled to 3,810 patients | val s/epoch |");
        println!("|---|---|---|---|");
        for b in backends.split(',') {
            let choice: BackendChoice = match b.parse() {
                Ok(c) => c,
                Err(e) => {
                    println!("| {b} | {e} | | |");
                    continue;
                }
            };
            let tc = TrainConfig { epochs, ..TrainConfig::default() };
            let out = train(&cfg, &patients, &val, &ddi, &tc, &choice.autodiff_device(), &mut |_| {}, &|| false)
                .expect("training inputs are consistent");
            let s = out.history.iter().map(|h| h.train_seconds).sum::<f64>() / epochs as f64;
            let v = out.history.iter().map(|h| h.val_seconds).sum::<f64>() / epochs as f64;
            println!("| {choice} | {s:.2} | {:.1} | {v:.3} |", s * REF_TRAIN_PATIENTS / n_patients as f64);
        }
        println!();
    }

    let dev = BackendChoice::Flex.device();
    dev.seed(1);
    let micron = MicronPredictor::new(cfg.init(&dev).to_weights());
    let gru = GruPredictor {
        model: GruBaselineConfig::new(cfg.n_diag, cfg.n_proc, cfg.n_med).init(&dev),
        threshold: 0.5,
    };
    let th = Thresholds::default();
    println!("## One prediction at history length L (median µs; MICRON in plain Rust, GRU through burn on flex)\n");
    println!("| L | MICRON step from state | MICRON replay of history | GRU re-reading history |");
    println!("|---|---|---|---|");
    let mut rng = StdRng::seed_from_u64(5);
    for l in [1usize, 5, 20, 50] {
        // L visits of history, predicting visit L (index L).
        let visits: Vec<Visit> = (0..=l).map(|_| visit(&mut rng, &cfg)).collect();
        let (state, _) = micron.replay(&visits[..l], th, PrevSource::Predicted);
        let step = time_us(|| { black_box(micron.step(&state, &visits[l], th, None)); }, 200);
        let replay = time_us(|| { black_box(micron.replay(&visits, th, PrevSource::Predicted)); }, 50);
        let g = time_us(|| { black_box(gru.predict(&visits)); }, 10);
        println!("| {l} | {step:.1} | {replay:.1} | {g:.1} |");
    }
}
