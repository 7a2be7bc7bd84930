//! FHIR R4 ingest: Bundles (transaction, batch, collection) and bulk NDJSON
//! become medchange patients and visits (see [`ingest`]); coding systems
//! and code maps in [`codes`]. The FHIR JSON is read as plain JSON values
//! with the few elements the import needs checked where they are used, so
//! that unknown elements, extensions and resource types pass through.
pub mod bench;
pub mod codes;
pub mod ingest;

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde_json::{Map, Value};

use crate::http::error::{ApiError, FieldError};

/// The bundle types the import accepts.
pub const BUNDLE_TYPES: [&str; 3] = ["transaction", "batch", "collection"];

/// How the resources arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Bundle,
    Ndjson,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Bundle => "bundle",
            Format::Ndjson => "ndjson",
        }
    }
}

/// One resource of the input and where it was.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Pointer prefix of the resource: `/entry/3/resource` or `line:4`.
    pub at: String,
    /// For messages: `entry 3` or `line 4`.
    pub label: String,
    pub full_url: Option<String>,
    pub rtype: String,
    pub id: Option<String>,
    pub res: Map<String, Value>,
}

impl Entry {
    /// A field error at `path` (slash-separated, under the resource).
    pub fn error(&self, path: &str, detail: impl std::fmt::Display) -> FieldError {
        let what = match &self.id {
            Some(id) => format!("{}/{id}", self.rtype),
            None => self.rtype.clone(),
        };
        let pointer = if path.is_empty() { self.at.clone() } else { format!("{}/{path}", self.at) };
        FieldError::new(pointer, format!("{} ({what}): {detail}", self.label))
    }

    /// The key that makes re-imports idempotent: the id, else the fullUrl.
    pub fn key(&self) -> Option<&str> {
        self.id.as_deref().or(self.full_url.as_deref())
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.res.get(name)
    }
}

/// A parsed input: its resources in order.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub format: Format,
    pub bundle_type: Option<String>,
    pub entries: Vec<Entry>,
}

const MAX_ERRORS: usize = 50;

fn push(errors: &mut Vec<FieldError>, e: FieldError) {
    if errors.len() < MAX_ERRORS {
        errors.push(e);
    }
}

/// Reads one resource object; `at` and `label` say where it was.
fn entry_of(
    v: Value,
    at: String,
    label: String,
    full_url: Option<String>,
    errors: &mut Vec<FieldError>,
) -> Option<Entry> {
    let Value::Object(res) = v else {
        push(errors, FieldError::new(at, format!("{label}: a resource must be a JSON object")));
        return None;
    };
    let rtype = match res.get("resourceType") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        _ => {
            push(errors, FieldError::new(format!("{at}/resourceType"), format!("{label}: resourceType is missing")));
            return None;
        }
    };
    let id = match res.get("id") {
        None => None,
        Some(Value::String(s)) if valid_id(s) => Some(s.clone()),
        Some(_) => {
            push(
                errors,
                FieldError::new(
                    format!("{at}/id"),
                    format!("{label} ({rtype}): id must be 1 to 64 of A-Z a-z 0-9 - ."),
                ),
            );
            return None;
        }
    };
    Some(Entry { at, label, full_url, rtype, id, res })
}

/// A FHIR id: 1 to 64 characters of `[A-Za-z0-9\-\.]`.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn malformed(e: serde_json::Error, what: &str) -> ApiError {
    ApiError::MalformedJson(format!("{what}: {e}"))
}

