//! The invertible residual network as a burn module (iresnet.md "The
//! flow"): spectrally normalised linear layers, LipSwish, data-initialised
//! ActNorm, residual blocks `x + g(x)` and a standard normal base; the
//! training forward pass with the exact log-determinant or the
//! Russian-roulette estimate plus the Neumann gradient surrogate; and the
//! extraction of plain weights for [`super::inference::Flow`].
//!
//! burn has first-order autodiff only, so the log-determinant's gradient is
//! never obtained by differentiating autodiff's own vector-Jacobian
//! products. Instead:
//! - exact: the Jacobian `I + M` (`M = W1 D1 W2 D2 W3`, `D = diag(phi'(a))`)
//!   is built per sample with tensor ops, its log-determinant and `A^{-T}`
//!   come from an LU on the host, and the surrogate `sum(A * stopgrad(A^{-T}))`
//!   has exactly the gradient of `log det A`;
//! - estimate: the vector-Jacobian product of the MLP branch is written by
//!   hand (`vjp`), the Neumann vector `w` is built from it without
//!   gradient, and the surrogate `w^T J v` is differentiated.
use std::path::Path;

use burn::module::{Param, ParamId};
use burn::prelude::*;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::activation::{sigmoid, softplus};
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::inference::{Flow, FlowLayer, LIPSWISH_DIV, LN_2PI, Roulette, normal};
use super::linalg;

/// Shape and constraints of a density model. Saved as `config.json` beside
/// the weights.
#[derive(Config, Debug, PartialEq)]
pub struct IResNetConfig {
    /// Input dimension d.
    pub dim: usize,
    /// Residual blocks K (each preceded by an ActNorm).
    #[config(default = 4)]
    pub blocks: usize,
    /// Hidden width h of each block's MLP.
    #[config(default = 128)]
    pub hidden: usize,
    /// Spectral-norm bound c of every linear layer (Lip(g) <= c^3 < 1).
    #[config(default = 0.9)]
    pub coeff: f64,
    /// Initial LipSwish beta (slope softplus(beta)).
    #[config(default = 0.5)]
    pub beta_init: f64,
    /// ActNorm's data initialisation floors the variance at this value.
    #[config(default = 0.2)]
    pub actnorm_var_floor: f64,
    /// Put a fixed whitening `y = (x - mean) L^{-T}` (`L L^T` the training
    /// covariance) in front of the blocks. ActNorm only rescales each
    /// coordinate, and blocks with Lip(g) < 1 undo strong correlations
    /// slowly; with the whitening the flow starts at the full-covariance
    /// Gaussian fit and improves on it.
    #[config(default = true)]
    pub whiten: bool,
}

/// Power-iteration schedule (iresnet.md): after each optimizer step to a
/// tolerance, long at construction and before saving.
pub const POWER_TOL_STEP: f64 = 1e-3;
pub const POWER_MAX_STEP: usize = 200;
pub const POWER_LONG: usize = 200;

/// A linear layer `y = x W_sn + b` with `W_sn = W / max(1, sigma / c)`,
/// `sigma = v^T W u` from power-iteration vectors kept as non-trainable
/// parameters (saved with the weights).
#[derive(Module, Debug)]
pub struct SnLinear {
    /// `[in, out]`
    pub weight: Param<Tensor<2>>,
    pub bias: Param<Tensor<1>>,
    /// Right singular vector estimate, `[out]` (no gradient).
    pub u: Param<Tensor<1>>,
    /// Left singular vector estimate, `[in]` (no gradient).
    pub v: Param<Tensor<1>>,
}

/// LipSwish `x sigmoid(softplus(beta) x) / 1.1`, beta per unit.
#[derive(Module, Debug)]
pub struct LipSwish {
    pub beta: Param<Tensor<1>>,
}

/// `y = (x + bias) * exp(log_scale)`.
#[derive(Module, Debug)]
pub struct ActNorm {
    pub bias: Param<Tensor<1>>,
    pub log_scale: Param<Tensor<1>>,
}

/// `F(x) = x + g(x)`, `g = SN3 . act . SN2 . act . SN1`.
#[derive(Module, Debug)]
pub struct ResBlock {
    pub l1: SnLinear,
    pub act1: LipSwish,
    pub l2: SnLinear,
    pub act2: LipSwish,
    pub l3: SnLinear,
}

