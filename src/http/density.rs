//! Density models: score inputs (log-likelihood, bits per dimension,
//! percentile against the training data, in-distribution flag), encode
//! (x -> z with the log-determinant), invert (z -> x by fixed-point
//! iteration) and sample; inspect versions and their training score
//! distribution; upload vector datasets. Scoring is open to `clinical`
//! keys, everything else needs `admin`.
use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::Response,
};
use chrono::{DateTime, Utc};
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{
    auth::{Admin, Clinical},
    error::{ApiError, FieldError, Problem},
    extract::{Json, Path, Query, parse_json},
    idempotency::{self, IdempotencyKey, Written},
    pagination::{Page, PageParams, encode_cursor},
};
use crate::{
    app::AppState,
    ml::iresnet::{
        FeatureSpace, Flow, InvertOptions, LogDetMethod, Roulette, ScoreOptions,
        data::{DatasetLimits, DatasetProblem, MAX_ABS_VALUE, VectorData, parse_csv, validate_rows},
        inference::normal,
    },
    registry::ModelKind,
    serving::density::{self as serving, DensityVersion, VisitInput},
    store,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload_dataset, list_datasets))
        .routes(routes!(get_dataset, delete_dataset))
        .routes(routes!(list_density_models))
        .routes(routes!(get_density_model))
        .routes(routes!(score))
        .routes(routes!(score_active))
        .routes(routes!(encode))
        .routes(routes!(invert))
        .routes(routes!(sample))
}

/// Most inputs (vectors, visits, latents, samples) per request.
pub const MAX_INPUTS: usize = 1000;
/// Inputs scored on the request's thread; more go to a blocking thread.
const INLINE_INPUTS: usize = 8;

async fn blocking<T: Send + 'static>(n: usize, f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    if n <= INLINE_INPUTS {
        Ok(f())
    } else {
        tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::Internal(e.into()))
    }
}

// ---------------------------------------------------------------------------
// Shared shapes
// ---------------------------------------------------------------------------

/// The density version that answered.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DensityModelRef {
    pub id: Uuid,
    pub version: String,
    pub feature_space: FeatureSpace,
    pub dim: usize,
    /// True when its MICRON version is not the active one (`micron_health`).
    pub stale: bool,
}

fn model_ref(state: &AppState, v: &DensityVersion) -> DensityModelRef {
    DensityModelRef {
        id: v.row.id,
        version: v.row.version.clone(),
        feature_space: v.space().clone(),
        dim: v.density.dim(),
        stale: v.stale_reason(state).is_some(),
    }
}

