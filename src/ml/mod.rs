//! Models and their data: vocabularies, encodings, splits, metrics, MICRON,
//! baselines and invertible residual density models.
pub mod data;
pub mod metrics;
pub mod formats;
pub mod rng;
pub mod synth;
pub mod backend;
pub mod baselines;
pub mod micron;
pub mod iresnet;
pub mod pipeline;
