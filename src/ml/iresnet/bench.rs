//! `medchange bench density`: prints tables, asserts nothing.
//!
//! 1. Scoring throughput (inputs per second, one thread) with the exact and
//!    the estimated log-determinant at each dimension, and the exact
//!    log-determinant batched through burn.
//! 2. Encode and invert latency with the mean fixed-point iterations.
//! 3. Training time per epoch (exact and estimated log-determinant).
//! 4. A 2-D Gaussian mixture with a known density: test negative
//!    log-likelihood against the true entropy and a full-covariance Gaussian.
//! 3. Out of distribution: held-out synthetic visits against copies with
//!    random codes swapped in, AUROC of the density of MICRON's health
//!    representation (with a Gaussian fit and a supervised two-Gaussian
//!    classifier as references).
//!
//! The timing models (1-3) have random weights scaled up so that every
//! layer sits at the spectral cap c: the slowest case for inversion.
use std::time::Instant;

use rand::{Rng, SeedableRng, rngs::StdRng};

use super::{
    IResNet, IResNetConfig, InvertOptions, LogDetMethod, Roulette, TrainSettings,
    data::{GaussianMixture, auroc},
    inference::Flow,
    linalg::GaussianFit,
    training,
};
use crate::config::DensityBenchArgs;
use crate::ml::{
    backend::BackendChoice,
    data::Visit,
    micron::{self, MicronConfig, Recipe, TrainConfig},
    pipeline::Prepared,
    synth,
};

fn capped_model(dim: usize, hidden: usize, blocks: usize, seed: u64) -> IResNet {
    let cfg = IResNetConfig::new(dim).with_hidden(hidden).with_blocks(blocks);
    let mut m = cfg.init(seed, &BackendChoice::Flex.device());
    let mut rng = StdRng::seed_from_u64(seed);
    let vals: Vec<Vec<f32>> =
        m.trainable_values().iter().map(|v| v.iter().map(|_| rng.random_range(-1.0f32..1.0) * 0.5).collect()).collect();
    m.set_trainable_values(&vals);
    m.power_iterate_all(1e-12, 200, 20_000);
    m
}

fn rows(n: usize, d: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| (0..d).map(|_| super::inference::normal(&mut rng)).collect()).collect()
}

fn per_sec(n: usize, t: Instant) -> f64 {
    n as f64 / t.elapsed().as_secs_f64().max(1e-9)
}

/// Runs the benchmark and prints its tables.
pub fn run(args: &DensityBenchArgs) -> anyhow::Result<()> {
    let (blocks, hidden) = (args.blocks, args.hidden);
    println!("density benchmark: {blocks} blocks, hidden {hidden}, c = 0.9; one thread unless noted\n");
    if !args.skip_speed {
        speed(args)?;
    }
    if !args.skip_train {
        train_speed(args)?;
    }
    if !args.skip_mixture {
        mixture(args)?;
    }
    if !args.skip_ood {
        ood(args)?;
    }
    Ok(())
}