/// Checks vectors against the model's dimension and the limits; errors
/// point at `{prefix}/{i}` and `{prefix}/{i}/{j}`.
fn check_vectors(prefix: &str, rows: &[Vec<f64>], dim: usize) -> Result<(), ApiError> {
    if rows.is_empty() {
        return Err(ApiError::validation(prefix, "needs at least one input"));
    }
    if rows.len() > MAX_INPUTS {
        return Err(ApiError::validation(prefix, format!("{} inputs; at most {MAX_INPUTS} per request", rows.len())));
    }
    let mut errors = vec![];
    for (i, r) in rows.iter().enumerate() {
        if r.len() != dim {
            errors.push(FieldError::new(
                format!("{prefix}/{i}"),
                format!("has {} values; the model's dimension is {dim}", r.len()),
            ));
        } else if let Some(j) = r.iter().position(|x| !x.is_finite() || x.abs() > MAX_ABS_VALUE) {
            errors.push(FieldError::new(
                format!("{prefix}/{i}/{j}"),
                format!("must be a finite number of magnitude at most {MAX_ABS_VALUE:e}"),
            ));
        }
        if errors.len() >= 20 {
            break;
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(ApiError::Validation(errors)) }
}

/// Vectors or visits, resolved to vectors (with unknown-code counts for visits).
async fn inputs(
    state: &AppState,
    v: &DensityVersion,
    vectors: Option<Vec<Vec<f64>>>,
    visits: Option<Vec<VisitInput>>,
) -> Result<(Vec<Vec<f64>>, Option<Vec<usize>>), ApiError> {
    match (vectors, visits) {
        (Some(rows), None) => {
            check_vectors("/vectors", &rows, v.density.dim())?;
            Ok((rows, None))
        }
        (None, Some(visits)) => {
            if visits.is_empty() {
                return Err(ApiError::validation("/visits", "needs at least one visit"));
            }
            if visits.len() > MAX_INPUTS {
                return Err(ApiError::validation("/visits", format!("at most {MAX_INPUTS} visits per request")));
            }
            let micron = v.micron(state)?;
            let got = serving::visit_vectors(state, &micron, "/visits", &visits).await?;
            let (rows, unknown): (Vec<_>, Vec<_>) = got.into_iter().unzip();
            Ok((rows, Some(unknown)))
        }
        _ => Err(ApiError::validation("/vectors", "give either `vectors` or `visits`")),
    }
}

fn score_options(
    v: &DensityVersion,
    logdet: Option<LogDetMethod>,
    samples: Option<usize>,
) -> Result<ScoreOptions, ApiError> {
    let mut o = v.density.default_options();
    if let Some(m) = logdet {
        o.method = m;
    }
    if let Some(s) = samples {
        if !(2..=64).contains(&s) {
            return Err(ApiError::validation("/samples", "must be from 2 to 64"));
        }
        o.samples = s;
    }
    Ok(o)
}

// ---------------------------------------------------------------------------
// Score
// ---------------------------------------------------------------------------

/// Inputs to score: vectors of the model's dimension, or visits
/// (`micron_health` models only): stored ones by id, or codes inline.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"vectors": [[0.12, -0.40, 1.31, 0.05]], "logdet": "exact"}))]
pub struct ScoreRequest {
    /// At most 1,000 vectors.
    #[serde(default)]
    pub vectors: Option<Vec<Vec<f64>>>,
    /// At most 1,000 visits.
    #[serde(default)]
    pub visits: Option<Vec<VisitInput>>,
    /// `exact` or `estimate` (default: the model's scoring method).
    #[serde(default)]
    pub logdet: Option<LogDetMethod>,
    /// Independent estimates averaged per input with `estimate` (2 to 64, default 8).
    #[serde(default)]
    pub samples: Option<usize>,
}

/// The score of one input.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScoredInput {
    /// log p(x), nats.
    pub log_likelihood: f64,
    /// -log2 p(x) / dimension.
    pub bits_per_dim: f64,
    /// Percentile of the score among the training inputs' scores (0 to 100).
    pub percentile: f64,
    /// Whether the percentile is at least the model's in-distribution cut.
    pub in_distribution: bool,
    /// Standard error of `log_likelihood` (with `estimate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std_error: Option<f64>,
    /// Codes of the visit that the MICRON vocabulary does not know (ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_codes: Option<usize>,
}

/// Scores, in the order of the inputs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScoreResponse {
    pub model: DensityModelRef,
    /// The log-determinant used.
    pub logdet: LogDetMethod,
    /// Estimates per input (with `estimate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
    /// Inputs below this percentile are flagged out of distribution.
    pub in_distribution_percentile: f64,
    pub items: Vec<ScoredInput>,
}

async fn score_with(state: &AppState, v: DensityVersion, body: ScoreRequest) -> Result<ScoreResponse, ApiError> {
    if let Some(why) = v.stale_reason(state) {
        return Err(ApiError::StaleModel(why));
    }
    let opts = score_options(&v, body.logdet, body.samples)?;
    let (rows, unknown) = inputs(state, &v, body.vectors, body.visits).await?;
    let density = v.density.clone();
    let n = rows.len() * if opts.method == LogDetMethod::Estimate { 4 } else { 1 };
    let scores = blocking(n, move || {
        rows.iter()
            .enumerate()
            .map(|(i, x)| density.score(x, ScoreOptions { seed: opts.seed.wrapping_add(i as u64), ..opts }))
            .collect::<Vec<_>>()
    })
    .await?;
    let items = scores
        .into_iter()
        .enumerate()
        .map(|(i, s)| ScoredInput {
            log_likelihood: s.log_likelihood,
            bits_per_dim: s.bits_per_dim,
            percentile: s.percentile,
            in_distribution: s.in_distribution,
            std_error: s.std_error,
            unknown_codes: unknown.as_ref().map(|u| u[i]),
        })
        .collect();
    Ok(ScoreResponse {
        model: model_ref(state, &v),
        logdet: opts.method,
        samples: (opts.method == LogDetMethod::Estimate).then_some(opts.samples),
        in_distribution_percentile: v.density.meta.in_distribution_percentile,
        items,
    })
}

