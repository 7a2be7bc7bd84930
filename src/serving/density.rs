//! The density fields a medication-change prediction carries: how typical
//! the visit's MICRON health representation is under an active density
//! model trained on that MICRON version's representations.
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{app::AppState, registry::LoadedModel};

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
/// version is active; `None` otherwise.
pub fn visit_density(_state: &AppState, _micron: &LoadedModel, _h: &[f32]) -> Option<DensityFields> {
    // Density models land with the invertible residual networks (ml::iresnet).
    None
}
