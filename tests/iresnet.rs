//! The invertible residual density model (iresnet.md) against oracles:
//! exact log-determinants against brute-force determinants of
//! finite-difference Jacobians, the Russian-roulette estimator's mean
//! against the exact value, the Neumann surrogate's gradient against the
//! exact gradient, the exact gradient against finite differences,
//! inversion, the spectral-norm bound, and training on a Gaussian mixture
//! with a known density.
use burn::{module::Module, optim::GradientsParams};
use medchange::ml::{
    backend::{BackendChoice, Device},
    iresnet::{
        Flow, IResNet, IResNetConfig, InvertOptions, LogDetMethod, LogDetMode, Roulette, TrainSettings,
        data::GaussianMixture,
        linalg::{self, GaussianFit},
        training::{self, SPECTRAL_SLACK},
    },
};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn device() -> Device {
    BackendChoice::Flex.device()
}

/// A module whose blocks are far from the identity: every weight scaled up
/// (spectral normalisation then caps each layer at c), ActNorm and LipSwish
/// slopes randomised.
fn random_model(dim: usize, hidden: usize, blocks: usize, seed: u64, device: &Device) -> IResNet {
    let cfg = IResNetConfig::new(dim).with_hidden(hidden).with_blocks(blocks);
    let mut m = cfg.init(seed, device);
    let mut rng = StdRng::seed_from_u64(seed + 1);
    let mut vals = m.trainable_values();
    for v in vals.iter_mut() {
        for x in v.iter_mut() {
            *x = rng.random_range(-1.0f32..1.0) * 1.5;
        }
    }
    m.set_trainable_values(&vals);
    m.power_iterate_all(1e-12, 200, 20_000);
    m
}

fn random_rows(n: usize, d: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| (0..d).map(|_| rng.random_range(-2.0..2.0)).collect()).collect()
}

/// The Jacobian of block `k`'s map `x -> x + g(x)` by central differences.
fn fd_jacobian(flow: &Flow, k: usize, x: &[f64]) -> Vec<f64> {
    let d = flow.dim;
    let h = 1e-5;
    let mut jac = vec![0.0; d * d];
    for j in 0..d {
        let (mut xp, mut xm) = (x.to_vec(), x.to_vec());
        xp[j] += h;
        xm[j] -= h;
        let (gp, gm) = (flow.block(k, &xp).g, flow.block(k, &xm).g);
        for i in 0..d {
            jac[i * d + j] = (gp[i] - gm[i]) / (2.0 * h) + if i == j { 1.0 } else { 0.0 };
        }
    }
    jac
}

#[test]
fn exact_logdet_equals_brute_force_determinants() {
    let dev = device();
    for (d, seed) in [(1, 1), (2, 2), (3, 3), (5, 4), (6, 5)] {
        let model = random_model(d, 16, 2, seed, &dev);
        let flow = model.to_flow();
        for x in random_rows(5, d, seed + 100) {
            for k in 0..flow.blocks() {
                let e = flow.block(k, &x);
                let ours = linalg::log_abs_det(&flow.jacobian_plus_identity(k, &e), d).0;
                let brute = linalg::det_leibniz(&fd_jacobian(&flow, k, &x), d);
                assert!(brute > 0.0, "det(I + J) must be positive, got {brute}");
                assert!((ours - brute.ln()).abs() < 1e-6, "d={d} block {k}: {ours} vs {}", brute.ln());
            }
        }
    }
    // At d = 16 against the trace series sum_k (-1)^{k+1} tr(J^k) / k with
    // exact traces (another formula for the same number).
    let d = 16;
    let model = random_model(d, 32, 1, 9, &dev);
    let flow = model.to_flow();
    let x = &random_rows(1, d, 10)[0];
    let e = flow.block(0, x);
    let mut j = flow.jacobian_plus_identity(0, &e);
    (0..d).for_each(|i| j[i * d + i] -= 1.0);
    let mut power = j.clone();
    let mut series = 0.0;
    for k in 1..=400 {
        let tr: f64 = (0..d).map(|i| power[i * d + i]).sum();
        series += if k % 2 == 1 { tr / k as f64 } else { -tr / k as f64 };
        let mut next = vec![0.0; d * d];
        for a in 0..d {
            for b in 0..d {
                next[a * d + b] = (0..d).map(|c| power[a * d + c] * j[c * d + b]).sum();
            }
        }
        power = next;
    }
    let lu = linalg::log_abs_det(&flow.jacobian_plus_identity(0, &e), d).0;
    assert!((lu - series).abs() < 1e-8, "{lu} vs {series}");
}

