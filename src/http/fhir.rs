//! FHIR R4 ingest (`POST /v1/fhir/import`), the coding settings and the
//! admins' code maps.
use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::Response,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    auth::{Admin, Clinical},
    error::{ApiError, FieldError, Problem},
    extract::{Path, Query, parse_json},
    idempotency::{self, IdempotencyKey, Written},
};
use crate::{
    app::AppState,
    domain::CodeSet,
    fhir::{
        self,
        codes::{CodeSetKind, FhirSettings},
        ingest::{ImportOptions, ImportReport, MedicationsMode},
    },
    store::{self, fhir::CodeMapRow},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(import))
        .routes(routes!(get_settings, put_settings))
        .routes(routes!(list_code_maps))
        .routes(routes!(put_code_map))
}

/// A FHIR R4 Bundle (only the elements the import reads are described;
/// everything else passes through).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        {"fullUrl": "urn:uuid:6f2c1b1e-0d55-4c2e-9a52-1d6a0b6f3c01",
         "resource": {"resourceType": "Patient", "id": "p1",
             "identifier": [{"system": "http://hospital.example/mrn", "value": "MRN-1"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:6f2c1b1e-0d55-4c2e-9a52-1d6a0b6f3c02",
         "resource": {"resourceType": "Encounter", "id": "e1", "status": "finished",
             "subject": {"reference": "urn:uuid:6f2c1b1e-0d55-4c2e-9a52-1d6a0b6f3c01"},
             "period": {"start": "2026-11-02T09:30:00Z"}},
         "request": {"method": "POST", "url": "Encounter"}},
        {"fullUrl": "urn:uuid:6f2c1b1e-0d55-4c2e-9a52-1d6a0b6f3c03",
         "resource": {"resourceType": "Condition", "id": "c1",
             "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-9-cm", "code": "401.9"}]},
             "subject": {"reference": "urn:uuid:6f2c1b1e-0d55-4c2e-9a52-1d6a0b6f3c01"},
             "encounter": {"reference": "urn:uuid:6f2c1b1e-0d55-4c2e-9a52-1d6a0b6f3c02"}},
         "request": {"method": "POST", "url": "Condition"}},
        {"fullUrl": "urn:uuid:6f2c1b1e-0d55-4c2e-9a52-1d6a0b6f3c04",
         "resource": {"resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
             "medicationCodeableConcept": {"coding": [{"system": "http://www.whocc.no/atc", "code": "C07AB02"}]},
             "subject": {"reference": "urn:uuid:6f2c1b1e-0d55-4c2e-9a52-1d6a0b6f3c01"},
             "encounter": {"reference": "urn:uuid:6f2c1b1e-0d55-4c2e-9a52-1d6a0b6f3c02"}},
         "request": {"method": "POST", "url": "MedicationRequest"}}
    ]
}))]
pub struct FhirBundle {
    /// Always `Bundle`.
    pub resource_type: String,
    /// `transaction`, `batch` or `collection`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub entry: Vec<Value>,
}

/// Options of an import.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ImportParams {
    /// The EHR the resources come from (default `fhir`): resource ids and
    /// external patient ids are unique per source.
    #[param(example = "st-elsewhere-ehr")]
    pub source: Option<String>,
    /// Take each patient's external id from its identifier of this system
    /// (e.g. the MRN system); default: the Patient resource id.
    #[param(example = "http://hospital.smarthealthit.org")]
    pub identifier_system: Option<String>,
    /// `auto` (default): visits record medications (an empty list when an
    /// encounter has none) when the input carries any medication resource,
    /// else they are unknown; `recorded`; `unknown`.
    #[param(value_type = Option<String>, example = "auto")]
    pub medications: Option<String>,
}

impl ImportParams {
    fn options(&self) -> Result<ImportOptions, ApiError> {
        let mut errors = vec![];
        let source = self.source.as_deref().map(str::trim).unwrap_or("fhir").to_string();
        if source.is_empty() || source.chars().count() > 128 || source.chars().any(char::is_control) {
            errors.push(FieldError::new("query:source", "must be 1 to 128 printable characters"));
        }
        let identifier_system = self.identifier_system.as_deref().map(str::trim).map(str::to_string);
        if identifier_system.as_deref().is_some_and(str::is_empty) {
            errors.push(FieldError::new("query:identifier_system", "must not be empty"));
        }
        let medications = match self.medications.as_deref() {
            None | Some("auto") => MedicationsMode::Auto,
            Some("recorded") => MedicationsMode::Recorded,
            Some("unknown") => MedicationsMode::Unknown,
            Some(_) => {
                errors.push(FieldError::new("query:medications", "must be `auto`, `recorded` or `unknown`"));
                MedicationsMode::Auto
            }
        };
        if errors.is_empty() {
            Ok(ImportOptions { source, identifier_system, medications })
        } else {
            Err(ApiError::Validation(errors))
        }
    }
}

