//! Small dense linear algebra in f64 for the density models: LU with
//! partial pivoting (log-determinants, inverses), the largest singular value
//! by Jacobi eigenvalues (the post-training check) and by power iteration
//! (the spectral-normalisation schedule), and a Cholesky-based Gaussian fit
//! (the baseline). Matrices are row-major `Vec<f64>` of `n * n` (or
//! `rows * cols`) values.

/// LU factorisation with partial pivoting of an `n x n` matrix, in place.
/// Returns the row permutation's sign, or `None` when a pivot is exactly
/// zero (singular).
pub fn lu_in_place(a: &mut [f64], n: usize, perm: &mut [usize]) -> Option<f64> {
    debug_assert_eq!(a.len(), n * n);
    for (i, p) in perm.iter_mut().enumerate().take(n) {
        *p = i;
    }
    let mut sign = 1.0;
    for k in 0..n {
        let mut p = k;
        let mut best = a[k * n + k].abs();
        for i in k + 1..n {
            let v = a[i * n + k].abs();
            if v > best {
                best = v;
                p = i;
            }
        }
        if best == 0.0 {
            return None;
        }
        if p != k {
            for j in 0..n {
                a.swap(k * n + j, p * n + j);
            }
            perm.swap(k, p);
            sign = -sign;
        }
        let pivot = a[k * n + k];
        let (top, bottom) = a.split_at_mut((k + 1) * n);
        let row_k = &top[k * n..(k + 1) * n];
        for i in 0..n - k - 1 {
            let row = &mut bottom[i * n..(i + 1) * n];
            let f = row[k] / pivot;
            row[k] = f;
            if f != 0.0 {
                for j in k + 1..n {
                    row[j] -= f * row_k[j];
                }
            }
        }
    }
    Some(sign)
}

/// `log |det A|` and the sign of `det A` (0 when singular).
pub fn log_abs_det(a: &[f64], n: usize) -> (f64, f64) {
    let mut m = a.to_vec();
    let mut perm = vec![0; n];
    match lu_in_place(&mut m, n, &mut perm) {
        None => (f64::NEG_INFINITY, 0.0),
        Some(mut sign) => {
            let mut s = 0.0;
            for i in 0..n {
                let u = m[i * n + i];
                if u < 0.0 {
                    sign = -sign;
                }
                s += u.abs().ln();
            }
            (s, sign)
        }
    }
}

/// `log |det A|` and `A^{-T}` (the gradient of `log |det A|` with respect to
/// `A`). `None` when singular.
pub fn log_abs_det_and_inv_t(a: &[f64], n: usize) -> Option<(f64, Vec<f64>)> {
    let mut m = a.to_vec();
    let mut perm = vec![0; n];
    lu_in_place(&mut m, n, &mut perm)?;
    let logdet = (0..n).map(|i| m[i * n + i].abs().ln()).sum();
    // Solve A X = I column by column: P A = L U.
    let mut inv = vec![0.0; n * n];
    let mut col = vec![0.0; n];
    for c in 0..n {
        for i in 0..n {
            col[i] = if perm[i] == c { 1.0 } else { 0.0 };
        }
        for i in 0..n {
            let mut s = col[i];
            for j in 0..i {
                s -= m[i * n + j] * col[j];
            }
            col[i] = s;
        }
        for i in (0..n).rev() {
            let mut s = col[i];
            for j in i + 1..n {
                s -= m[i * n + j] * col[j];
            }
            col[i] = s / m[i * n + i];
        }
        // Column c of A^{-1} is row c of A^{-T}.
        inv[c * n..(c + 1) * n].copy_from_slice(&col);
    }
    Some((logdet, inv))
}

/// Determinant by the Leibniz formula (sum over permutations): exponential
/// cost, an independent oracle for tests on tiny matrices (n <= 7).
pub fn det_leibniz(a: &[f64], n: usize) -> f64 {
    assert!(n <= 8, "the Leibniz determinant is for tiny matrices");
    fn rec(a: &[f64], n: usize, row: usize, used: &mut [bool], sign: f64, acc: f64, out: &mut f64) {
        if row == n {
            *out += sign * acc;
            return;
        }
        // The sign flips once per unused column to the left of the chosen one.
        let mut inversions = 0;
        for c in 0..n {
            if used[c] {
                continue;
            }
            let s = if inversions % 2 == 0 { sign } else { -sign };
            used[c] = true;
            rec(a, n, row + 1, used, s, acc * a[row * n + c], out);
            used[c] = false;
            inversions += 1;
        }
    }
    let mut out = 0.0;
    rec(a, n, 0, &mut vec![false; n], 1.0, 1.0, &mut out);
    out
}

