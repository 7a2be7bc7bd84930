//! The OpenAPI document: built from the handlers' annotations, with the
//! problem+json responses every operation can give added in one place.
use utoipa::{
    Modify, OpenApi,
    openapi::{
        Content, OpenApi as Doc, RefOr, Response, ResponseBuilder,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use super::error::{FieldError, Problem};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "medchange",
        description = "Medication-change prediction service. Authenticate with `Authorization: Bearer <api key>`; \
            each operation's security requirement names the role it needs (`clinical` or `admin`; admin keys may call everything). \
            Errors are `application/problem+json` (RFC 9457) with a stable `type`.",
        license(name = "MIT OR Apache-2.0")
    ),
    components(schemas(Problem, FieldError, crate::jobs::Progress, crate::jobs::DataSnapshot,
        crate::jobs::kinds::copy_previous::CopyPreviousParams, crate::jobs::kinds::evaluate::EvaluateParams,
        crate::jobs::kinds::train_density::TrainDensityParams)),
    tags(
        (name = "patients", description = "Patients and erasure"),
        (name = "visits", description = "A patient's visit history; appending a visit predicts its medication change"),
        (name = "predictions", description = "Medication-change predictions: stored, previews, stateless batches, audit"),
        (name = "api-keys", description = "API keys (admin)"),
        (name = "jobs", description = "Training and evaluation jobs, with live progress (admin)"),
        (name = "models", description = "The model registry: versions, comparison, activation (admin)"),
        (name = "fhir", description = "FHIR R4 ingest (Bundles and bulk NDJSON) and its coding settings and code maps"),
        (name = "cds-hooks", description = "CDS Hooks 2.0 services (outside /v1, as the specification places them)"),
        (name = "density", description = "Density models (invertible residual networks): score (clinical), encode, invert, sample, training score distributions, vector datasets (admin)"),
        (name = "operations", description = "Health, readiness and metrics"),
    )
)]
pub struct ApiDoc;

/// Adds the security scheme and the shared error responses; run on the
/// finished document (after every router is merged).
pub fn finish(doc: &mut Doc) {
    Common.modify(doc)
}

struct Common;

fn problem(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content("application/problem+json", Content::new(Some(utoipa::openapi::Ref::from_schema_name("Problem"))))
        .build()
        .into()
}

impl Modify for Common {
    fn modify(&self, doc: &mut Doc) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("API key")
                    .description(Some("An API key; the requirement's list names the role needed."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "cds_jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "CDS Hooks: a JWT signed by the EHR (ES384 or RS384) with a key of the configured JWKS \
                         (MEDCHANGE_CDS_JWKS); `iss` accepted, `aud` the endpoint's URL, `exp`, `iat`, `jti` required.",
                    ))
                    .build(),
            ),
        );
        for item in doc.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.post, &mut item.put, &mut item.delete, &mut item.patch].into_iter().flatten() {
                let secured = op.security.as_ref().is_some_and(|s| {
                    serde_json::to_value(s).map(|v| v.as_array().is_some_and(|a| a.iter().any(|r| r.as_object().is_some_and(|o| !o.is_empty())))).unwrap_or(false)
                });
                let has_body = op.request_body.is_some();
                let responses = &mut op.responses.responses;
                let mut add = |code: &str, desc: &str| {
                    responses.entry(code.to_string()).or_insert_with(|| problem(desc));
                };
                if secured {
                    add("401", "Missing, unknown or revoked API key");
                    add("403", "The key's role does not allow this operation");
                }
                if has_body {
                    add("400", "Malformed JSON");
                    add("413", "Request body too large");
                    add("415", "Content-Type is not JSON");
                }
                add("422", "Invalid input; `errors` lists each bad field with its JSON pointer");
                add("500", "Internal error (details are logged with the request id, never returned)");
                add("503", "Unavailable or timed out");
            }
        }
    }
}