fn media_type(headers: &HeaderMap) -> String {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Reads a body up to `limit` bytes (413 above).
async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let inner = e.into_inner();
        let too_large = {
            let mut src: Option<&(dyn std::error::Error + 'static)> = Some(inner.as_ref());
            let mut found = false;
            while let Some(s) = src {
                if s.is::<http_body_util::LengthLimitError>() {
                    found = true;
                    break;
                }
                src = s.source();
            }
            found
        };
        if too_large {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::BadRequest(format!("could not read the request body: {inner}"))
        }
    })
}

/// Import FHIR R4 resources as patients and visits.
///
/// Send a `Bundle` (`transaction`, `batch` or `collection`) as
/// `application/fhir+json` (or `application/json`), or bulk NDJSON (one
/// resource per line, as FHIR Bulk Data exports write) as
/// `application/fhir+ndjson` (or `application/x-ndjson`). `Patient` becomes
/// a patient, `Encounter` a visit at `period.start`, and `Condition`,
/// `Procedure`, `MedicationRequest`, `MedicationStatement` and
/// `MedicationAdministration` attached to an encounter become its
/// diagnoses, procedures and medications, coded as the FHIR settings say
/// (`GET /v1/fhir/settings`; unmapped codes keep their system as
/// `alias:code` and are counted). References (`urn:uuid:` fullUrls,
/// `Type/id`) must resolve within the input or to resources imported
/// before from the same source. Re-posting a resource changes nothing;
/// new encounters of a known patient are added in time order. The answer
/// counts, per resource type, what was read, used and skipped and why.
/// Any error (422 with the entry index or line in the pointer) writes
/// nothing. The body limit is `MEDCHANGE_FHIR_BODY_LIMIT` (64 MiB).
#[utoipa::path(post, path = "/v1/fhir/import", tag = "fhir",
    request_body(content(
        (FhirBundle = "application/json"),
        (FhirBundle = "application/fhir+json"),
        (String = "application/fhir+ndjson", example = json!("{\"resourceType\":\"Patient\",\"id\":\"p1\"}\n{\"resourceType\":\"Encounter\",\"id\":\"e1\",\"subject\":{\"reference\":\"Patient/p1\"},\"period\":{\"start\":\"2026-11-02\"}}\n"))
    ), description = "A FHIR Bundle, or NDJSON with one resource per line"),
    params(ImportParams,
        ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key and body returns the original report")),
    responses((status = 200, description = "Imported; counts per resource type and code set", body = ImportReport),
        (status = 409, description = "A patient with the external id was created concurrently", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = ["clinical"])))]
pub async fn import(
    State(state): State<AppState>,
    Clinical(caller): Clinical,
    Query(params): Query<ImportParams>,
    key: IdempotencyKey,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let opts = params.options()?;
    let mt = media_type(&headers);
    let ndjson = match mt.as_str() {
        "application/fhir+json" | "application/json" => false,
        "application/fhir+ndjson" | "application/x-ndjson" | "application/ndjson" => true,
        "" => {
            return Err(ApiError::UnsupportedMediaType(
                "missing Content-Type; send application/fhir+json or application/fhir+ndjson".into(),
            ));
        }
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "`{other}` is not accepted; send a Bundle as application/fhir+json or NDJSON as application/fhir+ndjson"
            )));
        }
    };
    let bytes = read_body(body, state.http.fhir_body_limit).await?;
    let parsed = if ndjson { fhir::parse_ndjson(&bytes)? } else { fhir::parse_bundle(&bytes)? };
    let path = "/v1/fhir/import";
    let digest = hex::encode(Sha256::digest(&bytes));
    let hash = idempotency::fingerprint(
        "POST",
        path,
        &serde_json::json!({
            "source": opts.source, "identifier_system": opts.identifier_system,
            "medications": format!("{:?}", opts.medications), "ndjson": ndjson, "body": digest,
        }),
    );
    idempotency::run(&state, &caller, &key, ("POST", path), hash, StatusCode::OK, async |tx| {
        let report = fhir::ingest::import(tx, &parsed, &opts).await.map_err(|e| match e {
            ApiError::Database(db) => super::error::on_unique(db, "patients_source_external_id_key", || {
                ApiError::Conflict("a patient with this external id was created meanwhile; retry".into())
            }),
            other => other,
        })?;
        Ok(Written { body: report, patient_id: None })
    })
    .await
}

