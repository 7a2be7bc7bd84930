//! Inference in plain Rust (f64) over a weight snapshot: the flow
//! `x -> [ActNorm -> x + g(x)]^K -> z`, its exact log-determinant (explicit
//! per-sample Jacobian, LU), the unbiased Russian-roulette estimate with a
//! standard error, inversion by fixed-point iteration, and sampling. This is
//! what the service runs: no device, microseconds to milliseconds per input,
//! and the test oracle for the burn training code.
//!
//! Shapes follow burn's Linear layout: a weight `[in, out]` row-major, so a
//! row vector maps as `y = x W + b`. For a block
//! `g(x) = phi(phi(x W1 + b1) W2 + b2) W3 + b3`, the Jacobian's transpose is
//! `M = W1 D1 W2 D2 W3` with `D = diag(phi'(a))`, and `log det(I + J) =
//! log det(I + M)`.
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use super::linalg;

/// `ln(2 pi)`.
pub const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// Divides LipSwish so that its slope never exceeds 1.
pub const LIPSWISH_DIV: f64 = 1.1;

#[inline]
fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `ln(1 + e^x)`, stable.
pub fn softplus(x: f64) -> f64 {
    if x > 30.0 { x } else { x.exp().ln_1p() }
}

/// LipSwish `x sigmoid(s x) / 1.1` and its derivative, for slope `s = softplus(beta)`.
#[inline]
pub fn lipswish(a: f64, s: f64) -> (f64, f64) {
    let sg = sigmoid(s * a);
    (a * sg / LIPSWISH_DIV, (sg + s * a * sg * (1.0 - sg)) / LIPSWISH_DIV)
}

/// One `ActNorm -> residual block` layer with its spectrally normalised
/// weights already divided (`W / max(1, sigma / c)`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowLayer {
    /// ActNorm: `y = (x + bias) * exp(log_scale)`.
    pub an_bias: Vec<f64>,
    pub an_log_scale: Vec<f64>,
    /// `[d, h]`
    pub w1: Vec<f64>,
    pub b1: Vec<f64>,
    /// LipSwish slopes `softplus(beta)`, `[h]`.
    pub s1: Vec<f64>,
    /// `[h, h]`
    pub w2: Vec<f64>,
    pub b2: Vec<f64>,
    pub s2: Vec<f64>,
    /// `[h, d]`
    pub w3: Vec<f64>,
    pub b3: Vec<f64>,
}

/// A fixed affine map `y = (x - shift) A` in front of the blocks (the
/// whitening fitted on the training data; the identity when off).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Whitening {
    pub shift: Vec<f64>,
    /// `A`, `[d, d]` row-major (`y_j = sum_i (x - shift)_i A[i, j]`).
    pub matrix: Vec<f64>,
    /// `A^{-1}`.
    pub inverse: Vec<f64>,
    /// `log |det A|`.
    pub log_det: f64,
}

impl Whitening {
    pub fn identity(d: usize) -> Self {
        let mut m = vec![0.0; d * d];
        (0..d).for_each(|i| m[i * d + i] = 1.0);
        Self { shift: vec![0.0; d], matrix: m.clone(), inverse: m, log_det: 0.0 }
    }

    /// From the shift and matrix (the inverse and log-determinant by LU).
    pub fn new(shift: Vec<f64>, matrix: Vec<f64>) -> Self {
        let d = shift.len();
        let (log_det, inv_t) = linalg::log_abs_det_and_inv_t(&matrix, d).expect("an invertible whitening matrix");
        let mut inverse = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                inverse[i * d + j] = inv_t[j * d + i];
            }
        }
        Self { shift, matrix, inverse, log_det }
    }

    pub fn apply(&self, x: &[f64]) -> Vec<f64> {
        let d = x.len();
        let c: Vec<f64> = x.iter().zip(&self.shift).map(|(a, b)| a - b).collect();
        let mut y = vec![0.0; d];
        affine(&c, &self.matrix, &vec![0.0; d], &mut y);
        y
    }

    pub fn invert(&self, y: &[f64]) -> Vec<f64> {
        let d = y.len();
        let mut x = vec![0.0; d];
        affine(y, &self.inverse, &self.shift, &mut x);
        x
    }
}

/// The whole flow as plain arrays.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    pub dim: usize,
    pub hidden: usize,
    pub whitening: Whitening,
    pub layers: Vec<FlowLayer>,
}