/// Eigenvalues of a symmetric `n x n` matrix by cyclic Jacobi rotations.
pub fn symmetric_eigenvalues(a: &[f64], n: usize) -> Vec<f64> {
    let mut m = a.to_vec();
    for _sweep in 0..100 {
        let mut off = 0.0;
        let mut diag = 0.0;
        for i in 0..n {
            diag += m[i * n + i] * m[i * n + i];
            for j in i + 1..n {
                off += m[i * n + j] * m[i * n + j];
            }
        }
        if off <= 1e-30 * diag.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let (app, aqq) = (m[p * n + p], m[q * n + q]);
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (m[k * n + p], m[k * n + q]);
                    m[k * n + p] = c * akp - s * akq;
                    m[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (m[p * n + k], m[q * n + k]);
                    m[p * n + k] = c * apk - s * aqk;
                    m[q * n + k] = s * apk + c * aqk;
                }
            }
        }
    }
    (0..n).map(|i| m[i * n + i]).collect()
}

/// The largest singular value of a `rows x cols` matrix, from the Jacobi
/// eigenvalues of the smaller Gram matrix (an SVD in all but name).
pub fn largest_singular_value(w: &[f64], rows: usize, cols: usize) -> f64 {
    assert_eq!(w.len(), rows * cols);
    // The smaller Gram matrix: W W^T (rows x rows) or W^T W (cols x cols).
    let wide = rows <= cols;
    let (n, inner) = if wide { (rows, cols) } else { (cols, rows) };
    let at = |i: usize, k: usize| if wide { w[i * cols + k] } else { w[k * cols + i] };
    let mut gram = vec![0.0; n * n];
    for i in 0..n {
        for j in i..n {
            let s: f64 = (0..inner).map(|k| at(i, k) * at(j, k)).sum();
            gram[i * n + j] = s;
            gram[j * n + i] = s;
        }
    }
    symmetric_eigenvalues(&gram, n).into_iter().fold(0.0f64, f64::max).max(0.0).sqrt()
}

fn normalize(v: &mut [f64]) -> f64 {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
    n
}

/// Power iteration for the largest singular value of `W` (`rows x cols`,
/// row-major), warm-started from `u` (length `cols`) and `v` (length
/// `rows`), the vectors with `sigma = v^T W u`. Iterates until both vectors
/// move less than `tol` (max abs change) or `max_iter` iterations; returns
/// `(sigma, iterations)`. At least `min_iter` iterations run.
#[allow(clippy::too_many_arguments)]
pub fn power_iteration(
    w: &[f64],
    rows: usize,
    cols: usize,
    u: &mut [f64],
    v: &mut [f64],
    tol: f64,
    min_iter: usize,
    max_iter: usize,
) -> (f64, usize) {
    assert_eq!((u.len(), v.len()), (cols, rows));
    if normalize(u) == 0.0 {
        u.iter_mut().enumerate().for_each(|(i, x)| *x = 1.0 / ((i + 1) as f64));
        normalize(u);
    }
    let mut it = 0;
    let mut new_v = vec![0.0; rows];
    let mut new_u = vec![0.0; cols];
    while it < max_iter {
        it += 1;
        // v <- normalize(W u)
        for i in 0..rows {
            new_v[i] = (0..cols).map(|j| w[i * cols + j] * u[j]).sum();
        }
        normalize(&mut new_v);
        // u <- normalize(W^T v)
        new_u.iter_mut().for_each(|x| *x = 0.0);
        for i in 0..rows {
            let vi = new_v[i];
            for j in 0..cols {
                new_u[j] += w[i * cols + j] * vi;
            }
        }
        normalize(&mut new_u);
        let dv = v.iter().zip(&new_v).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        let du = u.iter().zip(&new_u).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        v.copy_from_slice(&new_v);
        u.copy_from_slice(&new_u);
        if it >= min_iter && du <= tol && dv <= tol {
            break;
        }
    }
    (sigma_of(w, rows, cols, u, v), it)
}

/// `v^T W u`.
pub fn sigma_of(w: &[f64], rows: usize, cols: usize, u: &[f64], v: &[f64]) -> f64 {
    (0..rows).map(|i| v[i] * (0..cols).map(|j| w[i * cols + j] * u[j]).sum::<f64>()).sum()
}

