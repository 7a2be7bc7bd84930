//! Density models in the service: the density fields a medication-change
//! prediction carries (how typical the visit's MICRON health representation
//! is under the active density model over that MICRON version), and what the
//! density endpoints share: finding a version, staleness, turning visits
//! into health representations.
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    app::AppState,
    http::error::{ApiError, FieldError},
    ml::{
        data::{RawVisit, UnknownCodes},
        iresnet::{FeatureSpace, LoadedDensity, LogDetMethod, ScoreOptions, micron_health_scope},
        micron::LoadedMicron,
    },
    registry::{LoadedModel, ModelKind, Registry},
    store::{self, models::ModelRow},
};

/// Density of the predicted visit under the active density model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DensityFields {
    pub model_id: Uuid,
    pub model_version: String,
    /// log p(h) in nats.
    pub log_likelihood: f64,
    /// -log2 p(h) / dimension.
    pub bits_per_dim: f64,
    /// Percentile of this score among the training data's scores (0 to 100).
    pub percentile: f64,
    /// Whether the percentile is at or above the model's in-distribution cut.
    pub in_distribution: bool,
}

/// The density of a visit's health representation `h` (D floats, under the
/// served MICRON version `micron`), when a density model over that MICRON
/// version is active; `None` otherwise. Exact log-determinant (the plain
/// f64 flow; see `medchange bench density` for its cost).
pub fn visit_density(state: &AppState, micron: &LoadedModel, h: &[f32]) -> Option<DensityFields> {
    density_of(&state.registry, micron, h)
}

/// [`visit_density`] from the registry alone (for blocking threads).
pub fn density_of(registry: &Registry, micron: &LoadedModel, h: &[f32]) -> Option<DensityFields> {
    let model = registry.active_in(ModelKind::Density.as_str(), &micron_health_scope(micron.id))?;
    let density = model.density.as_ref()?;
    if density.dim() != h.len() {
        return None;
    }
    let x: Vec<f64> = h.iter().map(|&v| v as f64).collect();
    let s = density.score(&x, ScoreOptions { method: LogDetMethod::Exact, samples: 0, seed: 0 });
    Some(DensityFields {
        model_id: model.id,
        model_version: model.version.clone(),
        log_likelihood: s.log_likelihood,
        bits_per_dim: s.bits_per_dim,
        percentile: s.percentile,
        in_distribution: s.in_distribution,
    })
}

/// A density version as the endpoints use it.
pub struct DensityVersion {
    pub row: ModelRow,
    pub model: Arc<LoadedModel>,
    pub density: Arc<LoadedDensity>,
}

impl DensityVersion {
    pub fn space(&self) -> &FeatureSpace {
        &self.density.meta.feature_space
    }

    /// Why this version is stale, if it is: a `micron_health` model whose
    /// MICRON version is not the active one.
    pub fn stale_reason(&self, state: &AppState) -> Option<String> {
        stale_reason(state, self.space())
    }

    /// The served MICRON version this model's inputs come from; a stale
    /// model is a 409 `stale-model`.
    pub fn micron(&self, state: &AppState) -> Result<Arc<LoadedMicron>, ApiError> {
        if let Some(why) = self.stale_reason(state) {
            return Err(ApiError::StaleModel(why));
        }
        let FeatureSpace::MicronHealth { .. } = self.space() else {
            return Err(ApiError::validation(
                "/visits",
                "this density model is over uploaded vectors, not visits: send `vectors`",
            ));
        };
        let m = state
            .registry
            .active(ModelKind::Micron.as_str())
            .ok_or_else(|| ApiError::Unavailable("no MICRON version is active".into()))?;
        m.micron.clone().ok_or_else(|| anyhow::anyhow!("the active MICRON version has no weights loaded").into())
    }
}

/// Why a feature space is stale, if it is.
pub fn stale_reason(state: &AppState, space: &FeatureSpace) -> Option<String> {
    match space {
        FeatureSpace::MicronHealth { micron_model_id, micron_version } => {
            let active = state.registry.active(ModelKind::Micron.as_str());
            match active {
                Some(a) if a.id == *micron_model_id => None,
                Some(a) => Some(format!(
                    "this density model describes MICRON version {micron_version} ({micron_model_id}), but the active \
                     MICRON version is {} ({}); train a density model on the active version (POST /v1/jobs with kind \
                     `train_density`) and activate it",
                    a.version, a.id
                )),
                None => Some(format!(
                    "this density model describes MICRON version {micron_version} ({micron_model_id}), and no MICRON \
                     version is active"
                )),
            }
        }
        FeatureSpace::Vectors { .. } => None,
    }
}