/// Reads a Bundle. Errors name the entry (`/entry/3/...`).
pub fn parse_bundle(bytes: &[u8]) -> Result<Parsed, ApiError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| malformed(e, "the body is not JSON"))?;
    let Value::Object(mut b) = v else {
        return Err(ApiError::validation("", "the body must be a FHIR Bundle (a JSON object)"));
    };
    match b.get("resourceType").and_then(Value::as_str) {
        Some("Bundle") => {}
        Some(other) => {
            return Err(ApiError::validation(
                "/resourceType",
                format!("expected a Bundle, got a {other}; post single resources inside a Bundle or as NDJSON"),
            ));
        }
        None => return Err(ApiError::validation("/resourceType", "resourceType is missing (expected `Bundle`)")),
    }
    let bundle_type = match b.get("type").and_then(Value::as_str) {
        Some(t) if BUNDLE_TYPES.contains(&t) => t.to_string(),
        Some(t) => {
            return Err(ApiError::validation(
                "/type",
                format!("bundle type `{t}` is not accepted; send a transaction, batch or collection Bundle"),
            ));
        }
        None => return Err(ApiError::validation("/type", "the Bundle's type is missing")),
    };
    let entries = match b.remove("entry") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::validation("/entry", "entry must be an array")),
    };
    let mut errors = vec![];
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in entries.into_iter().enumerate() {
        let at = format!("/entry/{i}");
        let label = format!("entry {i}");
        let Value::Object(mut e) = e else {
            push(&mut errors, FieldError::new(at, format!("{label}: an entry must be a JSON object")));
            continue;
        };
        let full_url = match e.get("fullUrl") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Some(_) => {
                push(
                    &mut errors,
                    FieldError::new(format!("{at}/fullUrl"), format!("{label}: fullUrl must be a URI string")),
                );
                continue;
            }
        };
        if let Some(method) = e.get("request").and_then(|r| r.get("method")).and_then(Value::as_str)
            && !matches!(method, "POST" | "PUT")
        {
            push(
                &mut errors,
                FieldError::new(
                    format!("{at}/request/method"),
                    format!(
                        "{label}: request method {method} is not supported (only POST and PUT entries are imported)"
                    ),
                ),
            );
            continue;
        }
        match e.remove("resource") {
            Some(r) => {
                if let Some(entry) = entry_of(r, format!("{at}/resource"), label, full_url, &mut errors) {
                    out.push(entry);
                }
            }
            None => push(
                &mut errors,
                FieldError::new(format!("{at}/resource"), format!("{label}: the entry has no resource")),
            ),
        }
    }
    check_unique(&out, &mut errors);
    if errors.is_empty() {
        Ok(Parsed { format: Format::Bundle, bundle_type: Some(bundle_type), entries: out })
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// Reads NDJSON: one resource per line (blank lines ignored), as FHIR Bulk
/// Data exports write. Errors name the line (`line:4`, 1-based).
pub fn parse_ndjson(bytes: &[u8]) -> Result<Parsed, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ApiError::BadRequest("the NDJSON body is not UTF-8".into()))?;
    let mut errors = vec![];
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| malformed(e, &format!("line {n} is not JSON")))?;
        if let Some(entry) = entry_of(v, format!("line:{n}"), format!("line {n}"), None, &mut errors) {
            if entry.rtype == "Bundle" {
                push(&mut errors, entry.error("", "a Bundle inside NDJSON is not supported; post it on its own"));
                continue;
            }
            out.push(entry);
        }
    }
    check_unique(&out, &mut errors);
    if errors.is_empty() {
        Ok(Parsed { format: Format::Ndjson, bundle_type: None, entries: out })
    } else {
        Err(ApiError::Validation(errors))
    }
}

fn check_unique(entries: &[Entry], errors: &mut Vec<FieldError>) {
    let mut urls: HashMap<&str, &str> = HashMap::new();
    let mut ids: HashMap<(&str, &str), &str> = HashMap::new();
    for e in entries {
        if let Some(u) = &e.full_url
            && let Some(first) = urls.insert(u, &e.label)
        {
            push(
                errors,
                FieldError::new(
                    e.at.replace("/resource", "/fullUrl"),
                    format!("{}: fullUrl {u} is also the fullUrl of {first}", e.label),
                ),
            );
        }
        if let Some(id) = &e.id
            && let Some(first) = ids.insert((&e.rtype, id), &e.label)
        {
            push(errors, e.error("id", format!("the same {}/{id} is also {first}", e.rtype)));
        }
    }
}