/// A fixed affine map `y = (x - mean) matrix` (no gradient), fitted once on
/// the training data; the identity when whitening is off.
#[derive(Module, Debug)]
pub struct Whiten {
    pub mean: Param<Tensor<1>>,
    /// `[d, d]`
    pub matrix: Param<Tensor<2>>,
}

impl Whiten {
    fn identity(d: usize, device: &Device) -> Self {
        let mut m = vec![0f32; d * d];
        (0..d).for_each(|i| m[i * d + i] = 1.0);
        Self {
            mean: Param::from_tensor(tensor1(vec![0.0; d], device)).set_require_grad(false),
            matrix: Param::from_tensor(tensor2(m, d, d, device)).set_require_grad(false),
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        (x - self.mean.val().unsqueeze::<2>()).matmul(self.matrix.val())
    }

    /// `log |det matrix|` (f64, on the host).
    pub fn log_det(&self) -> f64 {
        let d = self.mean.dims()[0];
        linalg::log_abs_det(&to_f64(self.matrix.val()), d).0
    }

    /// Fits mean and `L^{-T}` to `rows` (covariance with a small ridge).
    pub fn fit(&mut self, rows: &[Vec<f64>]) {
        let device = self.mean.val().device();
        let d = rows[0].len();
        let Some(g) = linalg::GaussianFit::fit_with_ridge(rows, 1e-6) else { return };
        // L^{-1} by forward substitution, then transpose.
        let mut linv = vec![0.0; d * d];
        for c in 0..d {
            for i in 0..d {
                let mut s = if i == c { 1.0 } else { 0.0 };
                for j in 0..i {
                    s -= g.chol[i * d + j] * linv[j * d + c];
                }
                linv[i * d + c] = s / g.chol[i * d + i];
            }
        }
        let m: Vec<f32> = (0..d * d).map(|k| linv[(k % d) * d + k / d] as f32).collect();
        self.mean = Param::initialized(self.mean.id, tensor1(g.mean.iter().map(|&x| x as f32).collect(), &device));
        self.matrix = Param::initialized(self.matrix.id, tensor2(m, d, d, &device));
    }

    fn to_plain(&self) -> super::inference::Whitening {
        super::inference::Whitening::new(to_f64(self.mean.val()), to_f64(self.matrix.val()))
    }
}

/// The flow `x -> whitening -> [ActNorm -> ResBlock]^K -> z`.
#[derive(Module, Debug)]
pub struct IResNet {
    pub whiten: Whiten,
    pub actnorms: Vec<ActNorm>,
    pub blocks: Vec<ResBlock>,
    /// c
    pub coeff: f64,
}

pub(crate) fn tensor1(v: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

pub(crate) fn tensor2(v: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v, [rows, cols]), device)
}

pub(crate) fn to_f64<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.try_into_vec_as::<f32>().expect("f32 tensor").into_iter().map(|x| x as f64).collect()
}

fn unit_random(n: usize, rng: &mut StdRng) -> Vec<f64> {
    let mut v: Vec<f64> = (0..n).map(|_| normal(rng)).collect();
    let s = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter_mut().for_each(|x| *x /= s);
    v
}

impl SnLinear {
    /// PyTorch-style uniform init scaled by `scale` (the last layer of a
    /// block starts near zero), random unit u and v.
    fn init(d_in: usize, d_out: usize, scale: f64, rng: &mut StdRng, device: &Device) -> Self {
        let k = scale / (d_in as f64).sqrt();
        let w: Vec<f32> = (0..d_in * d_out).map(|_| (rng.random_range(-k..k)) as f32).collect();
        let b: Vec<f32> =
            if scale < 1.0 { vec![0.0; d_out] } else { (0..d_out).map(|_| rng.random_range(-k..k) as f32).collect() };
        let u = unit_random(d_out, rng).into_iter().map(|x| x as f32).collect();
        let v = unit_random(d_in, rng).into_iter().map(|x| x as f32).collect();
        Self {
            weight: Param::from_tensor(tensor2(w, d_in, d_out, device)),
            bias: Param::from_tensor(tensor1(b, device)),
            u: Param::from_tensor(tensor1(u, device)).set_require_grad(false),
            v: Param::from_tensor(tensor1(v, device)).set_require_grad(false),
        }
    }

