//! Data for density models: uploaded vector datasets (JSON or CSV, checked
//! for shape, finite values and size), splits of rows, and a Gaussian
//! mixture with a known density (tests and benchmarks).
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use super::inference::{LN_2PI, normal};
use super::linalg;

/// Size limits of an uploaded dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetLimits {
    pub min_rows: usize,
    pub max_rows: usize,
    pub max_dim: usize,
    /// rows x dim
    pub max_values: usize,
}

impl Default for DatasetLimits {
    fn default() -> Self {
        Self { min_rows: 10, max_rows: 200_000, max_dim: 512, max_values: 8_000_000 }
    }
}

/// A problem with an uploaded dataset: where (a JSON pointer such as
/// `/rows/3/1`, or `line:7` / `line:7:column:2` for CSV) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetProblem {
    pub at: String,
    pub detail: String,
}

fn problem(at: impl Into<String>, detail: impl Into<String>) -> DatasetProblem {
    DatasetProblem { at: at.into(), detail: detail.into() }
}

/// A validated dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct VectorData {
    /// Column names, when given.
    pub columns: Option<Vec<String>>,
    pub rows: Vec<Vec<f64>>,
}

impl VectorData {
    pub fn dim(&self) -> usize {
        self.rows.first().map(Vec::len).unwrap_or(0)
    }
}

/// Largest magnitude of a value (datasets and request inputs): keeps every
/// computation finite and the float32 storage exact enough.
pub const MAX_ABS_VALUE: f64 = 1e12;

fn usable(x: f64) -> bool {
    x.is_finite() && x.abs() <= MAX_ABS_VALUE
}

/// At most this many problems are reported.
const MAX_PROBLEMS: usize = 20;