/// A full-covariance Gaussian fitted by maximum likelihood (the baseline a
/// density model must beat). The covariance gets a tiny ridge.
#[derive(Clone, Debug)]
pub struct GaussianFit {
    pub mean: Vec<f64>,
    /// Lower Cholesky factor of the covariance, row-major.
    pub chol: Vec<f64>,
    pub log_det_cov: f64,
}

impl GaussianFit {
    pub fn fit(rows: &[Vec<f64>]) -> Option<Self> {
        Self::fit_with_ridge(rows, 1e-9)
    }

    /// With `ridge` times the mean variance added to the diagonal.
    pub fn fit_with_ridge(rows: &[Vec<f64>], ridge: f64) -> Option<Self> {
        let n = rows.len();
        let d = rows.first()?.len();
        if n < 2 {
            return None;
        }
        let mut mean = vec![0.0; d];
        for r in rows {
            for (m, x) in mean.iter_mut().zip(r) {
                *m += x / n as f64;
            }
        }
        let mut cov = vec![0.0; d * d];
        for r in rows {
            for i in 0..d {
                let a = r[i] - mean[i];
                for j in 0..=i {
                    cov[i * d + j] += a * (r[j] - mean[j]) / n as f64;
                }
            }
        }
        let scale = (0..d).map(|i| cov[i * d + i]).sum::<f64>() / d as f64;
        for i in 0..d {
            cov[i * d + i] += ridge * scale.max(1e-12);
            for j in 0..i {
                cov[j * d + i] = cov[i * d + j];
            }
        }
        let chol = cholesky(&cov, d)?;
        let log_det_cov = 2.0 * (0..d).map(|i| chol[i * d + i].ln()).sum::<f64>();
        Some(Self { mean, chol, log_det_cov })
    }

    pub fn log_pdf(&self, x: &[f64]) -> f64 {
        let d = self.mean.len();
        // Solve L y = x - mean.
        let mut y = vec![0.0; d];
        for i in 0..d {
            let s = x[i] - self.mean[i] - (0..i).map(|j| self.chol[i * d + j] * y[j]).sum::<f64>();
            y[i] = s / self.chol[i * d + i];
        }
        let q: f64 = y.iter().map(|v| v * v).sum();
        -0.5 * (q + self.log_det_cov + d as f64 * (2.0 * std::f64::consts::PI).ln())
    }
}

/// Lower Cholesky factor of a symmetric positive definite matrix.
pub fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if s <= 0.0 {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    Some(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    #[test]
    fn lu_determinant_matches_leibniz() {
        let mut s = 7;
        for n in 1..=6 {
            let a: Vec<f64> = (0..n * n).map(|_| lcg(&mut s)).collect();
            let (ld, sign) = log_abs_det(&a, n);
            let det = det_leibniz(&a, n);
            assert!((sign * ld.exp() - det).abs() < 1e-10 * det.abs().max(1.0), "n={n}: {} vs {det}", sign * ld.exp());
        }
    }

    #[test]
    fn inverse_transpose_is_an_inverse() {
        let mut s = 3;
        let n = 5;
        let a: Vec<f64> = (0..n * n).map(|_| lcg(&mut s)).collect();
        let (_, inv_t) = log_abs_det_and_inv_t(&a, n).unwrap();
        for i in 0..n {
            for j in 0..n {
                // (A A^{-1})_{ij} = sum_k A_ik (A^{-T})_jk
                let v: f64 = (0..n).map(|k| a[i * n + k] * inv_t[j * n + k]).sum();
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-10);
            }
        }
    }

    #[test]
    fn singular_values_agree() {
        let mut s = 11;
        let (r, c) = (7, 4);
        let w: Vec<f64> = (0..r * c).map(|_| lcg(&mut s)).collect();
        let svd = largest_singular_value(&w, r, c);
        let (mut u, mut v) = (vec![1.0; c], vec![0.0; r]);
        let (sigma, _) = power_iteration(&w, r, c, &mut u, &mut v, 1e-14, 10, 100_000);
        assert!((svd - sigma).abs() < 1e-9, "{svd} vs {sigma}");
        let wt: Vec<f64> = (0..c * r).map(|k| w[(k % r) * c + k / r]).collect();
        assert!((largest_singular_value(&wt, c, r) - svd).abs() < 1e-9);
    }
}