/// Score inputs under a density model.
///
/// How typical each input is of the model's training data: log-likelihood
/// (nats), bits per dimension, percentile among the training inputs' scores
/// and the in-distribution flag. `ready` and `active` versions answer; a
/// `micron_health` model whose MICRON version is no longer active is stale
/// (409 `stale-model`).
#[utoipa::path(post, path = "/v1/density/models/{model_id}/score", tag = "density",
    request_body = ScoreRequest,
    params(("model_id" = Uuid, Path, description = "Density model version id")),
    responses((status = 200, description = "One score per input", body = ScoreResponse),
        (status = 404, description = "No such density model", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The model is stale or not servable", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = ["clinical"])))]
pub async fn score(
    State(state): State<AppState>,
    _auth: Clinical,
    Path(id): Path<Uuid>,
    Json(body): Json<ScoreRequest>,
) -> Result<axum::Json<ScoreResponse>, ApiError> {
    let v = serving::find(&state, id).await?;
    Ok(axum::Json(score_with(&state, v, body).await?))
}

/// Score inputs under the density model predictions use.
///
/// The active density model over the active MICRON version (the one whose
/// fields medication-change predictions carry). 503 when there is none.
#[utoipa::path(post, path = "/v1/density/score", tag = "density",
    request_body = ScoreRequest,
    responses((status = 200, description = "One score per input", body = ScoreResponse),
        (status = 503, description = "No density model over the active MICRON version is active", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = ["clinical"])))]
pub async fn score_active(
    State(state): State<AppState>,
    _auth: Clinical,
    Json(body): Json<ScoreRequest>,
) -> Result<axum::Json<ScoreResponse>, ApiError> {
    let v = serving::active_for_micron(&state).await?;
    Ok(axum::Json(score_with(&state, v, body).await?))
}

// ---------------------------------------------------------------------------
// Encode, invert, sample
// ---------------------------------------------------------------------------

/// Inputs to map to latent codes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"vectors": [[0.12, -0.40, 1.31, 0.05]]}))]
pub struct EncodeRequest {
    #[serde(default)]
    pub vectors: Option<Vec<Vec<f64>>>,
    /// `micron_health` models: visits by id or codes inline.
    #[serde(default)]
    pub visits: Option<Vec<VisitInput>>,
    /// `exact` or `estimate` (default: the model's scoring method).
    #[serde(default)]
    pub logdet: Option<LogDetMethod>,
    #[serde(default)]
    pub samples: Option<usize>,
}

/// One encoded input.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Encoded {
    /// The latent code z = F(x).
    pub z: Vec<f64>,
    /// log |det dF/dx| (nats).
    pub log_det: f64,
    /// log p(x) = log N(z; 0, I) + log_det.
    pub log_likelihood: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std_error: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EncodeResponse {
    pub model: DensityModelRef,
    pub logdet: LogDetMethod,
    pub items: Vec<Encoded>,
}

