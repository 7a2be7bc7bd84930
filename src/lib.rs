//! medchange: medication-change prediction service.
pub mod ml;