fn speed(args: &DensityBenchArgs) -> anyhow::Result<()> {
    println!("## Scoring throughput (inputs/s) and latency\n");
    println!(
        "| d | exact (plain f64) | exact (burn batched, flex) | estimate, 8 samples (plain) | mean SE of the estimate, nats | µs per exact score |"
    );
    println!("|---|---|---|---|---|---|");
    let mut inv_rows = vec![];
    for &d in &args.dims {
        let model = capped_model(d, args.hidden, args.blocks, d as u64);
        let flow = model.to_flow();
        let n = args.inputs.max(10);
        let xs = rows(n, d, 7);
        let t = Instant::now();
        let exact: Vec<f64> = xs.iter().map(|x| flow.log_prob_exact(x)).collect();
        let exact_rate = per_sec(n, t);
        let t = Instant::now();
        let batched = training::log_prob_exact_batched(&model, &xs, 256);
        let batched_rate = per_sec(n, t);
        let agree = exact.iter().zip(&batched).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        let ne = (n / 4).max(10);
        let mut rng = StdRng::seed_from_u64(1);
        let t = Instant::now();
        let mut se = 0.0;
        for x in &xs[..ne] {
            let (_, e) = flow.forward_estimate(x, Roulette::EVAL, 8, &mut rng);
            se += e.std_error;
        }
        let est_rate = per_sec(ne, t);
        println!(
            "| {d} | {exact_rate:.0} | {batched_rate:.0} | {est_rate:.0} | {:.3} | {:.0} |",
            se / ne as f64,
            1e6 / exact_rate
        );
        if agree > 1e-2 {
            println!("  (burn batched and plain exact differ by up to {agree:.2e} nats)");
        }
        // Encode and invert.
        let ni = (n / 4).max(10);
        let t = Instant::now();
        let zs: Vec<Vec<f64>> = xs[..ni].iter().map(|x| flow.forward_exact(x).0).collect();
        let enc_us = 1e6 / per_sec(ni, t);
        let t = Instant::now();
        let inv: Vec<_> = zs.iter().map(|z| flow.inverse(z, InvertOptions::default())).collect();
        let inv_us = 1e6 / per_sec(ni, t);
        let iters = inv.iter().map(|i| i.iterations).sum::<usize>() as f64 / ni as f64;
        let err = inv
            .iter()
            .zip(&xs)
            .map(|(i, x)| i.x.iter().zip(x).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max))
            .fold(0.0, f64::max);
        let conv = inv.iter().filter(|i| i.converged).count();
        inv_rows.push(format!(
            "| {d} | {enc_us:.0} | {inv_us:.0} | {iters:.1} ({:.1} per block) | {err:.1e} | {conv}/{ni} |",
            iters / args.blocks as f64
        ));
    }
    println!("\n## Encode (exact log-det) and invert (tolerance 1e-6, cap 1000 per block)\n");
    println!("| d | encode µs | invert µs | mean iterations | max reconstruction error | converged |");
    println!("|---|---|---|---|---|---|");
    for r in inv_rows {
        println!("{r}");
    }
    println!();
    Ok(())
}

fn train_speed(args: &DensityBenchArgs) -> anyhow::Result<()> {
    println!("## Training time per epoch ({} inputs, batch 256, flex)\n", args.train_inputs);
    println!("| d | log-det | s/epoch | inputs/s |");
    println!("|---|---|---|---|");
    for &d in &args.dims {
        for method in [LogDetMethod::Exact, LogDetMethod::Estimate] {
            if method == LogDetMethod::Exact && d > 64 {
                continue;
            }
            let cfg = IResNetConfig::new(d).with_hidden(args.hidden).with_blocks(args.blocks);
            let data = rows(args.train_inputs, d, 3);
            let s = TrainSettings { epochs: 2, batch_size: 256, logdet: method, val_max: 0, ..Default::default() };
            let mut epoch_secs = vec![];
            training::train(
                &cfg,
                &s,
                &data,
                &[],
                &BackendChoice::Flex.device(),
                &mut |e| {
                    if let super::TrainEvent::Epoch { report, .. } = e {
                        epoch_secs.push(report.seconds)
                    }
                },
                &|| false,
            )?;
            let secs = epoch_secs.iter().sum::<f64>() / epoch_secs.len().max(1) as f64;
            println!("| {d} | {} | {secs:.2} | {:.0} |", method.as_str(), args.train_inputs as f64 / secs);
        }
    }
    println!();
    Ok(())
}