/// Encode inputs: x -> z with the log-determinant.
#[utoipa::path(post, path = "/v1/density/models/{model_id}/encode", tag = "density",
    request_body = EncodeRequest,
    params(("model_id" = Uuid, Path, description = "Density model version id")),
    responses((status = 200, description = "One latent code per input", body = EncodeResponse),
        (status = 404, description = "No such density model", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Visits given to a stale model, or the version is not servable", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = ["admin"])))]
pub async fn encode(
    State(state): State<AppState>,
    _auth: Admin,
    Path(id): Path<Uuid>,
    Json(body): Json<EncodeRequest>,
) -> Result<axum::Json<EncodeResponse>, ApiError> {
    let v = serving::find(&state, id).await?;
    let opts = score_options(&v, body.logdet, body.samples)?;
    let (rows, _) = inputs(&state, &v, body.vectors, body.visits).await?;
    let density = v.density.clone();
    let items = blocking(rows.len(), move || {
        rows.iter()
            .enumerate()
            .map(|(i, x)| match opts.method {
                LogDetMethod::Exact => {
                    let (z, ld) = density.flow.forward_exact(x);
                    let ll = Flow::base_log_prob(&z) + ld;
                    Encoded { z, log_det: ld, log_likelihood: ll, std_error: None }
                }
                LogDetMethod::Estimate => {
                    let mut rng = StdRng::seed_from_u64(opts.seed.wrapping_add(i as u64));
                    let (z, e) = density.flow.forward_estimate(x, Roulette::EVAL, opts.samples, &mut rng);
                    let ll = Flow::base_log_prob(&z) + e.mean;
                    Encoded { z, log_det: e.mean, log_likelihood: ll, std_error: Some(e.std_error) }
                }
            })
            .collect::<Vec<_>>()
    })
    .await?;
    Ok(axum::Json(EncodeResponse { model: model_ref(&state, &v), logdet: opts.method, items }))
}

fn invert_options(tolerance: Option<f64>, max_iterations: Option<usize>) -> Result<InvertOptions, ApiError> {
    let mut o = InvertOptions::default();
    if let Some(t) = tolerance {
        if !(1e-12..=0.1).contains(&t) {
            return Err(ApiError::validation("/tolerance", "must be from 1e-12 to 0.1"));
        }
        o.atol = t;
        o.rtol = t;
    }
    if let Some(m) = max_iterations {
        if !(1..=10_000).contains(&m) {
            return Err(ApiError::validation("/max_iterations", "must be from 1 to 10000"));
        }
        o.max_iterations = m;
    }
    Ok(o)
}

/// Latent codes to map back to inputs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"latents": [[0.3, -1.1, 0.4, 0.0]], "tolerance": 1e-6, "max_iterations": 1000}))]
pub struct InvertRequest {
    /// At most 1,000 codes of the model's dimension.
    pub latents: Vec<Vec<f64>>,
    /// Stop a block's iteration when every coordinate moves less than
    /// `tolerance * (1 + |x|)` (1e-12 to 0.1; default 1e-6).
    #[serde(default)]
    pub tolerance: Option<f64>,
    /// Iteration cap per block (1 to 10,000; default 1,000).
    #[serde(default)]
    pub max_iterations: Option<usize>,
}

/// One inverted code.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Inverted {
    /// x = F^-1(z).
    pub x: Vec<f64>,
    /// Fixed-point iterations, summed over the blocks.
    pub iterations: usize,
    /// The largest final residual max |x + g(x) - y| over the blocks.
    pub residual: f64,
    /// False when a block hit the iteration cap: `x` is then not an exact inverse.
    pub converged: bool,
}

impl From<crate::ml::iresnet::Inversion> for Inverted {
    fn from(i: crate::ml::iresnet::Inversion) -> Self {
        Self { x: i.x, iterations: i.iterations, residual: i.residual, converged: i.converged }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InvertResponse {
    pub model: DensityModelRef,
    /// Inputs whose inversion hit the iteration cap.
    pub not_converged: usize,
    pub items: Vec<Inverted>,
}

/// Invert latent codes: z -> x by fixed-point iteration.
///
/// Block by block from the last, `x_{k+1} = y - g(x_k)` until the tolerance
/// or the cap; every answer says how many iterations it took, its residual,
/// and whether it converged.
#[utoipa::path(post, path = "/v1/density/models/{model_id}/invert", tag = "density",
    request_body = InvertRequest,
    params(("model_id" = Uuid, Path, description = "Density model version id")),
    responses((status = 200, description = "One input per latent code", body = InvertResponse),
        (status = 404, description = "No such density model", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = ["admin"])))]
pub async fn invert(
    State(state): State<AppState>,
    _auth: Admin,
    Path(id): Path<Uuid>,
    Json(body): Json<InvertRequest>,
) -> Result<axum::Json<InvertResponse>, ApiError> {
    let v = serving::find(&state, id).await?;
    let opts = invert_options(body.tolerance, body.max_iterations)?;
    check_vectors("/latents", &body.latents, v.density.dim())?;
    let density = v.density.clone();
    let latents = body.latents;
    let items: Vec<Inverted> = blocking(latents.len(), move || {
        latents.iter().map(|z| density.flow.inverse(z, opts).into()).collect::<Vec<_>>()
    })
    .await?;
    let not_converged = items.iter().filter(|i| !i.converged).count();
    Ok(axum::Json(InvertResponse { model: model_ref(&state, &v), not_converged, items }))
}

/// What to sample.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"n": 5, "temperature": 0.8, "seed": 7, "decode": true}))]
pub struct SampleRequest {
    /// Samples (1 to 1,000).
    pub n: usize,
    /// z ~ N(0, temperature^2 I) (above 0, at most 10; default 1).
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Seed of the draws (default: random).
    #[serde(default)]
    pub seed: Option<u64>,
    /// `micron_health` models: decode each sample through MICRON's
    /// prescription network into the medications it would predict.
    #[serde(default)]
    pub decode: bool,
    /// Stop a block's iteration when every coordinate moves less than
    /// `tolerance * (1 + |x|)` (1e-12 to 0.1; default 1e-6).
    #[serde(default)]
    pub tolerance: Option<f64>,
    /// Iteration cap per block (1 to 10,000; default 1,000).
    #[serde(default)]
    pub max_iterations: Option<usize>,
}

/// A medication with MICRON's probability for a sampled representation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SampledMedication {
    pub code: String,
    pub probability: f64,
}

/// One sample.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Sampled {
    pub x: Vec<f64>,
    /// The latent code it was inverted from.
    pub z: Vec<f64>,
    pub iterations: usize,
    pub residual: f64,
    pub converged: bool,
    /// log p(x) of the sample (exact when the model scores exactly).
    pub log_likelihood: f64,
    /// With `decode`: medications whose probability f(h) is at least 0.5, most likely first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medications: Option<Vec<SampledMedication>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SampleResponse {
    pub model: DensityModelRef,
    pub temperature: f64,
    pub seed: u64,
    /// Samples whose inversion hit the iteration cap.
    pub not_converged: usize,
    pub items: Vec<Sampled>,
}