    pub fn dims(&self) -> [usize; 2] {
        self.weight.dims()
    }

    /// `W / max(1, sigma / c)` with `sigma = v^T W u` (u, v detached; the
    /// gradient flows through sigma, as in PyTorch's spectral norm).
    pub fn effective_weight(&self, coeff: f64) -> Tensor<2> {
        let w = self.weight.val();
        let u = self.u.val().detach().unsqueeze_dim::<2>(1); // [out, 1]
        let v = self.v.val().detach().unsqueeze::<2>(); // [1, in]
        let sigma = v.matmul(w.clone()).matmul(u); // [1, 1]
        let factor = sigma.div_scalar(coeff).clamp_min(1.0);
        w / factor
    }

    /// The weight and the power-iteration vectors on the host.
    pub fn host(&self) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        (to_f64(self.weight.val()), to_f64(self.u.val()), to_f64(self.v.val()))
    }

    /// Replaces u and v (same parameter ids, no gradient).
    pub fn set_uv(&mut self, u: &[f64], v: &[f64]) {
        let device = self.weight.val().device();
        let t = |x: &[f64]| tensor1(x.iter().map(|&a| a as f32).collect(), &device);
        self.u = Param::initialized(self.u.id, t(u));
        self.v = Param::initialized(self.v.id, t(v));
    }

    /// Runs power iteration on the host from the stored vectors (at least
    /// `min_iter`, at most `max_iter` iterations, until both vectors move
    /// less than `tol`) and stores the result. Returns `(sigma, iterations)`.
    pub fn power_iterate(&mut self, tol: f64, min_iter: usize, max_iter: usize) -> (f64, usize) {
        let [d_in, d_out] = self.dims();
        let (w, mut u, mut v) = self.host();
        let r = linalg::power_iteration(&w, d_in, d_out, &mut u, &mut v, tol, min_iter, max_iter);
        self.set_uv(&u, &v);
        r
    }

    /// The normalised weight and bias on the host (f64).
    pub fn normalized_host(&self, coeff: f64) -> (Vec<f64>, Vec<f64>) {
        let [d_in, d_out] = self.dims();
        let (mut w, u, v) = self.host();
        let sigma = linalg::sigma_of(&w, d_in, d_out, &u, &v);
        let factor = (sigma / coeff).max(1.0);
        w.iter_mut().for_each(|x| *x /= factor);
        (w, to_f64(self.bias.val()))
    }
}

impl LipSwish {
    fn init(n: usize, beta: f64, device: &Device) -> Self {
        Self { beta: Param::from_tensor(tensor1(vec![beta as f32; n], device)) }
    }

    /// `(phi(a), phi'(a))` for `a` `[B, h]`.
    pub fn forward(&self, a: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let s = softplus(self.beta.val(), 1.0).unsqueeze::<2>(); // [1, h]
        let sg = sigmoid(a.clone() * s.clone());
        let y = (a.clone() * sg.clone()).div_scalar(LIPSWISH_DIV);
        let one_minus = sg.clone().neg().add_scalar(1.0);
        let dy = (sg.clone() + a * s * sg * one_minus).div_scalar(LIPSWISH_DIV);
        (y, dy)
    }
}