fn mixture(args: &DensityBenchArgs) -> anyhow::Result<()> {
    println!("## Gaussian mixture (2-D, known density)\n");
    let gm = GaussianMixture::demo_2d();
    let mut rng = StdRng::seed_from_u64(81);
    let n = args.mixture_inputs;
    let (train, val, test) = (gm.sample(n, &mut rng), gm.sample(n / 4, &mut rng), gm.sample(n, &mut rng));
    let (entropy, entropy_se) = gm.entropy(400_000, 82);
    let true_nll = -test.iter().map(|x| gm.log_pdf(x)).sum::<f64>() / n as f64;
    let gauss = GaussianFit::fit(&train).ok_or_else(|| anyhow::anyhow!("no Gaussian fit"))?;
    let gauss_nll = -test.iter().map(|x| gauss.log_pdf(x)).sum::<f64>() / n as f64;
    println!("| model | test NLL, nats | nats/dim above the entropy | bits/dim | training |");
    println!("|---|---|---|---|---|");
    println!(
        "| true density (entropy by Monte Carlo, ± {entropy_se:.4}) | {entropy:.4} | 0 | {:.4} | |",
        entropy / 2.0 / std::f64::consts::LN_2
    );
    println!("| true density on the test inputs | {true_nll:.4} | {:.4} | | |", (true_nll - entropy) / 2.0);
    println!(
        "| full-covariance Gaussian | {gauss_nll:.4} | {:.4} | {:.4} | |",
        (gauss_nll - entropy) / 2.0,
        gauss_nll / 2.0 / std::f64::consts::LN_2
    );
    for (method, blocks, epochs) in
        [(LogDetMethod::Exact, 6, args.mixture_epochs), (LogDetMethod::Estimate, 6, args.mixture_epochs)]
    {
        let cfg = IResNetConfig::new(2).with_blocks(blocks).with_hidden(64);
        let s = TrainSettings {
            epochs,
            batch_size: 128,
            learning_rate: 3e-3,
            warmup_steps: 50,
            ema_decay: Some(0.99),
            logdet: method,
            ..Default::default()
        };
        let t = Instant::now();
        let out = training::train(&cfg, &s, &train, &val, &BackendChoice::Flex.device(), &mut |_| {}, &|| false)?;
        let nll = -test.iter().map(|x| out.flow.log_prob_exact(x)).sum::<f64>() / n as f64;
        println!(
            "| i-ResNet, {blocks} blocks x 64, {} log-det in training | {nll:.4} | {:.4} | {:.4} | {epochs} epochs, {:.0} s |",
            method.as_str(),
            (nll - entropy) / 2.0,
            nll / 2.0 / std::f64::consts::LN_2,
            t.elapsed().as_secs_f64()
        );
    }
    println!("\n({n} training, {} validation, {n} test inputs.)\n", n / 4);
    Ok(())
}