/// Draw samples from a density model.
///
/// `z ~ N(0, T^2 I)` inverted to inputs; with `decode`, a `micron_health`
/// sample is also turned into the medications MICRON's prescription network
/// would give that health representation (probability at least 0.5).
#[utoipa::path(post, path = "/v1/density/models/{model_id}/sample", tag = "density",
    request_body = SampleRequest,
    params(("model_id" = Uuid, Path, description = "Density model version id")),
    responses((status = 200, description = "The samples", body = SampleResponse),
        (status = 404, description = "No such density model", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Decoding asked of a stale model", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = ["admin"])))]
pub async fn sample(
    State(state): State<AppState>,
    _auth: Admin,
    Path(id): Path<Uuid>,
    Json(body): Json<SampleRequest>,
) -> Result<axum::Json<SampleResponse>, ApiError> {
    let v = serving::find(&state, id).await?;
    if !(1..=MAX_INPUTS).contains(&body.n) {
        return Err(ApiError::validation("/n", format!("must be from 1 to {MAX_INPUTS}")));
    }
    let temperature = body.temperature.unwrap_or(1.0);
    if !(temperature > 0.0 && temperature <= 10.0) {
        return Err(ApiError::validation("/temperature", "must be above 0 and at most 10"));
    }
    let opts = invert_options(body.tolerance, body.max_iterations)?;
    let micron = if body.decode {
        if !matches!(v.space(), FeatureSpace::MicronHealth { .. }) {
            return Err(ApiError::validation("/decode", "only `micron_health` models decode samples into medications"));
        }
        Some(v.micron(&state)?)
    } else {
        None
    };
    let seed = body.seed.unwrap_or_else(rand::random);
    let density = v.density.clone();
    let score_opts = density.default_options();
    let n = body.n;
    let items: Vec<Sampled> = blocking(n * 2, move || {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                let z: Vec<f64> = (0..density.dim()).map(|_| temperature * normal(&mut rng)).collect();
                let inv = density.flow.inverse(&z, opts);
                let s = density.score(&inv.x, ScoreOptions { seed: seed.wrapping_add(i as u64), ..score_opts });
                let medications = micron.as_ref().map(|m| {
                    let h: Vec<f32> = inv.x.iter().map(|&x| x as f32).collect();
                    let logits = m.predictor.weights.prescription(&h);
                    let mut meds: Vec<SampledMedication> = logits
                        .iter()
                        .enumerate()
                        .map(|(j, &l)| (j, 1.0 / (1.0 + (-l as f64).exp())))
                        .filter(|(_, p)| *p >= 0.5)
                        .map(|(j, p)| SampledMedication {
                            code: m.artifact.vocab.med.code(j as u32).to_string(),
                            probability: p,
                        })
                        .collect();
                    meds.sort_by(|a, b| b.probability.total_cmp(&a.probability).then_with(|| a.code.cmp(&b.code)));
                    meds
                });
                Sampled {
                    x: inv.x,
                    z,
                    iterations: inv.iterations,
                    residual: inv.residual,
                    converged: inv.converged,
                    log_likelihood: s.log_likelihood,
                    medications,
                }
            })
            .collect::<Vec<_>>()
    })
    .await?;
    let not_converged = items.iter().filter(|i| !i.converged).count();
    Ok(axum::Json(SampleResponse { model: model_ref(&state, &v), temperature, seed, not_converged, items }))
}

// ---------------------------------------------------------------------------
// Versions
// ---------------------------------------------------------------------------

/// A density model version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DensityModelSummary {
    pub id: Uuid,
    pub version: String,
    /// `training`, `ready`, `active`, `retired` or `failed`.
    pub status: String,
    /// Serving scope: one active version per scope.
    pub scope: String,
    pub feature_space: Option<FeatureSpace>,
    pub dim: Option<usize>,
    /// True for a `micron_health` model whose MICRON version is not active.
    pub stale: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_reason: Option<String>,
    /// Test negative log-likelihood, nats.
    pub test_nll: Option<f64>,
    pub test_bpd: Option<f64>,
    pub job_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
}

fn summary(state: &AppState, r: &store::models::ModelRow) -> DensityModelSummary {
    let space: Option<FeatureSpace> = serde_json::from_value(r.config["feature_space"].clone()).ok();
    let stale_reason = space.as_ref().and_then(|s| serving::stale_reason(state, s));
    DensityModelSummary {
        id: r.id,
        version: r.version.clone(),
        status: r.status.clone(),
        scope: r.scope.clone(),
        dim: r.config["architecture"]["dim"].as_u64().map(|d| d as usize),
        feature_space: space,
        stale: stale_reason.is_some(),
        stale_reason,
        test_nll: r.metrics["test"]["nll"].as_f64(),
        test_bpd: r.metrics["test"]["bpd"].as_f64(),
        job_id: r.job_id,
        created_at: r.created_at,
        activated_at: r.activated_at,
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DensityModelFilter {
    /// Only versions with this status.
    pub status: Option<String>,
}

/// List density model versions, newest first.
#[utoipa::path(get, path = "/v1/density/models", tag = "density", params(DensityModelFilter, PageParams),
    responses((status = 200, description = "A page of density versions", body = Page<DensityModelSummary>)),
    security(("api_key" = ["admin"])))]