impl ActNorm {
    fn init(d: usize, device: &Device) -> Self {
        Self {
            bias: Param::from_tensor(tensor1(vec![0.0; d], device)),
            log_scale: Param::from_tensor(tensor1(vec![0.0; d], device)),
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        (x + self.bias.val().unsqueeze::<2>()) * self.log_scale.val().exp().unsqueeze::<2>()
    }

    /// Sets bias and scale so that `x` `[n, d]` (host rows) maps to zero mean,
    /// unit variance (variance floored).
    pub fn data_init(&mut self, rows: &[Vec<f64>], var_floor: f64) {
        let device = self.bias.val().device();
        let d = rows[0].len();
        let n = rows.len() as f64;
        let mut mean = vec![0.0; d];
        for r in rows {
            mean.iter_mut().zip(r).for_each(|(m, x)| *m += x / n);
        }
        let mut var = vec![0.0; d];
        for r in rows {
            var.iter_mut().zip(r).zip(&mean).for_each(|((v, x), m)| *v += (x - m) * (x - m) / n);
        }
        let bias: Vec<f32> = mean.iter().map(|m| -m as f32).collect();
        let log_scale: Vec<f32> = var.iter().map(|v| (-0.5 * v.max(var_floor).ln()) as f32).collect();
        let g = device.is_autodiff();
        self.bias = Param::initialized(self.bias.id, tensor1(bias, &device).set_require_grad(g));
        self.log_scale = Param::initialized(self.log_scale.id, tensor1(log_scale, &device).set_require_grad(g));
    }

    pub fn log_det(&self) -> Tensor<1> {
        self.log_scale.val().sum()
    }
}

/// A block's forward values, kept for its log-determinant.
pub struct BlockPass {
    pub g: Tensor<2>,
    /// phi'(a1), phi'(a2): `[B, h]`
    pub d1: Tensor<2>,
    pub d2: Tensor<2>,
    /// Normalised weights.
    pub w1: Tensor<2>,
    pub w2: Tensor<2>,
    pub w3: Tensor<2>,
}

impl BlockPass {
    /// `w^T J` for cotangents `w` `[B, d]`: `((w W3^T) * D2 W2^T) * D1 W1^T`.
    pub fn vjp(&self, w: Tensor<2>) -> Tensor<2> {
        let t2 = w.matmul(self.w3.clone().transpose()) * self.d2.clone();
        let t1 = t2.matmul(self.w2.clone().transpose()) * self.d1.clone();
        t1.matmul(self.w1.clone().transpose())
    }

    /// The same product through detached copies (no graph is recorded).
    pub fn detached(&self) -> BlockPass {
        BlockPass {
            g: self.g.clone().detach(),
            d1: self.d1.clone().detach(),
            d2: self.d2.clone().detach(),
            w1: self.w1.clone().detach(),
            w2: self.w2.clone().detach(),
            w3: self.w3.clone().detach(),
        }
    }

    /// `I + M` per sample, `[B, d, d]` (`M = W1 D1 W2 D2 W3`, the Jacobian's transpose).
    pub fn jacobian_plus_identity(&self) -> Tensor<3> {
        let [b, _] = self.d1.dims();
        let d = self.w1.dims()[0];
        let device = self.w1.device();
        let a = self.w1.clone().unsqueeze::<3>() * self.d1.clone().unsqueeze_dim::<3>(1); // [B, d, h]
        let a = a.matmul(self.w2.clone().unsqueeze::<3>()) * self.d2.clone().unsqueeze_dim::<3>(1); // [B, d, h]
        let m = a.matmul(self.w3.clone().unsqueeze::<3>()); // [B, d, d]
        let _ = b;
        m + Tensor::<2>::eye(d, &device).unsqueeze::<3>()
    }
}

impl ResBlock {
    fn init(cfg: &IResNetConfig, rng: &mut StdRng, device: &Device) -> Self {
        let (d, h) = (cfg.dim, cfg.hidden);
        Self {
            l1: SnLinear::init(d, h, 1.0, rng, device),
            act1: LipSwish::init(h, cfg.beta_init, device),
            l2: SnLinear::init(h, h, 1.0, rng, device),
            act2: LipSwish::init(h, cfg.beta_init, device),
            l3: SnLinear::init(h, d, 1e-2, rng, device),
        }
    }

    pub fn layers_mut(&mut self) -> [&mut SnLinear; 3] {
        [&mut self.l1, &mut self.l2, &mut self.l3]
    }

    pub fn layers(&self) -> [&SnLinear; 3] {
        [&self.l1, &self.l2, &self.l3]
    }

    pub fn pass(&self, x: Tensor<2>, coeff: f64) -> BlockPass {
        let w1 = self.l1.effective_weight(coeff);
        let w2 = self.l2.effective_weight(coeff);
        let w3 = self.l3.effective_weight(coeff);
        let a1 = x.matmul(w1.clone()) + self.l1.bias.val().unsqueeze::<2>();
        let (z1, d1) = self.act1.forward(a1);
        let a2 = z1.matmul(w2.clone()) + self.l2.bias.val().unsqueeze::<2>();
        let (z2, d2) = self.act2.forward(a2);
        let g = z2.matmul(w3.clone()) + self.l3.bias.val().unsqueeze::<2>();
        BlockPass { g, d1, d2, w1, w2, w3 }
    }
}

/// How the training forward pass gets each block's log-determinant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LogDetMode {
    /// Explicit Jacobian, LU on the host, exact gradient.
    Exact,
    /// Russian roulette for the value, Neumann series for the gradient.
    Estimate(Roulette),
}

