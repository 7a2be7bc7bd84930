//! medchange: medication-change prediction service.
//!
//! `app::app` builds the HTTP application that `main` serves and every
//! integration test calls in-process.
pub mod app;
pub mod cds;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod fhir;
pub mod http;
pub mod import;
pub mod jobs;
pub mod ml;
pub mod pgcluster;
pub mod registry;
pub mod serving;
pub mod store;
pub mod telemetry;
