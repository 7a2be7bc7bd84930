//! The HTTP API: one module per resource, plus errors, auth and OpenAPI.
pub mod auth;
pub mod dashboard;
pub mod cds_hooks;
pub mod density;
pub mod error;
pub mod extract;
pub mod fhir;
pub mod health;
pub mod idempotency;
pub mod jobs;
pub mod keys;
pub mod metrics;
pub mod models;
pub mod openapi;
pub mod pagination;
pub mod patients;
pub mod predictions;
pub mod visits;

use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;

/// Every route, with its OpenAPI description.
pub fn routes() -> OpenApiRouter<AppState> {
    use utoipa::OpenApi;
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(health::router())
        .merge(patients::router())
        .merge(visits::router())
        .merge(keys::router())
        .merge(jobs::router())
        .merge(models::router())
        .merge(predictions::router())
        .merge(fhir::router())
        .merge(cds_hooks::router())
        .merge(density::router())
}

/// The OpenAPI document as served and committed.
pub fn openapi_doc() -> utoipa::openapi::OpenApi {
    split().1
}

/// The router and its finished OpenAPI document.
pub fn split() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = routes().split_for_parts();
    openapi::finish(&mut doc);
    (router, doc)
}

/// The document as pretty JSON with a trailing newline (the committed form).
pub fn openapi_json() -> String {
    let mut s = openapi_doc().to_pretty_json().expect("the OpenAPI document serializes");
    s.push('\n');
    s
}
