//! The one error type of the HTTP layer, rendered as RFC 9457
//! `application/problem+json`. Internal details are logged once, inside the
//! request's span, and never sent to the client.
use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// One invalid field of a request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct FieldError {
    /// JSON pointer (RFC 6901) to the offending value in the request body,
    /// or `query:NAME` / `header:NAME` / `path:NAME` for other inputs.
    #[schema(example = "/diagnoses/3")]
    pub pointer: String,
    /// What is wrong with it.
    #[schema(example = "code is empty")]
    pub detail: String,
}

impl FieldError {
    pub fn new(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { pointer: pointer.into(), detail: detail.into() }
    }
}

/// An RFC 9457 problem details object.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "type": "/problems/validation",
    "title": "Request validation failed",
    "status": 422,
    "detail": "1 field is invalid",
    "errors": [{"pointer": "/diagnoses/0", "detail": "code is empty"}]
}))]
pub struct Problem {
    /// A stable identifier of the kind of problem; clients switch on it.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short, human-readable summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// Explanation specific to this occurrence.
    pub detail: String,
    /// Request id (also in the `x-request-id` header), for support requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The invalid fields, for validation problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("request validation failed")]
    Validation(Vec<FieldError>),
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("request body too large")]
    PayloadTooLarge { limit: usize },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("authentication required: {0}")]
    Unauthorized(&'static str),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("idempotency key reused with a different request")]
    IdempotencyMismatch,
    #[error("{0}")]
    ArtifactIntegrity(String),
    /// A model whose inputs come from a version that is no longer served
    /// (a density model over a MICRON version that is not the active one).
    #[error("{0}")]
    StaleModel(String),
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn validation(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldError::new(pointer, detail)])
    }

    /// The stable problem `type`, its title and HTTP status.
    pub fn kind(&self) -> (&'static str, &'static str, StatusCode) {
        match self {
            ApiError::Validation(_) => ("/problems/validation", "Request validation failed", StatusCode::UNPROCESSABLE_ENTITY),
            ApiError::MalformedJson(_) => ("/problems/malformed-json", "Malformed JSON body", StatusCode::BAD_REQUEST),
            ApiError::UnsupportedMediaType(_) => ("/problems/unsupported-media-type", "Unsupported media type", StatusCode::UNSUPPORTED_MEDIA_TYPE),
            ApiError::PayloadTooLarge { .. } => ("/problems/payload-too-large", "Request body too large", StatusCode::PAYLOAD_TOO_LARGE),
            ApiError::BadRequest(_) => ("/problems/bad-request", "Bad request", StatusCode::BAD_REQUEST),
            ApiError::Unauthorized(_) => ("/problems/unauthorized", "Authentication required", StatusCode::UNAUTHORIZED),
            ApiError::Forbidden(_) => ("/problems/forbidden", "Not allowed for this key", StatusCode::FORBIDDEN),
            ApiError::NotFound(_) => ("/problems/not-found", "Not found", StatusCode::NOT_FOUND),
            ApiError::Conflict(_) => ("/problems/conflict", "Conflict", StatusCode::CONFLICT),
            ApiError::IdempotencyMismatch => ("/problems/idempotency-key-reused", "Idempotency key reused", StatusCode::UNPROCESSABLE_ENTITY),
            ApiError::ArtifactIntegrity(_) => ("/problems/artifact-integrity", "Model artifacts failed verification", StatusCode::CONFLICT),
            ApiError::StaleModel(_) => ("/problems/stale-model", "The model is stale", StatusCode::CONFLICT),
            ApiError::Unavailable(_) => ("/problems/unavailable", "Service unavailable", StatusCode::SERVICE_UNAVAILABLE),
            ApiError::Database(_) | ApiError::Internal(_) => ("/problems/internal", "Internal server error", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    fn detail(&self) -> String {
        match self {
            ApiError::Validation(errors) => {
                let n = errors.len();
                let first = errors.first().map(|e| format!(": {} at {}", e.detail, e.pointer)).unwrap_or_default();
                format!("{n} invalid field{}{first}", if n == 1 { "" } else { "s" })
            }
            ApiError::PayloadTooLarge { limit } => format!("the request body exceeds the limit of {limit} bytes"),
            ApiError::Unauthorized(why) => format!("{why}; send `Authorization: Bearer <api key>`"),
            ApiError::IdempotencyMismatch => {
                "this Idempotency-Key was already used with a different request; use a new key".into()
            }
            ApiError::Database(_) | ApiError::Internal(_) => {
                "an unexpected error occurred; quote the request id when reporting it".into()
            }
            other => other.to_string(),
        }
    }

    pub fn to_problem(&self) -> Problem {
        let (kind, title, status) = self.kind();
        Problem {
            kind: kind.into(),
            title: title.into(),
            status: status.as_u16(),
            detail: self.detail(),
            request_id: None,
            errors: match self {
                ApiError::Validation(e) => e.clone(),
                _ => vec![],
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Database(e) = &self {
            tracing::error!(error = %e, "database error");
        } else if let ApiError::Internal(e) = &self {
            tracing::error!(error = format!("{e:#}"), "internal error");
        }
        let problem = self.to_problem();
        let mut res = problem_response(&problem);
        if let ApiError::Unauthorized(_) = self {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

pub fn problem_response(problem: &Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(problem).expect("problem serializes");
    let mut res = (status, body).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    res
}

/// Problem for a status code produced outside our handlers (router 404/405,
/// timeouts, panics, layer rejections).
pub fn problem_for_status(status: StatusCode) -> Problem {
    let (kind, title, detail) = match status {
        StatusCode::NOT_FOUND => ("/problems/not-found", "Not found", "no such route; see /docs for the API"),
        StatusCode::METHOD_NOT_ALLOWED => {
            ("/problems/method-not-allowed", "Method not allowed", "this route does not accept this HTTP method")
        }
        StatusCode::REQUEST_TIMEOUT | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => {
            ("/problems/timeout", "Request timed out", "the request took longer than the server's time limit")
        }
        StatusCode::PAYLOAD_TOO_LARGE => {
            ("/problems/payload-too-large", "Request body too large", "the request body exceeds the server's limit")
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("/problems/unsupported-media-type", "Unsupported media type", "send `Content-Type: application/json`")
        }
        StatusCode::INTERNAL_SERVER_ERROR => {
            ("/problems/internal", "Internal server error", "an unexpected error occurred; quote the request id when reporting it")
        }
        s if s.is_client_error() => ("/problems/bad-request", "Bad request", "the request could not be processed"),
        _ => ("/problems/internal", "Server error", "the server could not complete the request"),
    };
    Problem { kind: kind.into(), title: title.into(), status: status.as_u16(), detail: detail.into(), request_id: None, errors: vec![] }
}

/// Maps a unique-constraint violation on `constraint` to `err`, any other
/// database error unchanged.
pub fn on_unique(e: sqlx::Error, constraint: &str, err: impl FnOnce() -> ApiError) -> ApiError {
    if let sqlx::Error::Database(db) = &e
        && db.constraint() == Some(constraint)
    {
        return err();
    }
    ApiError::Database(e)
}