/// `y = x W + b` for `W` stored `[in, out]` row-major.
#[inline]
fn affine(x: &[f64], w: &[f64], b: &[f64], y: &mut [f64]) {
    let n_out = b.len();
    y.copy_from_slice(b);
    for (i, &xi) in x.iter().enumerate() {
        let row = &w[i * n_out..(i + 1) * n_out];
        for (yo, &wo) in y.iter_mut().zip(row) {
            *yo += xi * wo;
        }
    }
}

/// `y = W t` (the transposed map, for vector-Jacobian products): `y_i = sum_o W[i, o] t_o`.
#[inline]
fn back(w: &[f64], t: &[f64], y: &mut [f64]) {
    let n_out = t.len();
    for (i, yi) in y.iter_mut().enumerate() {
        let row = &w[i * n_out..(i + 1) * n_out];
        *yi = row.iter().zip(t).map(|(a, b)| a * b).sum();
    }
}

/// The intermediate values of one block at one input.
#[derive(Clone, Debug, Default)]
pub struct BlockEval {
    /// g(x)
    pub g: Vec<f64>,
    /// phi'(a1), phi'(a2)
    pub d1: Vec<f64>,
    pub d2: Vec<f64>,
}

/// An estimated log-determinant.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub mean: f64,
    /// Standard error of the mean over the samples.
    pub std_error: f64,
    pub samples: usize,
}

/// Settings of the Russian-roulette estimator (Residual Flows): the series
/// is cut at `N + exact_terms` terms, `N ~ Poisson(lambda)`, and term k is
/// divided by `P(N >= k - exact_terms)`, which makes it unbiased.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Roulette {
    pub lambda: f64,
    pub exact_terms: usize,
}

impl Roulette {
    /// Training: few exact terms (cheap, noisier).
    pub const TRAIN: Roulette = Roulette { lambda: 2.0, exact_terms: 2 };
    /// Evaluation: 20 exact terms.
    pub const EVAL: Roulette = Roulette { lambda: 2.0, exact_terms: 20 };

    /// `P(N >= j)` for `N ~ Poisson(lambda)`; 1 for `j <= 0`.
    pub fn tail(&self, j: i64) -> f64 {
        if j <= 0 {
            return 1.0;
        }
        let mut p = (-self.lambda).exp();
        let mut cdf = 0.0;
        for i in 0..j {
            if i > 0 {
                p *= self.lambda / i as f64;
            }
            cdf += p;
        }
        (1.0 - cdf).max(1e-300)
    }

    /// Draws N.
    pub fn draw(&self, rng: &mut impl Rng) -> usize {
        let l = (-self.lambda).exp();
        let mut k = 0;
        let mut p = 1.0;
        loop {
            p *= rng.random::<f64>();
            if p <= l {
                return k;
            }
            k += 1;
        }
    }

    /// Coefficients for a draw `n_draw`: `(logdet, neumann)`, where the
    /// log-det estimate is `sum_{k=1..n} logdet[k-1] * v^T J^k v` and the
    /// Neumann gradient vector is `w = sum_{j=0..n-1} neumann[j] * (J^T)^j v`.
    pub fn coefficients(&self, n_draw: usize) -> (Vec<f64>, Vec<f64>) {
        let n = n_draw + self.exact_terms;
        let m = self.exact_terms as i64;
        let logdet = (1..=n)
            .map(|k| {
                let sign = if k % 2 == 1 { 1.0 } else { -1.0 };
                sign / k as f64 / self.tail(k as i64 - m)
            })
            .collect();
        let neumann = (0..n)
            .map(|j| {
                let sign = if j % 2 == 0 { 1.0 } else { -1.0 };
                sign / self.tail(j as i64 + 1 - m)
            })
            .collect();
        (logdet, neumann)
    }
}

/// A standard normal draw (Box-Muller).
pub fn normal(rng: &mut impl Rng) -> f64 {
    loop {
        let u1: f64 = rng.random();
        if u1 > 1e-300 {
            let u2: f64 = rng.random();
            return (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        }
    }
}

/// The result of inverting one latent vector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inversion {
    pub x: Vec<f64>,
    /// Fixed-point iterations, summed over the blocks.
    pub iterations: usize,
    /// The largest final residual `max |x + g(x) - y|` over the blocks.
    pub residual: f64,
    /// False when a block hit the iteration cap before the tolerance.
    pub converged: bool,
}

/// Tolerances of the fixed-point inversion.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct InvertOptions {
    /// Stop when every coordinate moves less than `atol + rtol * |x|`.
    pub atol: f64,
    pub rtol: f64,
    /// Iteration cap per block.
    pub max_iterations: usize,
}