/// What the training forward pass returns.
pub struct FlowLoss {
    /// The quantity to differentiate: minus the mean of `log N(z)` plus the
    /// ActNorm log-determinants plus each block's surrogate (whose gradient
    /// is that of its log-determinant). Its value is not a likelihood.
    pub surrogate: Tensor<1>,
    /// Per-sample `log p(x)` with the real (exact or estimated)
    /// log-determinants, nats, on the host.
    pub log_prob: Vec<f64>,
}

impl IResNetConfig {
    /// A fresh module: random weights seeded by `seed`, then
    /// [`POWER_LONG`] power iterations per linear layer. ActNorm starts at
    /// the identity; call [`IResNet::data_init`] with the first batch.
    pub fn init(&self, seed: u64, device: &Device) -> IResNet {
        let mut model = self.init_raw(seed, device);
        model.power_iterate_all(0.0, POWER_LONG, POWER_LONG);
        model
    }

    /// The module without the construction-time power iterations (for loading).
    pub fn init_raw(&self, seed: u64, device: &Device) -> IResNet {
        let mut rng = StdRng::seed_from_u64(seed);
        IResNet {
            whiten: Whiten::identity(self.dim, device),
            actnorms: (0..self.blocks).map(|_| ActNorm::init(self.dim, device)).collect(),
            blocks: (0..self.blocks).map(|_| ResBlock::init(self, &mut rng, device)).collect(),
            coeff: self.coeff,
        }
    }

    /// Trainable parameters.
    pub fn num_params(&self) -> usize {
        let (d, h) = (self.dim, self.hidden);
        self.blocks * (2 * d + (d * h + h) + h + (h * h + h) + h + (h * d + d))
    }
}

impl IResNet {
    pub fn dim(&self) -> usize {
        self.actnorms[0].bias.dims()[0]
    }

    pub fn hidden(&self) -> usize {
        self.blocks[0].l1.dims()[1]
    }

    pub fn device(&self) -> Device {
        self.actnorms[0].bias.val().device()
    }

    /// Power iteration on every normalised layer; returns the largest
    /// iteration count used.
    pub fn power_iterate_all(&mut self, tol: f64, min_iter: usize, max_iter: usize) -> usize {
        let mut most = 0;
        for b in &mut self.blocks {
            for l in b.layers_mut() {
                most = most.max(l.power_iterate(tol, min_iter, max_iter).1);
            }
        }
        most
    }

    /// Data-dependent ActNorm initialisation from a batch (host rows): each
    /// ActNorm is set from the activations that reach it (after the whitening).
    pub fn data_init(&mut self, batch: &[Vec<f64>], var_floor: f64) {
        let d = self.dim();
        let device = self.device();
        let flat: Vec<f32> = batch.iter().flatten().map(|&x| x as f32).collect();
        let w = to_f64(self.whiten.forward(tensor2(flat, batch.len(), d, &device)).detach());
        let mut rows: Vec<Vec<f64>> = w.chunks(d).map(|c| c.to_vec()).collect();
        for k in 0..self.blocks.len() {
            self.actnorms[k].data_init(&rows, var_floor);
            let flat: Vec<f32> = rows.iter().flatten().map(|&x| x as f32).collect();
            let x = self.actnorms[k].forward(tensor2(flat, rows.len(), d, &device)).detach();
            let y = x.clone() + self.blocks[k].pass(x, self.coeff).g;
            let v = to_f64(y.detach());
            rows = v.chunks(d).map(|c| c.to_vec()).collect();
        }
    }

