//! SQL, one module per aggregate. Functions take an executor so callers
//! choose the transaction.
pub mod fhir;
pub mod idempotency;
pub mod keys;
pub mod patients;
pub mod visits;
pub mod jobs;
pub mod models;
pub mod predictions;
pub mod density;