impl Default for InvertOptions {
    /// 1e-6 absolute and relative per block. (iresnet.md suggests 1e-5; a
    /// block's remaining error is up to `Lip / (1 - Lip)` times the last
    /// step and grows through the earlier blocks' inverses, which left
    /// reconstruction errors just above 1e-4 after six blocks.)
    fn default() -> Self {
        Self { atol: 1e-6, rtol: 1e-6, max_iterations: 1000 }
    }
}

impl Flow {
    pub fn blocks(&self) -> usize {
        self.layers.len()
    }

    /// g of block `k` at `x`, with the activation slopes.
    pub fn block(&self, k: usize, x: &[f64]) -> BlockEval {
        let (d, h) = (self.dim, self.hidden);
        let l = &self.layers[k];
        let mut a1 = vec![0.0; h];
        affine(x, &l.w1, &l.b1, &mut a1);
        let mut d1 = vec![0.0; h];
        for j in 0..h {
            let (y, dy) = lipswish(a1[j], l.s1[j]);
            a1[j] = y;
            d1[j] = dy;
        }
        let mut a2 = vec![0.0; h];
        affine(&a1, &l.w2, &l.b2, &mut a2);
        let mut d2 = vec![0.0; h];
        for j in 0..h {
            let (y, dy) = lipswish(a2[j], l.s2[j]);
            a2[j] = y;
            d2[j] = dy;
        }
        let mut g = vec![0.0; d];
        affine(&a2, &l.w3, &l.b3, &mut g);
        BlockEval { g, d1, d2 }
    }

    /// `w^T J` of block `k` at the evaluation `e`: `W1 (D1 (W2 (D2 (W3 w))))`.
    pub fn vjp(&self, k: usize, e: &BlockEval, w: &[f64]) -> Vec<f64> {
        let (d, h) = (self.dim, self.hidden);
        let l = &self.layers[k];
        let mut t2 = vec![0.0; h];
        back(&l.w3, w, &mut t2);
        t2.iter_mut().zip(&e.d2).for_each(|(t, s)| *t *= s);
        let mut t1 = vec![0.0; h];
        back(&l.w2, &t2, &mut t1);
        t1.iter_mut().zip(&e.d1).for_each(|(t, s)| *t *= s);
        let mut out = vec![0.0; d];
        back(&l.w1, &t1, &mut out);
        out
    }

    /// `I + M` for block `k` (M = J^T), `d x d` row-major.
    pub fn jacobian_plus_identity(&self, k: usize, e: &BlockEval) -> Vec<f64> {
        let (d, h) = (self.dim, self.hidden);
        let l = &self.layers[k];
        // A = W1 D1 (d x h), B = A W2 D2 (d x h), M = B W3 (d x d).
        let mut b = vec![0.0; d * h];
        let mut a_row = vec![0.0; h];
        for i in 0..d {
            for ((a, w), s) in a_row.iter_mut().zip(&l.w1[i * h..(i + 1) * h]).zip(&e.d1) {
                *a = w * s;
            }
            let brow = &mut b[i * h..(i + 1) * h];
            for (kk, &a) in a_row.iter().enumerate() {
                if a == 0.0 {
                    continue;
                }
                let w2row = &l.w2[kk * h..(kk + 1) * h];
                for (bo, &w) in brow.iter_mut().zip(w2row) {
                    *bo += a * w;
                }
            }
            for (bo, s) in brow.iter_mut().zip(&e.d2) {
                *bo *= s;
            }
        }
        let mut m = vec![0.0; d * d];
        for i in 0..d {
            let mrow = &mut m[i * d..(i + 1) * d];
            for kk in 0..h {
                let bv = b[i * h + kk];
                let w3row = &l.w3[kk * d..(kk + 1) * d];
                for (mo, &w) in mrow.iter_mut().zip(w3row) {
                    *mo += bv * w;
                }
            }
            mrow[i] += 1.0;
        }
        m
    }

    /// ActNorm of layer `k` in place; returns its log-determinant.
    fn actnorm(&self, k: usize, x: &mut [f64]) -> f64 {
        let l = &self.layers[k];
        for ((x, b), s) in x.iter_mut().zip(&l.an_bias).zip(&l.an_log_scale) {
            *x = (*x + b) * s.exp();
        }
        l.an_log_scale.iter().sum()
    }

    fn actnorm_inverse(&self, k: usize, y: &mut [f64]) {
        let l = &self.layers[k];
        for ((y, b), s) in y.iter_mut().zip(&l.an_bias).zip(&l.an_log_scale) {
            *y = *y * (-s).exp() - b;
        }
    }