#[test]
fn batched_burn_scores_match_the_plain_flow() {
    let dev = device();
    let model = random_model(4, 16, 3, 21, &dev);
    let flow = model.to_flow();
    let rows = random_rows(40, 4, 22);
    let burn = training::log_prob_exact_batched(&model, &rows, 16);
    for (x, b) in rows.iter().zip(burn) {
        let p = flow.log_prob_exact(x);
        assert!((p - b).abs() < 1e-3 * p.abs().max(1.0), "{p} vs {b}");
    }
}

#[test]
fn estimator_mean_is_within_three_standard_errors_of_the_exact_value() {
    let dev = device();
    for (d, seed) in [(3, 31), (16, 32)] {
        let model = random_model(d, 32, 2, seed, &dev);
        let flow = model.to_flow();
        let mut rng = StdRng::seed_from_u64(seed);
        for x in random_rows(3, d, seed + 1) {
            let (z, exact) = flow.forward_exact(&x);
            // Training setting: two exact terms, the rest by roulette (the noisiest).
            let (z2, est) = flow.forward_estimate(&x, Roulette::TRAIN, 20_000, &mut rng);
            assert_eq!(z, z2);
            let gap = (est.mean - exact).abs();
            assert!(gap <= 3.0 * est.std_error, "d={d}: estimate {} ± {} vs exact {exact}", est.mean, est.std_error);
            assert!(
                est.std_error < 0.05 * exact.abs().max(1.0),
                "the standard error is usefully small: {}",
                est.std_error
            );
        }
    }
}

/// The gradient of the training loss with respect to every trainable
/// parameter, flattened.
fn loss_gradient(model: &IResNet, x: &[Vec<f64>], mode: LogDetMode, rng: &mut StdRng) -> Vec<f64> {
    let dev = model.device();
    let d = model.dim();
    let flat: Vec<f32> = x.iter().flatten().map(|&v| v as f32).collect();
    let t = burn::tensor::Tensor::<2>::from_data(burn::tensor::TensorData::new(flat, [x.len(), d]), &dev);
    let out = model.loss(t, mode, rng);
    let grads = GradientsParams::from_grads(out.surrogate.backward(), model);
    let mut g = vec![];
    for (id, rank) in model.trainable_ids() {
        let v: Vec<f32> = match rank {
            1 => grads.get::<1>(id).map(|t| t.try_into_vec_as::<f32>().unwrap()),
            _ => grads.get::<2>(id).map(|t| t.try_into_vec_as::<f32>().unwrap()),
        }
        .unwrap_or_default();
        g.extend(v.into_iter().map(|v| v as f64));
    }
    g
}

#[test]
fn exact_gradient_matches_finite_differences() {
    let dev = device().autodiff();
    let model = random_model(3, 8, 2, 41, &dev);
    let x = random_rows(6, 3, 42);
    let mut rng = StdRng::seed_from_u64(0);
    let grad = loss_gradient(&model, &x, LogDetMode::Exact, &mut rng);
    // Finite differences of the plain-Rust negative mean log-likelihood.
    let plain = model.valid();
    let base = plain.trainable_values();
    let nll = |vals: &[Vec<f32>]| {
        let mut m = plain.clone();
        m.set_trainable_values(vals);
        let f = m.to_flow();
        -x.iter().map(|r| f.log_prob_exact(r)).sum::<f64>() / x.len() as f64
    };
    let mut k = 0;
    let mut checked = 0;
    for (pi, p) in base.iter().enumerate() {
        for j in 0..p.len() {
            if k % 7 == 0 {
                let h = 1e-2f32.max(p[j].abs() * 1e-2);
                let (mut up, mut down) = (base.clone(), base.clone());
                up[pi][j] += h;
                down[pi][j] -= h;
                let fd = (nll(&up) - nll(&down)) / (2.0 * h as f64);
                assert!(
                    (fd - grad[k]).abs() < 2e-3 + 2e-2 * fd.abs(),
                    "parameter {pi}[{j}]: autodiff {} vs finite differences {fd}",
                    grad[k]
                );
                checked += 1;
            }
            k += 1;
        }
    }
    assert_eq!(k, grad.len());
    assert!(checked > 30);
}