/// The FHIR coding settings: which systems feed each code set.
#[utoipa::path(get, path = "/v1/fhir/settings", tag = "fhir",
    responses((status = 200, description = "The settings in force (the defaults until changed)", body = FhirSettings)),
    security(("api_key" = ["admin"])))]
pub async fn get_settings(State(state): State<AppState>, _auth: Admin) -> Result<axum::Json<FhirSettings>, ApiError> {
    Ok(axum::Json(store::fhir::settings(&state.db).await?))
}

/// Replace the FHIR coding settings.
///
/// Each code set names its native system (the model's codes, stored bare),
/// the systems accepted (others are rejected and counted), how native codes
/// are normalised (`strip_dots`, `truncate`) and whether unmapped codes are
/// kept as `alias:code`. Every accepted non-native system needs an alias.
/// Applies to later imports and CDS Hooks calls; stored visits keep their codes.
#[utoipa::path(put, path = "/v1/fhir/settings", tag = "fhir",
    request_body = FhirSettings,
    responses((status = 200, description = "Stored", body = FhirSettings)),
    security(("api_key" = ["admin"])))]
pub async fn put_settings(
    State(state): State<AppState>,
    _auth: Admin,
    super::extract::Json(body): super::extract::Json<FhirSettings>,
) -> Result<axum::Json<FhirSettings>, ApiError> {
    let s = body.validated().map_err(ApiError::Validation)?;
    store::fhir::put_settings(&state.db, &s).await?;
    Ok(axum::Json(s))
}

/// Rows of the code maps.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CodeMapCount {
    pub code_set: String,
    pub from_system: String,
    pub rows: i64,
}

/// How many mappings each code set holds, per source system.
#[utoipa::path(get, path = "/v1/fhir/code-maps", tag = "fhir",
    responses((status = 200, description = "Row counts", body = Vec<CodeMapCount>)),
    security(("api_key" = ["admin"])))]
pub async fn list_code_maps(
    State(state): State<AppState>,
    _auth: Admin,
) -> Result<axum::Json<Vec<CodeMapCount>>, ApiError> {
    let rows = store::fhir::map_counts(&state.db).await?;
    Ok(axum::Json(
        rows.into_iter().map(|(code_set, from_system, rows)| CodeMapCount { code_set, from_system, rows }).collect(),
    ))
}

/// A code map as JSON.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"mappings": [
    {"from_system": "http://www.nlm.nih.gov/research/umls/rxnorm", "from_code": "314076", "to_code": "C09A"},
    {"from_system": "http://www.nlm.nih.gov/research/umls/rxnorm", "from_code": "197361", "to_code": "C08C"}
]}))]
pub struct CodeMapUpload {
    pub mappings: Vec<CodeMapRow>,
}

/// The result of an upload.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CodeMapStored {
    pub code_set: String,
    /// Rows now in the map.
    pub rows: usize,
    /// Rows of the previous map, removed.
    pub replaced: u64,
}

/// Most rows one code map may hold.
pub const MAX_MAP_ROWS: usize = 500_000;

fn parse_csv(text: &str) -> Result<Vec<(String, CodeMapRow)>, ApiError> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let cells =
        |l: &str| -> Vec<String> { l.split(',').map(|c| c.trim().trim_matches('"').trim().to_string()).collect() };
    let Some((_, head)) = lines.next() else {
        return Err(ApiError::validation("line:1", "the CSV is empty; its header is `from_system,from_code,to_code`"));
    };
    if cells(head.trim_start_matches('\u{feff}')) != ["from_system", "from_code", "to_code"] {
        return Err(ApiError::validation("line:1", "the header must be `from_system,from_code,to_code`"));
    }
    let mut out = vec![];
    let mut errors = vec![];
    for (i, l) in lines {
        let c = cells(l);
        if c.len() != 3 {
            errors.push(FieldError::new(format!("line:{}", i + 1), "expected 3 fields: from_system,from_code,to_code"));
            if errors.len() >= 50 {
                break;
            }
            continue;
        }
        out.push((
            format!("line:{}", i + 1),
            CodeMapRow { from_system: c[0].clone(), from_code: c[1].clone(), to_code: c[2].clone() },
        ));
    }
    if errors.is_empty() { Ok(out) } else { Err(ApiError::Validation(errors)) }
}