fn ood(args: &DensityBenchArgs) -> anyhow::Result<()> {
    println!("## Out of distribution: held-out synthetic visits vs copies with random codes swapped in\n");
    let cfg = if args.ood_codes == "mimic" {
        synth::SynthConfig { patients: args.ood_patients, seed: 5, ..Default::default() }
    } else {
        synth::SynthConfig {
            patients: args.ood_patients,
            seed: 5,
            diag_codes: 200,
            proc_codes: 60,
            med_codes: 40,
            ..Default::default()
        }
    };
    let cohort = synth::generate(&cfg).map_err(|e| anyhow::anyhow!("{}", e.0))?;
    let prep = Prepared::new(&cohort.patients, &cohort.ddi_pairs, None, None)?;
    let (train_p, val_p, test_p) =
        (prep.part(&prep.split.train), prep.part(&prep.split.val), prep.part(&prep.split.test));
    let (nd, np, nm) = prep.data.vocab.sizes();
    let device = BackendChoice::Flex.device();
    let tc = TrainConfig {
        epochs: args.ood_micron_epochs,
        recipe: Recipe::MiniBatch { batch_patients: 32, lr: 1e-3 },
        ..Default::default()
    };
    let out =
        micron::train(&MicronConfig::new(nd, np, nm), &train_p, &val_p, &prep.ddi, &tc, &device, &mut |_| {}, &|| {
            false
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let w = out.weights;
    let h = |d: &[u32], p: &[u32]| -> Vec<f64> { w.health(d, p).into_iter().map(|x| x as f64).collect() };
    let visits =
        |ps: &[crate::ml::data::Patient]| -> Vec<Visit> { ps.iter().flat_map(|p| p.visits.iter().cloned()).collect() };
    let (tr_v, va_v, te_v) = (visits(&train_p), visits(&val_p), visits(&test_p));
    let tr: Vec<Vec<f64>> = tr_v.iter().map(|v| h(&v.diag, &v.proc)).collect();
    let va: Vec<Vec<f64>> = va_v.iter().map(|v| h(&v.diag, &v.proc)).collect();
    let te: Vec<Vec<f64>> = te_v.iter().map(|v| h(&v.diag, &v.proc)).collect();
    let corrupt = |vs: &[Visit], level: f64, seed: u64| -> Vec<Vec<f64>> {
        let mut rng = StdRng::seed_from_u64(seed);
        vs.iter()
            .map(|v| {
                let d: Vec<u32> = v
                    .diag
                    .iter()
                    .map(|&c| if rng.random_bool(level) { rng.random_range(0..nd as u32) } else { c })
                    .collect();
                let p: Vec<u32> = v
                    .proc
                    .iter()
                    .map(|&c| if rng.random_bool(level) { rng.random_range(0..np as u32) } else { c })
                    .collect();
                h(&d, &p)
            })
            .collect()
    };
    let icfg = IResNetConfig::new(w.dim).with_blocks(args.ood_blocks).with_hidden(args.ood_hidden);
    let s = TrainSettings {
        epochs: args.ood_density_epochs,
        batch_size: 128,
        logdet: LogDetMethod::Estimate,
        ..Default::default()
    };
    let t = Instant::now();
    let dens = training::train(&icfg, &s, &tr, &va, &device, &mut |_| {}, &|| false)?;
    let dens_secs = t.elapsed().as_secs_f64();
    let flow: &Flow = &dens.flow;
    let gauss = GaussianFit::fit(&tr).ok_or_else(|| anyhow::anyhow!("no Gaussian fit"))?;
    let f_scores = |xs: &[Vec<f64>]| xs.iter().map(|x| flow.log_prob_exact(x)).collect::<Vec<_>>();
    let g_scores = |xs: &[Vec<f64>]| xs.iter().map(|x| gauss.log_pdf(x)).collect::<Vec<_>>();
    let (f_clean, g_clean) = (f_scores(&te), g_scores(&te));
    let f_nll = -f_clean.iter().sum::<f64>() / te.len() as f64;
    let g_nll = -g_clean.iter().sum::<f64>() / te.len() as f64;
    println!(
        "{} patients ({} training / {} test visits), MICRON D = {} ({} epochs, mini-batch); density: {} blocks x {}, {} \
         epochs with the estimated log-det ({dens_secs:.0} s). Test NLL of h: i-ResNet {f_nll:.2}, Gaussian {g_nll:.2} nats.\n",
        args.ood_patients,
        tr.len(),
        te.len(),
        w.dim,
        args.ood_micron_epochs,
        args.ood_blocks,
        args.ood_hidden,
        args.ood_density_epochs
    );
    println!(
        "| codes swapped | i-ResNet log p(h) | Gaussian fit log p(h) | supervised ceiling (two Gaussians, fitted on corrupted training visits) |"
    );
    println!("|---|---|---|---|");
    for (i, level) in [0.25, 0.5, 1.0].into_iter().enumerate() {
        let bad = corrupt(&te_v, level, 10 + i as u64);
        let bad_tr = corrupt(&tr_v, level, 20 + i as u64);
        let gb = GaussianFit::fit(&bad_tr).ok_or_else(|| anyhow::anyhow!("no Gaussian fit"))?;
        let lr = |xs: &[Vec<f64>]| xs.iter().map(|x| gauss.log_pdf(x) - gb.log_pdf(x)).collect::<Vec<_>>();
        println!(
            "| {:.0} % | {:.3} | {:.3} | {:.3} |",
            level * 100.0,
            auroc(&f_clean, &f_scores(&bad)),
            auroc(&g_clean, &g_scores(&bad)),
            auroc(&lr(&te), &lr(&bad))
        );
    }
    let norm = |xs: &[Vec<f64>]| xs.iter().map(|x| x.iter().map(|v| v * v).sum::<f64>().sqrt()).collect::<Vec<_>>();
    let bad = corrupt(&te_v, 1.0, 12);
    println!(
        "\nMean |h|: held-out {:.3}, all codes swapped {:.3} (random codes' embeddings do not add up: a swapped visit's h \
         lies nearer the centre of the distribution, where the density is high).\n",
        norm(&te).iter().sum::<f64>() / te.len() as f64,
        norm(&bad).iter().sum::<f64>() / bad.len() as f64
    );
    Ok(())
}