pub async fn list_density_models(
    State(state): State<AppState>,
    _auth: Admin,
    Query(page): Query<PageParams>,
    Query(filter): Query<DensityModelFilter>,
) -> Result<axum::Json<Page<DensityModelSummary>>, ApiError> {
    let limit = page.limit()?;
    let before = page.cursor(|s| s.parse::<Uuid>().ok())?;
    if let Some(s) = &filter.status
        && !matches!(s.as_str(), "training" | "ready" | "active" | "retired" | "failed")
    {
        return Err(ApiError::validation("query:status", "must be one of training, ready, active, retired, failed"));
    }
    let rows =
        store::models::list(&state.db, Some(ModelKind::Density.as_str()), filter.status.as_deref(), before, limit + 1)
            .await?;
    Ok(axum::Json(Page::from_rows(rows, limit, |r| encode_cursor(r.id), |r| summary(&state, &r))))
}

/// One quantile of the training scores.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScoreQuantile {
    pub percentile: f64,
    pub log_likelihood: f64,
}

/// An equal-width histogram: `counts[i]` scores lie in `[edges[i], edges[i + 1])`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Histogram {
    pub edges: Vec<f64>,
    pub counts: Vec<u64>,
}

/// The distribution of the training inputs' log-likelihoods (what
/// percentiles are measured against).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TrainingScores {
    pub n: usize,
    pub mean: f64,
    pub quantiles: Vec<ScoreQuantile>,
    pub histogram: Histogram,
    /// The log-likelihood at the in-distribution percentile: inputs below it are flagged.
    pub in_distribution_cut: f64,
}

/// A density version in detail.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DensityModelDetail {
    #[serde(flatten)]
    pub summary: DensityModelSummary,
    /// Blocks, hidden width, spectral-norm bound c.
    #[schema(value_type = Object)]
    pub architecture: Value,
    /// The default scoring method.
    pub score_logdet: LogDetMethod,
    pub in_distribution_percentile: f64,
    #[schema(value_type = Object)]
    pub metrics: Value,
    pub training_scores: TrainingScores,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistogramParams {
    /// Histogram bins of the training scores (1 to 200; default 30).
    #[param(value_type = Option<u32>)]
    pub bins: Option<String>,
}

/// Fetch a density model version with its training score distribution.
///
/// The histogram and quantiles of the training inputs' log-likelihoods are
/// what a score's percentile is measured against (the dashboard draws them
/// with an input's position marked).
#[utoipa::path(get, path = "/v1/density/models/{model_id}", tag = "density",
    params(("model_id" = Uuid, Path, description = "Density model version id"), HistogramParams),
    responses((status = 200, description = "The version", body = DensityModelDetail),
        (status = 404, description = "No such density model", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = ["admin"])))]
pub async fn get_density_model(
    State(state): State<AppState>,
    _auth: Admin,
    Path(id): Path<Uuid>,
    Query(q): Query<HistogramParams>,
) -> Result<axum::Json<DensityModelDetail>, ApiError> {
    let bins = match q.bins.as_deref() {
        None => 30,
        Some(s) => match s.parse::<usize>() {
            Ok(b) if (1..=200).contains(&b) => b,
            _ => return Err(ApiError::validation("query:bins", "must be an integer from 1 to 200")),
        },
    };
    let row = store::models::get(&state.db, id)
        .await?
        .filter(|r| r.kind == ModelKind::Density.as_str())
        .ok_or_else(|| ApiError::NotFound("density model".into()))?;
    let model = state.registry.loaded(&row).await?;
    let density = model.density.clone().ok_or_else(|| anyhow::anyhow!("density version {id} has no flow loaded"))?;
    let scores = &density.scores;
    let (edges, counts) = scores.histogram(bins);
    let quantiles = [1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0]
        .into_iter()
        .map(|p| ScoreQuantile { percentile: p, log_likelihood: scores.quantile(p) })
        .collect();
    let n = scores.len();
    let pct = density.meta.in_distribution_percentile;
    Ok(axum::Json(DensityModelDetail {
        summary: summary(&state, &row),
        architecture: serde_json::json!({
            "dim": density.config.dim,
            "blocks": density.config.blocks,
            "hidden": density.config.hidden,
            "coeff": density.config.coeff,
        }),
        score_logdet: density.meta.score_logdet,
        in_distribution_percentile: pct,
        metrics: row.metrics.clone(),
        training_scores: TrainingScores {
            n,
            mean: scores.sorted.iter().sum::<f64>() / n.max(1) as f64,
            quantiles,
            histogram: Histogram { edges, counts },
            in_distribution_cut: scores.quantile(pct),
        },
    }))
}

