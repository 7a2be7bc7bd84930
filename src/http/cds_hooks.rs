//! CDS Hooks endpoints, outside `/v1` as the specification places them:
//! `GET /cds-services` (discovery, public: it describes the services and
//! holds no patient data) and `POST /cds-services/{id}`, authenticated by
//! the EHR's JWT (see `cds::jwt`) or a clinical API key. CORS is open on
//! these routes (EHRs sometimes call from the browser).
use axum::{
    extract::{FromRequestParts, State},
    http::{HeaderName, Method, request::Parts},
};
use tower_http::cors::{Any, CorsLayer};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    auth::{self, Caller},
    error::{ApiError, Problem},
    extract::{Json, Path},
};
use crate::{
    app::AppState,
    cds::{self, CdsResponse, Discovery, HookRequest},
    store,
};

pub fn router() -> OpenApiRouter<AppState> {
    let cors =
        CorsLayer::new().allow_origin(Any).allow_methods([Method::GET, Method::POST, Method::OPTIONS]).allow_headers([
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
            HeaderName::from_static("x-request-id"),
        ]);
    OpenApiRouter::new().routes(routes!(discovery)).routes(routes!(call_service)).layer(cors)
}

/// Who called a CDS service.
#[derive(Debug, Clone)]
pub enum CdsCaller {
    /// An EHR with a verified JWT.
    Ehr { issuer: String },
    /// An API key (clinical or admin).
    Key(Caller),
}

fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && !token.starts_with("mck_")
}

impl FromRequestParts<AppState> for CdsCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim().to_string());
        match token {
            Some(t) if looks_like_jwt(&t) => {
                if !state.cds.enabled() {
                    return Err(ApiError::Unauthorized("JWTs are not accepted here: no CDS Hooks JWKS is configured"));
                }
                let service = parts.uri.path().rsplit('/').next().unwrap_or_default().to_string();
                let claims = state.cds.verify(&t, &service).map_err(ApiError::Unauthorized)?;
                let expires = chrono::DateTime::from_timestamp(claims.exp, 0).unwrap_or_else(chrono::Utc::now);
                if !store::fhir::remember_jti(&state.db, &claims.iss, &claims.jti, expires).await? {
                    return Err(ApiError::Unauthorized("this JWT was already used (`jti` replay)"));
                }
                Ok(CdsCaller::Ehr { issuer: claims.iss })
            }
            _ => Ok(CdsCaller::Key(auth::authenticate(parts, state).await?)),
        }
    }
}

/// CDS Hooks discovery: the services and their prefetch templates.
///
/// Public (no patient data): an EHR administrator registers the services
/// from it.
#[utoipa::path(get, path = "/cds-services", tag = "cds-hooks",
    responses((status = 200, description = "The CDS services", body = Discovery)))]
pub async fn discovery() -> axum::Json<Discovery> {
    axum::Json(cds::discovery())
}

/// Call a CDS service (CDS Hooks 2.0).
///
/// `medchange-patient-view` answers `patient-view`, `medchange-order-select`
/// answers `order-select`. Authenticate with the EHR's JWT (`Authorization:
/// Bearer <jwt>`, ES384 or RS384, `aud` = this endpoint's URL, key from the
/// configured JWKS) or a clinical API key. The answer holds one card with
/// the MICRON preview for the current visit (nothing stored), or no card
/// when the patient is unknown and no prefetch was sent.
#[utoipa::path(post, path = "/cds-services/{service_id}", tag = "cds-hooks",
    request_body = HookRequest,
    params(("service_id" = String, Path, description = "`medchange-patient-view` or `medchange-order-select`")),
    responses((status = 200, description = "Cards", body = CdsResponse),
        (status = 404, description = "No such service", body = Problem, content_type = "application/problem+json")),
    security(("cds_jwt" = []), ("api_key" = ["clinical"])))]
pub async fn call_service(
    State(state): State<AppState>,
    caller: CdsCaller,
    Path(service_id): Path<String>,
    Json(body): Json<HookRequest>,
) -> Result<axum::Json<CdsResponse>, ApiError> {
    if let CdsCaller::Ehr { issuer } = &caller {
        tracing::Span::current().record("key_id", tracing::field::display(format!("jwt:{issuer}")));
    }
    Ok(axum::Json(cds::call(&state, &service_id, &body).await?))
}