    /// `z = F(x)` (no log-determinant), `[B, d]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let mut h = self.whiten.forward(x);
        for (an, b) in self.actnorms.iter().zip(&self.blocks) {
            h = an.forward(h);
            h = h.clone() + b.pass(h, self.coeff).g;
        }
        h
    }

    /// The training pass over a batch `x` `[B, d]`.
    pub fn loss(&self, x: Tensor<2>, mode: LogDetMode, rng: &mut StdRng) -> FlowLoss {
        let [batch, d] = x.dims();
        let device = x.device();
        let mut h = self.whiten.forward(x);
        let mut exact_ld = self.whiten.log_det();
        let mut an_ld: Option<Tensor<1>> = None;
        let mut surrogates: Option<Tensor<2>> = None; // [B, 1]
        let mut block_ld = vec![0.0f64; batch];
        let add = |acc: Option<Tensor<2>>, t: Tensor<2>| {
            Some(match acc {
                Some(a) => a + t,
                None => t,
            })
        };
        for (an, b) in self.actnorms.iter().zip(&self.blocks) {
            h = an.forward(h);
            let ld = an.log_det();
            exact_ld += ld.clone().into_scalar::<f32>() as f64;
            an_ld = Some(match an_ld {
                Some(a) => a + ld,
                None => ld,
            });
            let pass = b.pass(h.clone(), self.coeff);
            match mode {
                LogDetMode::Exact => {
                    let a = pass.jacobian_plus_identity();
                    let host = to_f64(a.clone().detach());
                    let mut inv_t = Vec::with_capacity(batch * d * d);
                    for (i, m) in host.chunks(d * d).enumerate() {
                        let (l, g) =
                            linalg::log_abs_det_and_inv_t(m, d).unwrap_or((f64::NEG_INFINITY, vec![0.0; d * d]));
                        block_ld[i] += l;
                        inv_t.extend(g.into_iter().map(|x| x as f32));
                    }
                    let g = Tensor::<3>::from_data(TensorData::new(inv_t, [batch, d, d]), &device);
                    let s = (a * g).sum_dim(2).sum_dim(1).reshape([batch, 1]);
                    surrogates = add(surrogates, s);
                }
                LogDetMode::Estimate(roulette) => {
                    let n = roulette.draw(rng);
                    let (c_ld, c_neu) = roulette.coefficients(n);
                    let vv: Vec<f32> = (0..batch * d).map(|_| normal(rng) as f32).collect();
                    let v = tensor2(vv, batch, d, &device);
                    let frozen = pass.detached();
                    let mut r = v.clone();
                    let mut w = v.clone().mul_scalar(c_neu[0]);
                    let mut est = Tensor::<2>::zeros([batch, 1], &device);
                    for k in 1..=c_ld.len() {
                        r = frozen.vjp(r);
                        est = est + (r.clone() * v.clone()).sum_dim(1).mul_scalar(c_ld[k - 1]);
                        if k < c_neu.len() {
                            w = w + r.clone().mul_scalar(c_neu[k]);
                        }
                    }
                    for (acc, e) in block_ld.iter_mut().zip(to_f64(est)) {
                        *acc += e;
                    }
                    let s = (pass.vjp(w.detach()) * v).sum_dim(1); // [B, 1]
                    surrogates = add(surrogates, s);
                }
            }
            h = h + pass.g;
        }
        let z = h;
        let base = z.clone().square().sum_dim(1).mul_scalar(-0.5).sub_scalar(0.5 * d as f64 * LN_2PI); // [B, 1]
        let base_host = to_f64(base.clone().detach());
        let log_prob = base_host.iter().zip(&block_ld).map(|(b, l)| b + l + exact_ld).collect();
        let mut total = base;
        if let Some(s) = surrogates {
            total = total + s;
        }
        let mut surrogate = total.mean().neg();
        if let Some(a) = an_ld {
            surrogate = surrogate - a;
        }
        FlowLoss { surrogate, log_prob }
    }

    /// Plain f64 weights for inference, each normalised layer divided by
    /// `max(1, v^T W u / c)` with the stored u, v.
    pub fn to_flow(&self) -> Flow {
        let layers = self
            .actnorms
            .iter()
            .zip(&self.blocks)
            .map(|(an, b)| {
                let (w1, b1) = b.l1.normalized_host(self.coeff);
                let (w2, b2) = b.l2.normalized_host(self.coeff);
                let (w3, b3) = b.l3.normalized_host(self.coeff);
                let slopes = |l: &LipSwish| to_f64(l.beta.val()).into_iter().map(super::inference::softplus).collect();
                FlowLayer {
                    an_bias: to_f64(an.bias.val()),
                    an_log_scale: to_f64(an.log_scale.val()),
                    w1,
                    b1,
                    s1: slopes(&b.act1),
                    w2,
                    b2,
                    s2: slopes(&b.act2),
                    w3,
                    b3,
                }
            })
            .collect();
        Flow { dim: self.dim(), hidden: self.hidden(), whitening: self.whiten.to_plain(), layers }
    }

    /// The largest singular value of every normalised weight (Jacobi
    /// eigenvalues of the Gram matrix, f64), as `(name, sigma)`.
    pub fn spectral_norms(&self) -> Vec<(String, f64)> {
        let mut out = vec![];
        for (k, b) in self.blocks.iter().enumerate() {
            for (i, l) in b.layers().into_iter().enumerate() {
                let [r, c] = l.dims();
                let (w, _) = l.normalized_host(self.coeff);
                out.push((format!("blocks.{k}.l{}", i + 1), linalg::largest_singular_value(&w, r, c)));
            }
        }
        out
    }

    /// Every parameter id with its rank (for gradient clipping and weight averaging).
    pub fn trainable_ids(&self) -> Vec<(ParamId, usize)> {
        let mut out = vec![];
        for (an, b) in self.actnorms.iter().zip(&self.blocks) {
            out.push((an.bias.id, 1));
            out.push((an.log_scale.id, 1));
            for l in b.layers() {
                out.push((l.weight.id, 2));
                out.push((l.bias.id, 1));
            }
            out.push((b.act1.beta.id, 1));
            out.push((b.act2.beta.id, 1));
        }
        out
    }

    /// Every trainable value, flattened in [`IResNet::trainable_ids`] order.
    pub fn trainable_values(&self) -> Vec<Vec<f32>> {
        let v1 = |p: &Param<Tensor<1>>| p.val().try_into_vec_as::<f32>().expect("f32");
        let v2 = |p: &Param<Tensor<2>>| p.val().try_into_vec_as::<f32>().expect("f32");
        let mut out = vec![];
        for (an, b) in self.actnorms.iter().zip(&self.blocks) {
            out.push(v1(&an.bias));
            out.push(v1(&an.log_scale));
            for l in b.layers() {
                out.push(v2(&l.weight));
                out.push(v1(&l.bias));
            }
            out.push(v1(&b.act1.beta));
            out.push(v1(&b.act2.beta));
        }
        out
    }

    /// Sets every trainable value (the inverse of [`IResNet::trainable_values`]),
    /// keeping the parameter ids.
    pub fn set_trainable_values(&mut self, values: &[Vec<f32>]) {
        let device = self.device();
        let g = device.is_autodiff();
        let mut it = values.iter().cloned();
        let mut take = || it.next().expect("one value per trainable parameter");
        for (an, b) in self.actnorms.iter_mut().zip(self.blocks.iter_mut()) {
            an.bias = Param::initialized(an.bias.id, tensor1(take(), &device).set_require_grad(g));
            an.log_scale = Param::initialized(an.log_scale.id, tensor1(take(), &device).set_require_grad(g));
            for l in [&mut b.l1, &mut b.l2, &mut b.l3] {
                let [r, c] = l.dims();
                l.weight = Param::initialized(l.weight.id, tensor2(take(), r, c, &device).set_require_grad(g));
                l.bias = Param::initialized(l.bias.id, tensor1(take(), &device).set_require_grad(g));
            }
            b.act1.beta = Param::initialized(b.act1.beta.id, tensor1(take(), &device).set_require_grad(g));
            b.act2.beta = Param::initialized(b.act2.beta.id, tensor1(take(), &device).set_require_grad(g));
        }
    }

    /// Writes the weights (and u, v) as safetensors with burn's names.
    pub fn save_safetensors(&self, path: &Path) -> Result<(), String> {
        let mut store = SafetensorsStore::from_file(path).overwrite(true);
        self.save_into(&mut store).map_err(|e| e.to_string())
    }

    /// Loads weights written by [`IResNet::save_safetensors`] into a module
    /// of the same shape.
    pub fn load_safetensors(mut self, path: &Path) -> Result<Self, String> {
        let mut store = SafetensorsStore::from_file(path);
        let result = self.load_from(&mut store).map_err(|e| e.to_string())?;
        if !result.missing.is_empty() || !result.errors.is_empty() {
            return Err(format!(
                "missing parameters {:?}, errors {:?}",
                result.missing.iter().map(|m| &m.0).collect::<Vec<_>>(),
                result.errors
            ));
        }
        Ok(self)
    }
}