/// Parses a FHIR dateTime (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`, or a full time
/// with a zone); partial dates are the start of their period, in UTC.
pub fn parse_datetime(s: &str) -> Option<DateTime<Utc>> {
    if s.len() > 10 {
        return DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc));
    }
    let date = match s.len() {
        4 => NaiveDate::from_ymd_opt(s.parse().ok()?, 1, 1),
        7 if s.as_bytes()[4] == b'-' => NaiveDate::from_ymd_opt(s[..4].parse().ok()?, s[5..].parse().ok()?, 1),
        10 => NaiveDate::parse_from_str(s, "%Y-%m-%d").ok(),
        _ => None,
    }?;
    Some(Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0)?))
}

/// The codings of a CodeableConcept at `path` of a resource (`Ok(None)`
/// when absent); errors point at the bad element.
pub fn codings(e: &Entry, path: &str) -> Result<Option<Vec<codes::Coding>>, FieldError> {
    let Some(cc) = e.get(path) else { return Ok(None) };
    let Some(cc) = cc.as_object() else { return Err(e.error(path, "must be a CodeableConcept object")) };
    let list = match cc.get("coding") {
        None => return Ok(Some(vec![])),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(e.error(&format!("{path}/coding"), "must be an array of Codings")),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, c) in list.iter().enumerate() {
        let p = format!("{path}/coding/{i}");
        let Some(c) = c.as_object() else { return Err(e.error(&p, "a Coding must be an object")) };
        let system = match c.get("system") {
            Some(Value::String(s)) => s.trim().to_string(),
            None => String::new(),
            Some(_) => return Err(e.error(&format!("{p}/system"), "must be a string")),
        };
        let code = match c.get("code") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            None => continue,
            Some(_) => return Err(e.error(&format!("{p}/code"), "must be a non-empty string")),
        };
        let display = c.get("display").and_then(Value::as_str).map(str::to_string);
        out.push(codes::Coding { system, code, display });
    }
    Ok(Some(out))
}

/// The `reference` string of a Reference element (`Ok(None)` when absent).
pub fn reference<'a>(e: &'a Entry, path: &str) -> Result<Option<&'a str>, FieldError> {
    match e.get(path) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(r)) => match r.get("reference") {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim())),
            None => {
                Err(e.error(path, "a Reference without `reference` (identifier-only references) cannot be resolved"))
            }
            Some(_) => Err(e.error(&format!("{path}/reference"), "must be a non-empty string")),
        },
        Some(_) => Err(e.error(path, "must be a Reference object")),
    }
}

/// A reference split into (type, id) when it is relative (`Patient/123`)
/// or an absolute URL ending in `Type/id` (history suffix ignored).
pub fn type_and_id(reference: &str) -> Option<(&str, &str)> {
    let r = reference.split("/_history/").next().unwrap_or(reference);
    let mut parts = r.rsplitn(3, '/');
    let id = parts.next()?;
    let t = parts.next()?;
    let starts_upper = t.chars().next().is_some_and(|c| c.is_ascii_uppercase());
    (starts_upper && t.chars().all(|c| c.is_ascii_alphabetic()) && valid_id(id)).then_some((t, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes() {
        assert_eq!(parse_datetime("2019-03-04T05:06:07+01:00").unwrap().to_rfc3339(), "2019-03-04T04:06:07+00:00");
        assert_eq!(parse_datetime("2019-03-04").unwrap().to_rfc3339(), "2019-03-04T00:00:00+00:00");
        assert_eq!(parse_datetime("2019-03").unwrap().to_rfc3339(), "2019-03-01T00:00:00+00:00");
        assert_eq!(parse_datetime("2019").unwrap().to_rfc3339(), "2019-01-01T00:00:00+00:00");
        assert!(parse_datetime("2019-03-04T05:06:07").is_none(), "a time needs a zone");
        assert!(parse_datetime("yesterday").is_none());
    }

    #[test]
    fn references() {
        assert_eq!(type_and_id("Patient/123"), Some(("Patient", "123")));
        assert_eq!(type_and_id("https://ehr.example/fhir/Encounter/e1/_history/2"), Some(("Encounter", "e1")));
        assert_eq!(type_and_id("urn:uuid:1f0e"), None);
    }
}
