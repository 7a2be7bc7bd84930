//! Extractors whose rejections are problem+json with JSON pointers.
use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request, rejection::BytesRejection},
    http::{header, request::Parts},
};
use serde::de::DeserializeOwned;

use super::error::{ApiError, FieldError};

/// A JSON body. Syntax errors are 400 `malformed-json`; shape errors (missing
/// fields, wrong types, unknown fields) are 422 `validation` with the JSON
/// pointer of the bad value.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let is_json = ct
            .parse::<mime::Mime>()
            .map(|m| m.type_() == "application" && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json")))
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType(if ct.is_empty() {
                "missing Content-Type; send `Content-Type: application/json`".into()
            } else {
                format!("`{ct}` is not JSON; send `Content-Type: application/json`")
            }));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(body_error)?;
        parse_json(&bytes).map(Json)
    }
}

/// Parses JSON, mapping errors as [`Json`] does.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let pointer = pointer_of(err.path());
        let inner = err.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => ApiError::Validation(vec![FieldError::new(pointer, clean(&inner))]),
            _ => ApiError::MalformedJson(format!("{inner}")),
        }
    })
}

fn clean(e: &serde_json::Error) -> String {
    // serde_json appends " at line L column C"; the pointer says where.
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Converts a serde path into an RFC 6901 JSON pointer.
pub fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("/{index}")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                out.push('/');
                out.push_str(&key.replace('~', "~0").replace('/', "~1"));
            }
            Segment::Unknown => out.push_str("/?"),
        }
    }
    out
}

fn body_error(e: BytesRejection) -> ApiError {
    // Body-limit failures surface as a length-limit error source.
    let text = format!("{e:?}");
    if text.contains("LengthLimit") || e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge { limit: 0 }
    } else {
        ApiError::BadRequest(format!("could not read the request body: {e}"))
    }
}

/// Path parameters; a bad one is 404-free 422 naming the parameter.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(e) => {
                use axum::extract::rejection::PathRejection;
                match e {
                    PathRejection::FailedToDeserializePathParams(inner) => {
                        use axum::extract::path::ErrorKind;
                        let detail = inner.body_text();
                        let names: Vec<String> = axum::extract::RawPathParams::from_request_parts(parts, state)
                            .await
                            .map(|raw| raw.iter().map(|(k, _)| k.to_string()).collect())
                            .unwrap_or_default();
                        let name = match inner.into_kind() {
                            ErrorKind::ParseErrorAtKey { key, .. } | ErrorKind::InvalidUtf8InPathParam { key } => key,
                            ErrorKind::ParseErrorAtIndex { index, .. } => names.get(index).cloned().unwrap_or_default(),
                            _ => names.first().cloned().unwrap_or_default(),
                        };
                        Err(ApiError::Validation(vec![FieldError::new(format!("path:{name}"), detail)]))
                    }
                    other => Err(ApiError::Internal(anyhow::anyhow!("path extraction failed: {other}"))),
                }
            }
        }
    }
}

/// Query parameters; errors name the parameter as `query:NAME`.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded_de(q);
        de.map(Query)
    }
}

fn serde_urlencoded_de<T: DeserializeOwned>(q: &str) -> Result<T, ApiError> {
    // Go through a JSON object of strings so serde_path_to_error can name the
    // field; numeric query fields parse from strings (see `pagination`).
    let mut map = serde_json::Map::new();
    for (k, v) in form_urlencoded_parse(q) {
        map.insert(k, serde_json::Value::String(v));
    }
    let value = serde_json::Value::Object(map);
    serde_path_to_error::deserialize(value).map_err(|err| {
        let name = err.path().to_string();
        let inner = err.into_inner();
        ApiError::Validation(vec![FieldError::new(format!("query:{name}"), inner.to_string())])
    })
}

fn form_urlencoded_parse(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}