#[test]
fn neumann_surrogate_gradient_agrees_with_the_exact_gradient() {
    let dev = device().autodiff();
    let model = random_model(4, 16, 2, 51, &dev);
    let x = random_rows(8, 4, 52);
    let mut rng = StdRng::seed_from_u64(53);
    let exact = loss_gradient(&model, &x, LogDetMode::Exact, &mut rng);
    let n = 1500;
    let p = exact.len();
    let (mut sum, mut sq) = (vec![0.0; p], vec![0.0; p]);
    for _ in 0..n {
        let g = loss_gradient(&model, &x, LogDetMode::Estimate(Roulette::TRAIN), &mut rng);
        for i in 0..p {
            sum[i] += g[i];
            sq[i] += g[i] * g[i];
        }
    }
    let mut zs = vec![];
    // Per coordinate: z-scores of the mean against the exact value.
    for i in 0..p {
        let m = sum[i] / n as f64;
        let var = (sq[i] / n as f64 - m * m).max(0.0);
        let se = (var / n as f64).sqrt();
        if se > 0.0 {
            zs.push((m - exact[i]) / se);
        } else {
            assert!((m - exact[i]).abs() < 1e-5, "coordinate {i}: {m} vs {}", exact[i]);
        }
    }
    let beyond3 = zs.iter().filter(|z| z.abs() > 3.0).count() as f64 / zs.len() as f64;
    let worst = zs.iter().fold(0.0f64, |a, z| a.max(z.abs()));
    // With Gaussian errors 0.27 % of coordinates exceed 3 standard errors.
    assert!(beyond3 < 0.02, "{:.1} % of {} coordinates beyond 3 SE (worst {worst:.1})", beyond3 * 100.0, zs.len());
    assert!(worst < 6.0, "worst z-score {worst:.1}");
    eprintln!(
        "Neumann surrogate: {} coordinates, {n} draws, {:.2} % beyond 3 SE, worst z {worst:.2}",
        zs.len(),
        beyond3 * 100.0
    );
}

#[test]
fn inversion_reconstructs_and_reports_the_cap() {
    let dev = device();
    let model = random_model(5, 16, 3, 61, &dev);
    let flow = model.to_flow();
    for x in random_rows(20, 5, 62) {
        let z = flow.forward(&x);
        let inv = flow.inverse(&z, InvertOptions::default());
        assert!(inv.converged);
        assert!(inv.residual < 1e-4);
        let err = x.iter().zip(&inv.x).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(err < 1e-4, "reconstruction error {err}");
        assert!(inv.iterations > 3);
        // Two iterations per block are not enough: the answer says so.
        let capped = flow.inverse(&z, InvertOptions { max_iterations: 2, ..Default::default() });
        assert!(!capped.converged);
        assert_eq!(capped.iterations, 2 * flow.blocks());
        assert!(capped.residual > 1e-6);
    }
}

#[test]
fn spectral_norms_of_normalised_weights_are_at_most_c() {
    let dev = device();
    let model = random_model(6, 32, 3, 71, &dev);
    for (name, sigma) in model.spectral_norms() {
        assert!(sigma <= 0.9 * (1.0 + SPECTRAL_SLACK), "{name}: {sigma}");
        assert!(sigma > 0.85, "{name} is at the cap after scaling up: {sigma}");
    }
    // Lip(g) <= c^3 for every block.
    for lip in model.to_flow().lipschitz_of_residuals() {
        assert!(lip <= 0.9f64.powi(3) * (1.0 + 1e-5), "{lip}");
    }
}