    /// `z = F(x)` and the exact `log |det dF/dx|`.
    pub fn forward_exact(&self, x: &[f64]) -> (Vec<f64>, f64) {
        let mut h = self.whitening.apply(x);
        let mut logdet = self.whitening.log_det;
        for k in 0..self.blocks() {
            logdet += self.actnorm(k, &mut h);
            let e = self.block(k, &h);
            let a = self.jacobian_plus_identity(k, &e);
            logdet += linalg::log_abs_det(&a, self.dim).0;
            h.iter_mut().zip(&e.g).for_each(|(x, g)| *x += g);
        }
        (h, logdet)
    }

    /// `z = F(x)` without the log-determinant.
    pub fn forward(&self, x: &[f64]) -> Vec<f64> {
        let mut h = self.whitening.apply(x);
        for k in 0..self.blocks() {
            self.actnorm(k, &mut h);
            let e = self.block(k, &h);
            h.iter_mut().zip(&e.g).for_each(|(x, g)| *x += g);
        }
        h
    }

    /// `log N(z; 0, I)`.
    pub fn base_log_prob(z: &[f64]) -> f64 {
        -0.5 * z.iter().map(|v| v * v).sum::<f64>() - 0.5 * z.len() as f64 * LN_2PI
    }

    /// Exact `log p(x)` in nats.
    pub fn log_prob_exact(&self, x: &[f64]) -> f64 {
        let (z, logdet) = self.forward_exact(x);
        Self::base_log_prob(&z) + logdet
    }

    /// `z = F(x)` and the estimated log-determinant: `samples` independent
    /// Russian-roulette estimates (fresh probe vectors and cut-offs), their
    /// mean and its standard error. ActNorm's part is exact.
    pub fn forward_estimate(
        &self,
        x: &[f64],
        roulette: Roulette,
        samples: usize,
        rng: &mut impl Rng,
    ) -> (Vec<f64>, Estimate) {
        let samples = samples.max(2);
        let d = self.dim;
        let mut h = self.whitening.apply(x);
        let mut exact = self.whitening.log_det;
        let mut totals = vec![0.0; samples];
        for k in 0..self.blocks() {
            exact += self.actnorm(k, &mut h);
            let e = self.block(k, &h);
            for t in totals.iter_mut() {
                let n = roulette.draw(rng);
                let (coef, _) = roulette.coefficients(n);
                let v: Vec<f64> = (0..d).map(|_| normal(rng)).collect();
                let mut r = v.clone();
                let mut est = 0.0;
                for c in &coef {
                    r = self.vjp(k, &e, &r);
                    est += c * r.iter().zip(&v).map(|(a, b)| a * b).sum::<f64>();
                }
                *t += est;
            }
            h.iter_mut().zip(&e.g).for_each(|(x, g)| *x += g);
        }
        let n = samples as f64;
        let mean = totals.iter().sum::<f64>() / n;
        let var = totals.iter().map(|t| (t - mean) * (t - mean)).sum::<f64>() / (n - 1.0);
        (h, Estimate { mean: mean + exact, std_error: (var / n).sqrt(), samples })
    }

    /// Inverts `z` block by block from the last: ActNorm in closed form, each
    /// residual block by `x_{k+1} = y - g(x_k)` from `x_0 = y`.
    pub fn inverse(&self, z: &[f64], opts: InvertOptions) -> Inversion {
        let mut y = z.to_vec();
        let mut iterations = 0;
        let mut residual: f64 = 0.0;
        let mut converged = true;
        for k in (0..self.blocks()).rev() {
            let mut x = y.clone();
            let mut done = false;
            for _ in 0..opts.max_iterations {
                iterations += 1;
                let g = self.block(k, &x).g;
                let mut moved = false;
                let next: Vec<f64> = y.iter().zip(&g).map(|(a, b)| a - b).collect();
                for (n, o) in next.iter().zip(&x) {
                    if (n - o).abs() > opts.atol + opts.rtol * n.abs() {
                        moved = true;
                    }
                }
                x = next;
                if !moved {
                    done = true;
                    break;
                }
            }
            converged &= done;
            let g = self.block(k, &x).g;
            let r = x.iter().zip(&g).zip(&y).map(|((x, g), y)| (x + g - y).abs()).fold(0.0, f64::max);
            residual = residual.max(r);
            self.actnorm_inverse(k, &mut x);
            y = x;
        }
        Inversion { x: self.whitening.invert(&y), iterations, residual, converged }
    }