// ---------------------------------------------------------------------------
// Datasets
// ---------------------------------------------------------------------------

/// A vector dataset in JSON. (CSV: send `Content-Type: text/csv` with
/// `?name=`; a first line that is not all numbers is the header.)
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "lab panel 2026", "columns": ["sodium", "potassium", "creatinine"],
    "rows": [[139.0, 4.1, 0.9], [141.0, 3.8, 1.1], [137.0, 4.4, 1.0]]}))]
pub struct DatasetUpload {
    /// 1 to 200 characters.
    pub name: String,
    /// Column names (optional; as many as values per row).
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Rows of equal length, finite numbers (10 to 200,000 rows, at most
    /// 512 values per row and 8,000,000 in all).
    pub rows: Vec<Vec<f64>>,
}

/// Per-column statistics of a dataset.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ColumnStats {
    pub name: Option<String>,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

/// An uploaded dataset.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Dataset {
    pub id: Uuid,
    pub name: String,
    pub dim: i32,
    pub rows: i32,
    pub columns: Option<Vec<String>>,
    /// sha256 of the stored values (float32, little-endian, row-major).
    pub sha256: String,
    /// `json` or `csv`.
    pub format: String,
    pub created_at: DateTime<Utc>,
    /// Per-column statistics (single-dataset answers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Vec<ColumnStats>>,
}

fn dataset(r: store::density::DatasetRow, rows: Option<&[Vec<f64>]>) -> Dataset {
    let stats = rows.map(|rows| {
        let d = r.dim as usize;
        (0..d)
            .map(|j| {
                let n = rows.len() as f64;
                let mean = rows.iter().map(|x| x[j]).sum::<f64>() / n;
                let var = rows.iter().map(|x| (x[j] - mean).powi(2)).sum::<f64>() / n;
                ColumnStats {
                    name: r.columns.as_ref().and_then(|c| c.get(j).cloned()),
                    mean,
                    std: var.sqrt(),
                    min: rows.iter().map(|x| x[j]).fold(f64::INFINITY, f64::min),
                    max: rows.iter().map(|x| x[j]).fold(f64::NEG_INFINITY, f64::max),
                }
            })
            .collect()
    });
    Dataset {
        id: r.id,
        name: r.name,
        dim: r.dim,
        rows: r.row_count,
        columns: r.columns,
        sha256: r.sha256,
        format: r.format,
        created_at: r.created_at,
        stats,
    }
}

fn problems(p: Vec<DatasetProblem>) -> ApiError {
    ApiError::Validation(p.into_iter().map(|p| FieldError::new(p.at, p.detail)).collect())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadParams {
    /// The dataset's name (CSV uploads).
    pub name: Option<String>,
}

fn check_name(name: &str, pointer: &str) -> Result<String, ApiError> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > 200 {
        return Err(ApiError::validation(pointer, "must be 1 to 200 characters"));
    }
    Ok(n.to_string())
}

/// Upload a vector dataset (JSON or CSV).
///
/// Validated as a whole (shape, finite values, size limits; errors name the
/// JSON pointer or the CSV line and column) and stored in one statement; a
/// refused upload stores nothing. Train a `vectors` density model on it with
/// `POST /v1/jobs` (`{"kind": "train_density", "params": {"feature_space":
/// "vectors", "dataset_id": ...}}`). The body may be up to
/// `MEDCHANGE_DATASET_BODY_LIMIT` bytes (default 64 MiB).
#[utoipa::path(post, path = "/v1/density/datasets", tag = "density",
    request_body(content(
        (DatasetUpload = "application/json"),
        (String = "text/csv", example = "sodium,potassium,creatinine\n139,4.1,0.9\n141,3.8,1.1\n")
    )),
    params(UploadParams, ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    responses((status = 201, description = "Stored", body = Dataset),
        (status = 413, description = "The body exceeds the dataset body limit", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = ["admin"])))]