#[test]
fn an_underestimated_sigma_fails_the_spectral_norm_check() {
    let dev = device();
    let mut model = random_model(6, 32, 2, 73, &dev);
    assert!(training::verify_spectral_norms(&model).is_ok());
    // Power-iteration vectors far from the top singular pair: v^T W u is
    // small, the layer is not divided, and its norm exceeds c.
    let (d, h) = (6, 32);
    let mut u = vec![0.0; h];
    u[0] = 1.0;
    let mut v = vec![0.0; d];
    v[d - 1] = 1.0;
    model.blocks[1].l2.set_uv(&vec![1.0 / (h as f64).sqrt(); h], &{
        let mut w = vec![0.0; h];
        w[3] = 1.0;
        w
    });
    model.blocks[1].l1.set_uv(&u, &v);
    let err = training::verify_spectral_norms(&model).unwrap_err();
    let medchange::ml::iresnet::TrainError::SpectralNorm { layer, sigma, coeff } = err else { panic!("{err}") };
    assert!(layer.starts_with("blocks.1."), "{layer}");
    assert!(sigma > coeff * 1.5, "{sigma}");
    // A long power iteration repairs it.
    model.power_iterate_all(1e-12, 200, 20_000);
    assert!(training::verify_spectral_norms(&model).is_ok());
}

#[test]
fn gaussian_mixture_density_is_learned() {
    let gm = GaussianMixture::demo_2d();
    let mut rng = StdRng::seed_from_u64(81);
    let train = gm.sample(4000, &mut rng);
    let val = gm.sample(1000, &mut rng);
    let test = gm.sample(4000, &mut rng);
    let (entropy, entropy_se) = gm.entropy(200_000, 82);
    let cfg = IResNetConfig::new(2).with_blocks(6).with_hidden(64);
    let settings = TrainSettings {
        epochs: 40,
        batch_size: 128,
        learning_rate: 3e-3,
        warmup_steps: 50,
        ema_decay: Some(0.99),
        logdet: LogDetMethod::Exact,
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let out = training::train(
        &cfg,
        &settings,
        &train,
        &val,
        &device(),
        &mut |e| {
            if let medchange::ml::iresnet::TrainEvent::Epoch { report, .. } = e {
                eprintln!(
                    "epoch {} train {:.4} val {:.4} ({:.1}s)",
                    report.epoch, report.train_nll, report.val_nll, report.seconds
                );
            }
        },
        &|| false,
    )
    .unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let nll = -test.iter().map(|x| out.flow.log_prob_exact(x)).sum::<f64>() / test.len() as f64;
    let gauss = GaussianFit::fit(&train).unwrap();
    let gauss_nll = -test.iter().map(|x| gauss.log_pdf(x)).sum::<f64>() / test.len() as f64;
    let true_nll = -test.iter().map(|x| gm.log_pdf(x)).sum::<f64>() / test.len() as f64;
    eprintln!(
        "mixture: entropy {entropy:.4} ± {entropy_se:.4}, true test NLL {true_nll:.4}, i-ResNet {nll:.4}, Gaussian {gauss_nll:.4} ({secs:.1}s, best epoch {:?})",
        out.best_epoch
    );
    assert!((nll - entropy) / 2.0 < 0.1, "test NLL {nll:.4} is more than 0.1 nats/dim above the entropy {entropy:.4}");
    assert!(nll < gauss_nll, "i-ResNet {nll:.4} vs Gaussian {gauss_nll:.4}");
    // Every normalised weight of the trained model, recomputed here from
    // the served weights (Jacobi eigenvalues of the Gram matrix).
    let (d, h) = (out.flow.dim, out.flow.hidden);
    for (k, l) in out.flow.layers.iter().enumerate() {
        for (w, r, c) in [(&l.w1, d, h), (&l.w2, h, h), (&l.w3, h, d)] {
            let sigma = linalg::largest_singular_value(w, r, c);
            assert!(sigma <= cfg.coeff * (1.0 + SPECTRAL_SLACK), "block {k}: {sigma}");
        }
    }
    assert_eq!(out.spectral_norms.len(), 3 * cfg.blocks);
    // Trained model: inversion reconstructs to 1e-4.
    for x in test.iter().take(200) {
        let inv = out.flow.inverse(&out.flow.forward(x), InvertOptions::default());
        assert!(inv.converged);
        let err = x.iter().zip(&inv.x).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(err < 1e-4, "{err}");
    }
}