    /// `n` samples: `z ~ N(0, temperature^2 I)`, inverted.
    pub fn sample(&self, n: usize, temperature: f64, seed: u64, opts: InvertOptions) -> Vec<(Vec<f64>, Inversion)> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let z: Vec<f64> = (0..self.dim).map(|_| temperature * normal(&mut rng)).collect();
                let inv = self.inverse(&z, opts);
                (z, inv)
            })
            .collect()
    }

    /// Lipschitz bound of the inverse: `prod_k 1 / (1 - Lip(g_k))` with
    /// `Lip(g_k) <= prod ||W_i||` (LipSwish slopes are at most 1), times the
    /// ActNorm scales. For documentation and robustness probes.
    pub fn lipschitz_of_residuals(&self) -> Vec<f64> {
        let (d, h) = (self.dim, self.hidden);
        self.layers
            .iter()
            .map(|l| {
                linalg::largest_singular_value(&l.w1, d, h)
                    * linalg::largest_singular_value(&l.w2, h, h)
                    * linalg::largest_singular_value(&l.w3, h, d)
            })
            .collect()
    }
}

/// Bits per dimension of a log-likelihood in nats.
pub fn bits_per_dim(log_likelihood: f64, dim: usize) -> f64 {
    -log_likelihood / (dim as f64 * std::f64::consts::LN_2)
}

/// The training data's score distribution, for percentiles and histograms.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreDistribution {
    /// Log-likelihoods (nats) of the training inputs, sorted ascending.
    pub sorted: Vec<f64>,
}

impl ScoreDistribution {
    pub fn new(mut scores: Vec<f64>) -> Self {
        scores.retain(|s| s.is_finite());
        scores.sort_by(f64::total_cmp);
        Self { sorted: scores }
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// Percentage of training scores below `s` (ties count half), 0 to 100.
    pub fn percentile(&self, s: f64) -> f64 {
        if self.sorted.is_empty() {
            return f64::NAN;
        }
        let below = self.sorted.partition_point(|&v| v < s);
        let upto = self.sorted.partition_point(|&v| v <= s);
        100.0 * (below as f64 + 0.5 * (upto - below) as f64) / self.sorted.len() as f64
    }

    /// The score at percentile `p` (0 to 100), linear interpolation.
    pub fn quantile(&self, p: f64) -> f64 {
        let n = self.sorted.len();
        if n == 0 {
            return f64::NAN;
        }
        let pos = (p / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
        let (i, f) = (pos.floor() as usize, pos.fract());
        if i + 1 < n { self.sorted[i] * (1.0 - f) + self.sorted[i + 1] * f } else { self.sorted[n - 1] }
    }

    /// Equal-width histogram over `[min, max]`: `(edges, counts)`, with
    /// `bins + 1` edges.
    pub fn histogram(&self, bins: usize) -> (Vec<f64>, Vec<u64>) {
        let bins = bins.max(1);
        let (Some(&lo), Some(&hi)) = (self.sorted.first(), self.sorted.last()) else {
            return (vec![], vec![]);
        };
        let width = if hi > lo { (hi - lo) / bins as f64 } else { 1.0 };
        let edges = (0..=bins).map(|i| lo + width * i as f64).collect();
        let mut counts = vec![0u64; bins];
        for &s in &self.sorted {
            let i = (((s - lo) / width) as usize).min(bins - 1);
            counts[i] += 1;
        }
        (edges, counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roulette_is_unbiased_on_a_known_series() {
        // sum_k (-1)^{k+1} x^k / k = ln(1 + x); the estimator's coefficients
        // times x^k must average to it.
        let x: f64 = 0.6;
        let r = Roulette::TRAIN;
        let mut rng = StdRng::seed_from_u64(5);
        let n = 200_000;
        let (mut s, mut s2) = (0.0, 0.0);
        for _ in 0..n {
            let (c, _) = r.coefficients(r.draw(&mut rng));
            let v: f64 = c.iter().enumerate().map(|(k, c)| c * x.powi(k as i32 + 1)).sum();
            s += v;
            s2 += v * v;
        }
        let mean = s / n as f64;
        let se = ((s2 / n as f64 - mean * mean) / n as f64).sqrt();
        assert!((mean - x.ln_1p()).abs() < 4.0 * se, "{mean} vs {} (se {se})", x.ln_1p());
    }

    #[test]
    fn percentiles_and_quantiles() {
        let d = ScoreDistribution::new(vec![3.0, 1.0, 2.0, 4.0, f64::NAN]);
        assert_eq!(d.len(), 4);
        assert_eq!(d.percentile(0.0), 0.0);
        assert_eq!(d.percentile(2.0), 37.5);
        assert_eq!(d.percentile(10.0), 100.0);
        assert_eq!(d.quantile(50.0), 2.5);
        let (edges, counts) = d.histogram(3);
        assert_eq!(edges.len(), 4);
        assert_eq!(counts.iter().sum::<u64>(), 4);
    }
}
