//! Integration tests against a real PostgreSQL: every test gets its own
//! database from `#[sqlx::test]` (DATABASE_URL names the server).
mod auth;
mod cds_hooks;
mod concurrency;
mod dashboard;
mod density;
mod errors;
mod fhir;
mod helpers;
mod idempotency;
mod import;
mod jobs;
mod keys;
mod models;
mod openapi;
mod operations;
mod patients;
mod predictions;
mod training;
mod validation;
mod visits;
mod zero_config;
