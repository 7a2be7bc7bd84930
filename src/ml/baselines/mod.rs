//! Baselines for honest comparison (micron.md "Baselines"): copy-previous and
//! a full-history GRU that re-reads the whole history at every prediction.
pub mod copy_prev;
pub mod gru;

pub use copy_prev::{copy_prev_patient, copy_prev_patients};
pub use gru::{GruArtifact, GruBaseline, GruBaselineConfig, GruConfig, GruPredictor, GruTrainConfig, GruTrainOutcome, train_gru};