/// A density version by id, loaded (and verified) for scoring: `ready` or
/// `active` versions only.
pub async fn find(state: &AppState, id: Uuid) -> Result<DensityVersion, ApiError> {
    let row = store::models::get(&state.db, id)
        .await?
        .filter(|r| r.kind == ModelKind::Density.as_str())
        .ok_or_else(|| ApiError::NotFound("density model".into()))?;
    if !matches!(row.status.as_str(), "ready" | "active") {
        return Err(ApiError::Conflict(format!(
            "density model {id} is `{}`; only `ready` and `active` versions answer",
            row.status
        )));
    }
    let model = state.registry.loaded(&row).await?;
    let density = model.density.clone().ok_or_else(|| anyhow::anyhow!("density version {id} has no flow loaded"))?;
    Ok(DensityVersion { row, model, density })
}

/// The density model active over the active MICRON version (what
/// predictions use).
pub async fn active_for_micron(state: &AppState) -> Result<DensityVersion, ApiError> {
    let micron = state.registry.active(ModelKind::Micron.as_str()).ok_or_else(|| {
        ApiError::Unavailable("no MICRON version is active, so no density model over it is either".into())
    })?;
    let model =
        state.registry.active_in(ModelKind::Density.as_str(), &micron_health_scope(micron.id)).ok_or_else(|| {
            ApiError::Unavailable(format!(
                "no density model over the active MICRON version {} is active: train one (POST /v1/jobs with kind \
                 `train_density`, feature space `micron_health`) and activate it",
                micron.version
            ))
        })?;
    find(state, model.id).await
}

/// A visit to score: a stored visit (patient and visit ids) or codes inline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"diagnoses": ["4019", "25000"], "procedures": ["3893"]}))]
pub struct VisitInput {
    /// A stored visit's patient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<Uuid>,
    /// A stored visit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visit_id: Option<Uuid>,
    /// Or the visit's codes inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnoses: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub procedures: Option<Vec<String>>,
}

fn codes(pointer: &str, raw: &[String], errors: &mut Vec<FieldError>) -> Vec<String> {
    match crate::domain::CodeSet::parse_all(raw) {
        Ok(s) => s.as_slice().to_vec(),
        Err(es) => {
            for e in es {
                let p = match e.index() {
                    Some(i) => format!("{pointer}/{i}"),
                    None => pointer.to_string(),
                };
                errors.push(FieldError::new(p, e.to_string()));
            }
            vec![]
        }
    }
}

/// The health representations of visits under `micron` (stored visits are
/// read from the database), with the number of unknown codes of each.
/// Errors point under `prefix` (e.g. `/visits`).
pub async fn visit_vectors(
    state: &AppState,
    micron: &LoadedMicron,
    prefix: &str,
    visits: &[VisitInput],
) -> Result<Vec<(Vec<f64>, usize)>, ApiError> {
    let mut errors = vec![];
    let mut raws: Vec<Option<RawVisit>> = Vec::with_capacity(visits.len());
    let mut stored: Vec<(usize, Uuid, Uuid)> = vec![];
    for (i, v) in visits.iter().enumerate() {
        let at = format!("{prefix}/{i}");
        match (v.patient_id, v.visit_id, &v.diagnoses, &v.procedures) {
            (Some(p), Some(id), None, None) => {
                stored.push((i, p, id));
                raws.push(None);
            }
            (None, None, Some(d), p) => {
                let diagnoses = codes(&format!("{at}/diagnoses"), d, &mut errors);
                let procedures = codes(&format!("{at}/procedures"), p.as_deref().unwrap_or(&[]), &mut errors);
                raws.push(Some(RawVisit { diagnoses, procedures, medications: None }));
            }
            _ => {
                errors.push(FieldError::new(
                    at,
                    "give either `patient_id` and `visit_id` (a stored visit) or `diagnoses` (and `procedures`) inline",
                ));
                raws.push(None);
            }
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    for (i, p, id) in stored {
        let row = store::visits::get(&state.db, p, id).await?.ok_or_else(|| {
            ApiError::Validation(vec![FieldError::new(
                format!("{prefix}/{i}/visit_id"),
                "no such visit of this patient",
            )])
        })?;
        raws[i] = Some(RawVisit { diagnoses: row.diagnoses, procedures: row.procedures, medications: None });
    }
    let vocab = &micron.artifact.vocab;
    Ok(raws
        .into_iter()
        .map(|r| {
            let r = r.expect("every visit resolved");
            let mut unknown = UnknownCodes::default();
            let v = vocab.encode_visit(&r, &mut unknown);
            let h = micron.predictor.weights.health(&v.diag, &v.proc).into_iter().map(|x| x as f64).collect();
            (h, unknown.total())
        })
        .collect())
}