/// Checks rows (from JSON): same length as the first (or the column names),
/// finite, within the limits. Pointers are `{prefix}/{row}/{col}`.
pub fn validate_rows(
    prefix: &str,
    columns: Option<Vec<String>>,
    rows: Vec<Vec<f64>>,
    limits: &DatasetLimits,
) -> Result<VectorData, Vec<DatasetProblem>> {
    let mut problems = vec![];
    if let Some(cols) = &columns {
        if cols.is_empty() {
            problems.push(problem("/columns", "needs at least one column name"));
        }
        for (i, c) in cols.iter().enumerate() {
            if c.trim().is_empty() || c.len() > 128 {
                problems.push(problem(format!("/columns/{i}"), "column names are 1 to 128 characters"));
            }
        }
    }
    if rows.len() < limits.min_rows {
        problems.push(problem(prefix, format!("has {} rows; at least {} are needed", rows.len(), limits.min_rows)));
    }
    if rows.len() > limits.max_rows {
        problems.push(problem(prefix, format!("has {} rows; at most {} are allowed", rows.len(), limits.max_rows)));
        return Err(problems);
    }
    if let (Some(cols), Some(first)) = (&columns, rows.first())
        && !cols.is_empty()
        && cols.len() != first.len()
    {
        problems
            .push(problem("/columns", format!("names {} columns; the rows have {} values", cols.len(), first.len())));
        return Err(problems);
    }
    let dim = columns.as_ref().map(Vec::len).or_else(|| rows.first().map(Vec::len)).unwrap_or(0);
    if dim == 0 && !rows.is_empty() {
        problems.push(problem(format!("{prefix}/0"), "rows need at least one value"));
    }
    if dim > limits.max_dim {
        problems.push(problem(format!("{prefix}/0"), format!("has {dim} values; at most {} per row", limits.max_dim)));
    }
    if rows.len().saturating_mul(dim) > limits.max_values {
        problems.push(problem(
            prefix,
            format!("{} rows of {dim} values exceed the limit of {} values", rows.len(), limits.max_values),
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    for (i, r) in rows.iter().enumerate() {
        if problems.len() >= MAX_PROBLEMS {
            break;
        }
        if r.len() != dim {
            problems.push(problem(format!("{prefix}/{i}"), format!("has {} values, expected {dim}", r.len())));
            continue;
        }
        if let Some(j) = r.iter().position(|&x| !usable(x)) {
            problems.push(problem(
                format!("{prefix}/{i}/{j}"),
                format!("must be a finite number of magnitude at most {MAX_ABS_VALUE:e}"),
            ));
        }
    }
    if problems.is_empty() { Ok(VectorData { columns, rows }) } else { Err(problems) }
}

fn parse_number(s: &str) -> Option<f64> {
    let s = s.trim();
    let v: f64 = s.parse().ok()?;
    // "inf" and "nan" parse in Rust; datasets must be finite.
    usable(v).then_some(v)
}

/// Parses CSV: comma-separated numbers, one row per line; a first line
/// that is not all numbers is the header (column names). Blank lines are
/// skipped. Problems name the 1-based line and column.
pub fn parse_csv(text: &str, limits: &DatasetLimits) -> Result<VectorData, Vec<DatasetProblem>> {
    let mut problems = vec![];
    let mut columns: Option<Vec<String>> = None;
    let mut rows: Vec<Vec<f64>> = vec![];
    let mut dim: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        if rows.is_empty() && columns.is_none() && fields.iter().any(|f| f.trim().parse::<f64>().is_err()) {
            let names: Vec<String> = fields.iter().map(|f| f.trim().trim_matches('"').to_string()).collect();
            if let Some(i) = names.iter().position(|c| c.is_empty() || c.len() > 128) {
                problems
                    .push(problem(format!("line:{line_no}:column:{}", i + 1), "column names are 1 to 128 characters"));
            }
            dim = Some(names.len());
            columns = Some(names);
            continue;
        }
        if rows.len() >= limits.max_rows {
            problems.push(problem(format!("line:{line_no}"), format!("more than {} rows", limits.max_rows)));
            break;
        }
        let want = *dim.get_or_insert(fields.len());
        if want > limits.max_dim {
            problems.push(problem(
                format!("line:{line_no}"),
                format!("has {want} values; at most {} per row", limits.max_dim),
            ));
            break;
        }
        if fields.len() != want {
            problems.push(problem(format!("line:{line_no}"), format!("has {} values, expected {want}", fields.len())));
        } else {
            let mut row = Vec::with_capacity(want);
            for (j, f) in fields.iter().enumerate() {
                match parse_number(f) {
                    Some(v) => row.push(v),
                    None => {
                        problems.push(problem(
                            format!("line:{line_no}:column:{}", j + 1),
                            format!(
                                "`{}` is not a finite number of magnitude at most {MAX_ABS_VALUE:e}",
                                f.trim().chars().take(40).collect::<String>()
                            ),
                        ));
                        break;
                    }
                }
            }
            if row.len() == want {
                rows.push(row);
            }
        }
        if problems.len() >= MAX_PROBLEMS {
            break;
        }
        if rows.len().saturating_mul(want) > limits.max_values {
            problems.push(problem(format!("line:{line_no}"), format!("more than {} values in all", limits.max_values)));
            break;
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    if rows.len() < limits.min_rows {
        return Err(vec![problem("body", format!("has {} rows; at least {} are needed", rows.len(), limits.min_rows))]);
    }
    Ok(VectorData { columns, rows })
}

/// A seeded split of row indices: `val_frac` and `test_frac` of the rows
/// (at least one each when there are 10 or more rows), the rest training.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowSplit {
    pub seed: u64,
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub test: Vec<usize>,
}

impl RowSplit {
    pub fn new(n: usize, seed: u64, val_frac: f64, test_frac: f64) -> Self {
        let mut ix: Vec<usize> = (0..n).collect();
        ix.shuffle(&mut StdRng::seed_from_u64(seed));
        let at_least = |f: f64| if n >= 10 { ((n as f64 * f).round() as usize).max(1) } else { 0 };
        let (nv, nt) = (at_least(val_frac), at_least(test_frac));
        let test = ix[..nt].to_vec();
        let val = ix[nt..nt + nv].to_vec();
        let train = ix[nt + nv..].to_vec();
        Self { seed, train, val, test }
    }
}

/// A Gaussian mixture with a known density.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GaussianMixture {
    pub weights: Vec<f64>,
    pub means: Vec<Vec<f64>>,
    /// Lower Cholesky factors of the covariances, row-major.
    pub chols: Vec<Vec<f64>>,
}

impl GaussianMixture {
    /// From weights, means and covariances (row-major).
    pub fn new(weights: Vec<f64>, means: Vec<Vec<f64>>, covs: Vec<Vec<f64>>) -> Self {
        let d = means[0].len();
        let total: f64 = weights.iter().sum();
        let chols = covs.iter().map(|c| linalg::cholesky(c, d).expect("positive definite covariance")).collect();
        Self { weights: weights.iter().map(|w| w / total).collect(), means, chols }
    }

    /// The 2-D mixture of the tests and the benchmark: three overlapping,
    /// differently shaped components (far from Gaussian, easy to sample).
    pub fn demo_2d() -> Self {
        Self::new(
            vec![0.5, 0.3, 0.2],
            vec![vec![-1.5, 0.0], vec![1.8, 1.2], vec![0.6, -2.0]],
            vec![vec![1.0, 0.6, 0.6, 0.8], vec![0.5, -0.2, -0.2, 0.6], vec![0.4, 0.0, 0.0, 0.3]],
        )
    }

    pub fn dim(&self) -> usize {
        self.means[0].len()
    }

    pub fn sample(&self, n: usize, rng: &mut impl Rng) -> Vec<Vec<f64>> {
        let d = self.dim();
        (0..n)
            .map(|_| {
                let u: f64 = rng.random();
                let mut acc = 0.0;
                let mut k = self.weights.len() - 1;
                for (i, w) in self.weights.iter().enumerate() {
                    acc += w;
                    if u < acc {
                        k = i;
                        break;
                    }
                }
                let e: Vec<f64> = (0..d).map(|_| normal(rng)).collect();
                let l = &self.chols[k];
                (0..d).map(|i| self.means[k][i] + (0..=i).map(|j| l[i * d + j] * e[j]).sum::<f64>()).collect()
            })
            .collect()
    }

    pub fn log_pdf(&self, x: &[f64]) -> f64 {
        let d = self.dim();
        let terms: Vec<f64> = (0..self.weights.len())
            .map(|k| {
                let l = &self.chols[k];
                let mut y = vec![0.0; d];
                for i in 0..d {
                    let mut s = x[i] - self.means[k][i];
                    for j in 0..i {
                        s -= l[i * d + j] * y[j];
                    }
                    y[i] = s / l[i * d + i];
                }
                let logdet: f64 = (0..d).map(|i| l[i * d + i].ln()).sum();
                self.weights[k].ln() - 0.5 * y.iter().map(|v| v * v).sum::<f64>() - logdet - 0.5 * d as f64 * LN_2PI
            })
            .collect();
        let m = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        m + terms.iter().map(|t| (t - m).exp()).sum::<f64>().ln()
    }

    /// The differential entropy `-E log p(x)` by Monte Carlo: `(mean, standard error)`.
    pub fn entropy(&self, n: usize, seed: u64) -> (f64, f64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let v: Vec<f64> = self.sample(n, &mut rng).iter().map(|x| -self.log_pdf(x)).collect();
        let m = v.iter().sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1) as f64;
        (m, (var / n as f64).sqrt())
    }
}

/// Area under the ROC curve of `scores` separating `positives` from
/// `negatives` (higher scores = positive), ties counted half.
pub fn auroc(positives: &[f64], negatives: &[f64]) -> f64 {
    let mut all: Vec<(f64, bool)> =
        positives.iter().map(|&s| (s, true)).chain(negatives.iter().map(|&s| (s, false))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Mann-Whitney U with average ranks.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let avg = (i + j + 1) as f64 / 2.0; // ranks i+1..=j
        rank_sum += all[i..j].iter().filter(|p| p.1).count() as f64 * avg;
        i = j;
    }
    let (np, nn) = (positives.len() as f64, negatives.len() as f64);
    (rank_sum - np * (np + 1.0) / 2.0) / (np * nn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_header_and_errors() {
        let lim = DatasetLimits { min_rows: 2, ..Default::default() };
        let ok = parse_csv("a,b\n1,2\n3,4.5\n\n5,6\n", &lim).unwrap();
        assert_eq!(ok.columns.as_deref(), Some(&["a".to_string(), "b".to_string()][..]));
        assert_eq!(ok.rows, vec![vec![1.0, 2.0], vec![3.0, 4.5], vec![5.0, 6.0]]);
        let bad = parse_csv("1,2\n3\n4,NaN\n5,inf\n", &lim).unwrap_err();
        let at: Vec<&str> = bad.iter().map(|p| p.at.as_str()).collect();
        assert_eq!(at, ["line:2", "line:3:column:2", "line:4:column:2"]);
    }

    #[test]
    fn json_rows_are_checked() {
        let lim = DatasetLimits { min_rows: 1, ..Default::default() };
        let e = validate_rows("/rows", None, vec![vec![1.0, 2.0], vec![1.0]], &lim).unwrap_err();
        assert_eq!(e[0].at, "/rows/1");
        let e = validate_rows("/rows", None, vec![vec![1.0, f64::NAN]], &lim).unwrap_err();
        assert_eq!(e[0].at, "/rows/0/1");
    }

    #[test]
    fn auroc_of_separated_and_tied_scores() {
        assert_eq!(auroc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
        assert_eq!(auroc(&[1.0], &[1.0]), 0.5);
        assert!((auroc(&[2.0, 0.0], &[1.0]) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn mixture_density_integrates_to_one() {
        let gm = GaussianMixture::demo_2d();
        let h = 0.05;
        let mut total = 0.0;
        for i in -200..200 {
            for j in -200..200 {
                total += gm.log_pdf(&[i as f64 * h, j as f64 * h]).exp() * h * h;
            }
        }
        assert!((total - 1.0).abs() < 1e-3, "{total}");
    }
}