pub async fn upload_dataset(
    State(state): State<AppState>,
    Admin(caller): Admin,
    key: IdempotencyKey,
    Query(q): Query<UploadParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let limit = state.http.dataset_body_limit;
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let mime = ct.parse::<mime::Mime>().ok();
    let is_json = mime.as_ref().is_some_and(|m| m.type_() == "application" && m.subtype() == "json");
    let is_csv = mime.as_ref().is_some_and(|m| m.subtype() == "csv");
    if !is_json && !is_csv {
        return Err(ApiError::UnsupportedMediaType(format!(
            "`{ct}`: send `Content-Type: application/json` or `text/csv`"
        )));
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| ApiError::PayloadTooLarge { limit })?;
    let body_sha = hex::encode(Sha256::digest(&bytes));
    let lim = DatasetLimits::default();
    let (name, format, data): (String, &str, VectorData) = if is_json {
        let up: DatasetUpload = parse_json(&bytes)?;
        let name = check_name(&up.name, "/name")?;
        (name, "json", validate_rows("/rows", up.columns, up.rows, &lim).map_err(problems)?)
    } else {
        let name = check_name(q.name.as_deref().unwrap_or(""), "query:name")?;
        let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::BadRequest("the CSV body is not UTF-8".into()))?;
        (name, "csv", parse_csv(text, &lim).map_err(problems)?)
    };
    let encoded = store::density::encode(&data.rows);
    let sha = hex::encode(Sha256::digest(&encoded));
    let hash =
        idempotency::fingerprint("POST", "/v1/density/datasets", &serde_json::json!({"name": name, "body": body_sha}));
    let id = Uuid::now_v7();
    let rows = data.rows;
    idempotency::run(&state, &caller, &key, ("POST", "/v1/density/datasets"), hash, StatusCode::CREATED, async |tx| {
        let row = store::density::insert(
            &mut *tx,
            &store::density::NewDataset {
                id,
                name: &name,
                dim: rows[0].len() as i32,
                row_count: rows.len() as i32,
                columns: data.columns.as_deref(),
                data: &encoded,
                sha256: &sha,
                format,
                created_by: Some(caller.key_id),
            },
        )
        .await?;
        tracing::info!(dataset_id = %row.id, rows = row.row_count, dim = row.dim, "dataset stored");
        let stored = store::density::decode(&encoded, rows[0].len());
        Ok(Written { patient_id: None, body: dataset(row, Some(&stored)) })
    })
    .await
}

/// List uploaded datasets, newest first.
#[utoipa::path(get, path = "/v1/density/datasets", tag = "density", params(PageParams),
    responses((status = 200, description = "A page of datasets", body = Page<Dataset>)),
    security(("api_key" = ["admin"])))]
pub async fn list_datasets(
    State(state): State<AppState>,
    _auth: Admin,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<Page<Dataset>>, ApiError> {
    let limit = page.limit()?;
    let before = page.cursor(|s| s.parse::<Uuid>().ok())?;
    let rows = store::density::list(&state.db, before, limit + 1).await?;
    Ok(axum::Json(Page::from_rows(rows, limit, |r| encode_cursor(r.id), |r| dataset(r, None))))
}

/// Delete an uploaded dataset (admin).
///
/// Density versions trained on it keep serving (they hold their weights and
/// training scores); a `train_density` job on it that is still queued or
/// running makes this a 409 (cancel the job first).
#[utoipa::path(delete, path = "/v1/density/datasets/{dataset_id}", tag = "density",
    params(("dataset_id" = Uuid, Path, description = "Dataset id")),
    responses((status = 204, description = "Deleted"),
        (status = 404, description = "No such dataset", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A queued or running training job uses it", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = ["admin"])))]
pub async fn delete_dataset(
    State(state): State<AppState>,
    _auth: Admin,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    match store::density::delete_unless_in_use(&state.db, id).await? {
        store::density::Deleted::Yes => Ok(StatusCode::NO_CONTENT),
        store::density::Deleted::Missing => Err(ApiError::NotFound("dataset".into())),
        store::density::Deleted::InUse(job) => Err(ApiError::Conflict(format!(
            "dataset {id} is the training data of job {job}, which is still queued or running; cancel it first"
        ))),
    }
}

/// Fetch a dataset with per-column statistics.
#[utoipa::path(get, path = "/v1/density/datasets/{dataset_id}", tag = "density",
    params(("dataset_id" = Uuid, Path, description = "Dataset id")),
    responses((status = 200, description = "The dataset", body = Dataset),
        (status = 404, description = "No such dataset", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = ["admin"])))]
pub async fn get_dataset(
    State(state): State<AppState>,
    _auth: Admin,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Dataset>, ApiError> {
    let row = store::density::get(&state.db, id).await?.ok_or_else(|| ApiError::NotFound("dataset".into()))?;
    let (rows, _) = store::density::values(&state.db, id).await?.ok_or_else(|| ApiError::NotFound("dataset".into()))?;
    Ok(axum::Json(dataset(row, Some(&rows))))
}
