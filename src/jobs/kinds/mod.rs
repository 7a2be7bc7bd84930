//! The job kinds built into this binary.
//!
//! Slots for the kinds that land with the models (each is a [`JobKind`]
//! added in [`builtin`] with one line; see the crate docs of `jobs`):
//!
//! - `train_micron`: `ml::micron` training. Params: its `#[derive(Config)]`
//!   hyperparameters plus a split `seed`; `run` loads
//!   `ctx.load_training_data()`, splits with `data.split(seed)`, calls the
//!   trainer with a progress callback (`ctx.progress(..)`) and a
//!   cancellation check (`ctx.is_cancelled()`), writes weights, `config.json`,
//!   `vocab.json`, `metrics.json` and `split.json` into `ctx.artifact_dir()`
//!   and returns `Outcome::Version` with `ModelKind::Micron` and the
//!   validation Jaccard as `val_score`.
//! - `train_gru` (built in, [`train_gru`]): the GRU baseline, the same
//!   shape with `ModelKind::Gru`.
//! - `train_density` (built in, [`train_density`]): an invertible residual
//!   density model (`ModelKind::Density`); `val_score` = validation
//!   log-likelihood.
//! - `evaluate` dispatches on the model kind (copy-previous, MICRON, GRU).
//!
//! A name in [`PLANNED`] is answered with a 422 saying the kind is not
//! available in this build.
pub mod copy_previous;
pub mod evaluate;
pub mod train_density;
pub mod train_gru;
pub mod train_micron;

use super::JobKinds;

/// Kinds that are planned but not built into this binary, with why.
pub const PLANNED: &[(&str, &str)] = &[];

/// Every kind this binary can run.
pub fn builtin() -> JobKinds {
    JobKinds::default()
        .with(copy_previous::TrainCopyPrevious)
        .with(evaluate::Evaluate)
        .with(train_micron::TrainMicron)
        .with(train_density::TrainDensity)
        .with(train_gru::TrainGru)
}