fn check_rows(rows: &[(String, CodeMapRow)]) -> Result<Vec<CodeMapRow>, ApiError> {
    if rows.len() > MAX_MAP_ROWS {
        return Err(ApiError::validation("", format!("a code map holds at most {MAX_MAP_ROWS} rows")));
    }
    let mut errors = vec![];
    let mut seen = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(rows.len());
    for (at, r) in rows {
        let system = r.from_system.trim();
        if system.is_empty() || system.len() > 256 || system.chars().any(char::is_control) {
            errors.push(FieldError::new(format!("{at}/from_system"), "must be 1 to 256 printable characters"));
        }
        let from = r.from_code.trim();
        if from.is_empty() || from.chars().count() > 64 || from.chars().any(char::is_control) {
            errors.push(FieldError::new(format!("{at}/from_code"), "must be 1 to 64 printable characters"));
        }
        if let Err(e) = CodeSet::parse(&[r.to_code.as_str()]) {
            errors.push(FieldError::new(format!("{at}/to_code"), e.to_string()));
        }
        if let Some(first) = seen.insert((system.to_string(), from.to_string()), at.clone()) {
            errors.push(FieldError::new(at.clone(), format!("{system} {from} is mapped twice (also at {first})")));
        }
        if errors.len() >= 50 {
            break;
        }
        out.push(CodeMapRow { from_system: system.into(), from_code: from.into(), to_code: r.to_code.trim().into() });
    }
    if errors.is_empty() { Ok(out) } else { Err(ApiError::Validation(errors)) }
}

/// Replace the code map of a code set.
///
/// Send CSV (`text/csv`, header `from_system,from_code,to_code`) or JSON
/// `{"mappings": [...]}`. A code of `from_system` then becomes `to_code` (a
/// code of the model's vocabulary, e.g. RxNorm -> ATC level 3) in later
/// imports and CDS Hooks calls. The whole map is checked first (pointers
/// `line:N` or `/mappings/N`) and replaced in one transaction.
#[utoipa::path(put, path = "/v1/fhir/code-maps/{code_set}", tag = "fhir",
    request_body(content(
        (CodeMapUpload = "application/json"),
        (String = "text/csv", example = json!("from_system,from_code,to_code\nhttp://www.nlm.nih.gov/research/umls/rxnorm,314076,C09A\n"))
    )),
    params(("code_set" = String, Path, description = "`diagnoses`, `procedures` or `medications`")),
    responses((status = 200, description = "Stored", body = CodeMapStored)),
    security(("api_key" = ["admin"])))]
pub async fn put_code_map(
    State(state): State<AppState>,
    _auth: Admin,
    Path(code_set): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::Json<CodeMapStored>, ApiError> {
    let set = CodeSetKind::parse(&code_set)
        .ok_or_else(|| ApiError::validation("path:code_set", "must be `diagnoses`, `procedures` or `medications`"))?;
    let mt = media_type(&headers);
    let bytes = read_body(body, state.http.fhir_body_limit).await?;
    let rows: Vec<(String, CodeMapRow)> = match mt.as_str() {
        "text/csv" => {
            let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::BadRequest("the CSV is not UTF-8".into()))?;
            parse_csv(text)?
        }
        "application/json" => {
            let up: CodeMapUpload = parse_json(&bytes)?;
            up.mappings.into_iter().enumerate().map(|(i, r)| (format!("/mappings/{i}"), r)).collect()
        }
        "" => {
            return Err(ApiError::UnsupportedMediaType(
                "missing Content-Type; send text/csv or application/json".into(),
            ));
        }
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "`{other}` is not accepted; send text/csv or application/json"
            )));
        }
    };
    let rows = check_rows(&rows)?;
    let mut tx = state.db.begin().await?;
    let replaced = store::fhir::replace_maps(&mut tx, set, &rows).await?;
    tx.commit().await?;
    Ok(axum::Json(CodeMapStored { code_set: set.as_str().into(), rows: rows.len(), replaced }))
}
