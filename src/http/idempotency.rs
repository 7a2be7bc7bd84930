//! `Idempotency-Key` on POSTs: a retry with the same key and request gets
//! the original response and writes nothing; the same key with a different
//! request is refused (422 `idempotency-key-reused`). Keys are scoped to the
//! calling API key. The work and the stored response commit in one
//! transaction, so a response is stored exactly when its writes are.
use axum::{
    extract::FromRequestParts,
    http::{HeaderName, HeaderValue, StatusCode, request::Parts},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{auth::Caller, error::ApiError};
use crate::{app::AppState, store::idempotency as store};

pub static HEADER: HeaderName = HeaderName::from_static("idempotency-key");
pub static REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The optional `Idempotency-Key` header: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, Default)]
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(v) = parts.headers.get(&HEADER) else { return Ok(IdempotencyKey(None)) };
        let s = v.to_str().ok().map(str::trim).unwrap_or("");
        if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(ApiError::validation(
                "header:Idempotency-Key",
                "must be 1 to 255 visible ASCII characters (a UUID is a good choice)",
            ));
        }
        Ok(IdempotencyKey(Some(s.to_string())))
    }
}

/// Identifies a request for idempotency: method, path and the canonical
/// JSON of the parsed body (so whitespace and key order do not matter).
pub fn fingerprint(method: &str, path: &str, body: &impl Serialize) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update([0]);
    h.update(path.as_bytes());
    h.update([0]);
    h.update(serde_json::to_vec(&serde_json::to_value(body).unwrap_or_default()).unwrap_or_default());
    h.finalize().to_vec()
}

/// What a write produced: the response body and the patient it concerns.
pub struct Written<T> {
    pub body: T,
    pub patient_id: Option<Uuid>,
}

/// Runs `work` in one transaction, honouring the idempotency key.
pub async fn run<T, F>(
    state: &AppState,
    caller: &Caller,
    key: &IdempotencyKey,
    (method, path): (&str, &str),
    request_hash: Vec<u8>,
    status: StatusCode,
    work: F,
) -> Result<Response, ApiError>
where
    T: Serialize,
    F: for<'c> AsyncFnOnce(&'c mut PgConnection) -> Result<Written<T>, ApiError>,
{
    let mut tx = state.db.begin().await?;
    if let Some(k) = &key.0
        && let Some(stored) = store::find(&mut *tx, caller.key_id, k).await?
    {
        return replay(stored, &request_hash);
    }
    let written = match work(&mut tx).await {
        Ok(w) => w,
        Err(e) => {
            drop(tx);
            // A concurrent request with the same key may have won the race
            // and made this one fail (e.g. on a unique constraint).
            return match &key.0 {
                Some(k) => match store::find(&state.db, caller.key_id, k).await? {
                    Some(stored) => replay(stored, &request_hash),
                    None => Err(e),
                },
                None => Err(e),
            };
        }
    };
    let body = serde_json::to_value(&written.body).map_err(anyhow::Error::from)?;
    if let Some(k) = &key.0 {
        let rec = store::NewRecord {
            api_key_id: caller.key_id,
            key: k,
            method,
            path,
            request_hash: &request_hash,
            status: status.as_u16(),
            response: &body,
            patient_id: written.patient_id,
        };
        if let Err(e) = store::insert(&mut *tx, &rec).await {
            drop(tx);
            if let sqlx::Error::Database(db) = &e
                && db.constraint() == Some(store::PK)
                && let Some(stored) = store::find(&state.db, caller.key_id, k).await?
            {
                return replay(stored, &request_hash);
            }
            return Err(e.into());
        }
    }
    tx.commit().await?;
    Ok((status, axum::Json(body)).into_response())
}

fn replay(stored: store::Stored, request_hash: &[u8]) -> Result<Response, ApiError> {
    if stored.request_hash != request_hash {
        return Err(ApiError::IdempotencyMismatch);
    }
    let status = StatusCode::from_u16(stored.status as u16).unwrap_or(StatusCode::OK);
    let mut res = (status, axum::Json(stored.response)).into_response();
    res.headers_mut().insert(REPLAYED.clone(), HeaderValue::from_static("true"));
    Ok(res)
}
