//! CDS Hooks 2.0 services: `patient-view` and `order-select` answer with a
//! card carrying the MICRON medication-change preview for the patient's
//! current visit (nothing is stored).
//!
//! The history comes from the request's prefetch when the EHR sends it
//! (Encounters, Conditions, Procedures, MedicationRequests, coded as an
//! import would code them: see `fhir::codes`), else from the visits stored
//! for the patient (the hook's `patientId` is the FHIR id of a Patient
//! imported from the configured source). The current visit is the
//! encounter of the context (`encounterId`) when known, else a draft made
//! of the prefetched resources attached to that encounter, else the latest
//! visit. The service does not call the EHR's FHIR server.
pub mod jwt;

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    app::AppState,
    fhir::{
        self, Entry,
        codes::{self, CodeMaps, CodeSetKind, Coding, FhirSettings},
    },
    http::error::{ApiError, FieldError},
    serving::{self, CodeProbability, HistoryVisit, MedicationChange, PredictOptions, THRESHOLDS},
    store,
};

pub const PATIENT_VIEW: &str = "medchange-patient-view";
pub const ORDER_SELECT: &str = "medchange-order-select";

/// Code system of the card topics and override reasons.
pub const TOPIC_SYSTEM: &str = "urn:medchange:cds";

// ---------------------------------------------------------------------------
// Discovery
// ---------------------------------------------------------------------------

/// One CDS service, as discovery lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CdsService {
    /// The hook this service is invoked on.
    pub hook: String,
    pub title: String,
    pub description: String,
    /// The `{id}` of `POST /cds-services/{id}`.
    pub id: String,
    /// FHIR queries the EHR should run and send (`{{context.patientId}}` is
    /// replaced by the EHR).
    pub prefetch: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_requirements: Option<String>,
}

/// The discovery response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Discovery {
    pub services: Vec<CdsService>,
}

fn prefetch_templates() -> BTreeMap<String, String> {
    [
        ("patient", "Patient/{{context.patientId}}"),
        ("encounters", "Encounter?patient={{context.patientId}}"),
        ("conditions", "Condition?patient={{context.patientId}}"),
        ("procedures", "Procedure?patient={{context.patientId}}"),
        ("medications", "MedicationRequest?patient={{context.patientId}}"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

pub fn discovery() -> Discovery {
    let usage = "Send the prefetch, or import the patient's FHIR record first (POST /v1/fhir/import with the \
                 source configured as MEDCHANGE_CDS_SOURCE) so that the patientId is known.";
    Discovery {
        services: vec![
            CdsService {
                hook: "patient-view".into(),
                title: "medchange medication review".into(),
                description: "Suggests which medications to add and stop for the patient's current visit (MICRON), \
                              with probabilities, interacting pairs and whether the patient resembles the training data."
                    .into(),
                id: PATIENT_VIEW.into(),
                prefetch: prefetch_templates(),
                usage_requirements: Some(usage.into()),
            },
            CdsService {
                hook: "order-select".into(),
                title: "medchange order check".into(),
                description: "Checks the selected draft medication orders against the medication set MICRON suggests \
                              for the current visit, and suggests additions and removals."
                    .into(),
                id: ORDER_SELECT.into(),
                prefetch: prefetch_templates(),
                usage_requirements: Some(usage.into()),
            },
        ],
    }
}

fn hook_of(service_id: &str) -> Option<&'static str> {
    match service_id {
        PATIENT_VIEW => Some("patient-view"),
        ORDER_SELECT => Some("order-select"),
        _ => None,
    }
}

pub fn is_service(id: &str) -> bool {
    hook_of(id).is_some()
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// A CDS Hooks call.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "hook": "patient-view",
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "fhirServer": "https://ehr.example.org/fhir",
    "context": {"userId": "Practitioner/example", "patientId": "p1", "encounterId": "e2"},
    "prefetch": {"patient": {"resourceType": "Patient", "id": "p1"}}
}))]
pub struct HookRequest {
    pub hook: String,
    /// A UUID for this call.
    pub hook_instance: String,
    #[serde(default)]
    pub fhir_server: Option<String>,
    /// Accepted and ignored: the service does not call the FHIR server.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub fhir_authorization: Option<Value>,
    /// The hook's context (`userId`, `patientId`, `encounterId`; for
    /// `order-select` also `selections` and `draftOrders`).
    #[schema(value_type = Object)]
    pub context: Value,
    /// Prefetched FHIR resources by template key; `null` where the EHR could
    /// not fetch one.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub prefetch: Option<BTreeMap<String, Value>>,
    /// Extensions (ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub extension: Option<Value>,
}

struct Context {
    patient_id: String,
    encounter_id: Option<String>,
    /// order-select: the selected draft orders' ids (`MedicationRequest/1`).
    selections: Vec<String>,
    draft_orders: Vec<Entry>,
}

fn context_str(
    ctx: &serde_json::Map<String, Value>,
    name: &str,
    required: bool,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    match ctx.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        None | Some(Value::Null) if !required => None,
        None | Some(Value::Null) => {
            errors.push(FieldError::new(format!("/context/{name}"), format!("{name} is required by this hook")));
            None
        }
        Some(_) => {
            errors.push(FieldError::new(format!("/context/{name}"), "must be a non-empty string"));
            None
        }
    }
}

fn parse_context(hook: &str, req: &HookRequest) -> Result<Context, ApiError> {
    let mut errors = vec![];
    if Uuid::parse_str(&req.hook_instance).is_err() {
        errors.push(FieldError::new("/hookInstance", "must be a UUID"));
    }
    let Some(ctx) = req.context.as_object() else {
        errors.push(FieldError::new("/context", "must be an object"));
        return Err(ApiError::Validation(errors));
    };
    context_str(ctx, "userId", true, &mut errors);
    let patient_id = context_str(ctx, "patientId", true, &mut errors);
    let encounter_id = context_str(ctx, "encounterId", false, &mut errors);
    let mut selections = vec![];
    let mut draft_orders = vec![];
    if hook == "order-select" {
        match ctx.get("selections") {
            Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
                selections = a.iter().filter_map(Value::as_str).map(str::to_string).collect();
            }
            Some(_) => errors.push(FieldError::new("/context/selections", "must be an array of resource ids")),
            None => errors.push(FieldError::new("/context/selections", "selections is required by order-select")),
        }
        match ctx.get("draftOrders") {
            Some(b @ Value::Object(_)) => match entries_of_bundle(b, "/context/draftOrders") {
                Ok(e) => draft_orders = e,
                Err(mut e) => errors.append(&mut e),
            },
            Some(_) => errors.push(FieldError::new("/context/draftOrders", "must be a FHIR Bundle")),
            None => errors.push(FieldError::new("/context/draftOrders", "draftOrders is required by order-select")),
        }
    }
    if let Some(p) = &req.prefetch
        && let Some(v) = p.get("patient")
        && !v.is_null()
        && v.get("resourceType").and_then(Value::as_str) != Some("Patient")
    {
        errors.push(FieldError::new("/prefetch/patient", "must be a Patient resource"));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    Ok(Context { patient_id: patient_id.unwrap_or_default(), encounter_id, selections, draft_orders })
}

/// The resources of a Bundle (any type: searchset for prefetch).
fn entries_of_bundle(b: &Value, at: &str) -> Result<Vec<Entry>, Vec<FieldError>> {
    if b.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(vec![FieldError::new(format!("{at}/resourceType"), "must be a Bundle")]);
    }
    let list = match b.get("entry") {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(vec![FieldError::new(format!("{at}/entry"), "must be an array")]),
    };
    let mut out = vec![];
    let mut errors = vec![];
    for (i, e) in list.iter().enumerate() {
        let p = format!("{at}/entry/{i}/resource");
        match e.get("resource") {
            Some(Value::Object(r)) => match r.get("resourceType").and_then(Value::as_str) {
                Some(t) => out.push(Entry {
                    at: p,
                    label: format!("{at} entry {i}"),
                    full_url: e.get("fullUrl").and_then(Value::as_str).map(str::to_string),
                    rtype: t.to_string(),
                    id: r.get("id").and_then(Value::as_str).map(str::to_string),
                    res: r.clone(),
                }),
                None => errors.push(FieldError::new(format!("{p}/resourceType"), "resourceType is missing")),
            },
            _ => errors.push(FieldError::new(p, "the entry has no resource")),
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

// ---------------------------------------------------------------------------
// Histories
// ---------------------------------------------------------------------------

/// A visit of the hook's history, with the FHIR id of its encounter.
#[derive(Clone, Debug)]
struct HookVisit {
    encounter: Option<String>,
    at: Option<DateTime<Utc>>,
    visit: HistoryVisit,
}

/// Resources that could be active medication orders, by code (for update
/// or delete suggestions).
type OrdersByCode = HashMap<String, Vec<Value>>;

struct History {
    visits: Vec<HookVisit>,
    /// Where the history came from: `prefetch` or `stored`.
    from: &'static str,
    /// Active MedicationRequests of the prefetch by stored code.
    active_orders: OrdersByCode,
}

/// The encounter id a coded resource points at (`Encounter/<id>`, an
/// absolute URL ending so, or a fullUrl of an Encounter of the prefetch).
fn encounter_ref(e: &Entry, path: &str, by_url: &HashMap<String, String>) -> Option<String> {
    let r = fhir::reference(e, path).ok().flatten()?;
    if let Some(id) = by_url.get(r) {
        return Some(id.clone());
    }
    fhir::type_and_id(r).filter(|(t, _)| *t == "Encounter").map(|(_, id)| id.to_string())
}

async fn code_maps(state: &AppState, codings: &[(CodeSetKind, &[Coding])]) -> Result<CodeMaps, ApiError> {
    let mut keys: Vec<(CodeSetKind, String, String)> =
        codings.iter().flat_map(|(k, cs)| cs.iter().map(|c| (*k, c.system.clone(), c.code.clone()))).collect();
    keys.sort();
    keys.dedup();
    let mut conn = state.db.acquire().await?;
    Ok(store::fhir::lookup_maps(&mut conn, &keys)
        .await?
        .into_iter()
        .filter_map(|(set, sys, code, to)| CodeSetKind::parse(&set).map(|k| ((k, sys, code), to)))
        .collect())
}

fn medication_codings(e: &Entry, all: &[Entry]) -> Vec<Coding> {
    if e.get("medicationCodeableConcept").is_some() {
        return fhir::codings(e, "medicationCodeableConcept").ok().flatten().unwrap_or_default();
    }
    let Some(r) = fhir::reference(e, "medicationReference").ok().flatten() else { return vec![] };
    let target = all.iter().find(|m| {
        m.rtype == "Medication"
            && (m.full_url.as_deref() == Some(r)
                || fhir::type_and_id(r).is_some_and(|(_, id)| m.id.as_deref() == Some(id)))
    });
    target.and_then(|m| fhir::codings(m, "code").ok().flatten()).unwrap_or_default()
}

/// The history from the prefetch, or `None` when it has no Encounters.
async fn history_from_prefetch(
    state: &AppState,
    settings: &FhirSettings,
    prefetch: &BTreeMap<String, Value>,
    ctx: &Context,
) -> Result<Option<History>, ApiError> {
    let mut all: Vec<Entry> = vec![];
    let mut errors = vec![];
    let mut meds_sent = false;
    for (key, v) in prefetch {
        if v.is_null() || key == "patient" {
            continue;
        }
        match v.get("resourceType").and_then(Value::as_str) {
            Some("Bundle") => match entries_of_bundle(v, &format!("/prefetch/{key}")) {
                Ok(mut e) => {
                    meds_sent |= key == "medications";
                    all.append(&mut e);
                }
                Err(mut e) => errors.append(&mut e),
            },
            // A single resource (e.g. `Encounter/{{context.encounterId}}`).
            Some(t) => all.push(Entry {
                at: format!("/prefetch/{key}"),
                label: format!("prefetch {key}"),
                full_url: None,
                rtype: t.to_string(),
                id: v.get("id").and_then(Value::as_str).map(str::to_string),
                res: v.as_object().cloned().unwrap_or_default(),
            }),
            None => errors.push(FieldError::new(format!("/prefetch/{key}"), "must be a FHIR resource or Bundle")),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let by_url: HashMap<String, String> = all
        .iter()
        .filter(|e| e.rtype == "Encounter")
        .filter_map(|e| Some((e.full_url.clone()?, e.id.clone()?)))
        .collect();
    let mut visits: Vec<HookVisit> = vec![];
    let mut index: HashMap<String, usize> = HashMap::new();
    for e in all.iter().filter(|e| e.rtype == "Encounter") {
        let Some(id) = e.id.clone() else { continue };
        let at = e.get("period").and_then(|p| p.get("start")).and_then(Value::as_str).and_then(fhir::parse_datetime);
        if at.is_none()
            || index.contains_key(&id)
            || e.get("status").and_then(Value::as_str) == Some("entered-in-error")
        {
            continue;
        }
        index.insert(id.clone(), visits.len());
        visits.push(HookVisit {
            encounter: Some(id),
            at,
            visit: HistoryVisit { medications: meds_sent.then(Vec::new), ..Default::default() },
        });
    }
    if visits.is_empty() && ctx.encounter_id.is_none() {
        return Ok(None);
    }
    // Coded resources of known encounters, and of the context's encounter
    // when the prefetch lacks it (a draft visit).
    let mut coded: Vec<(String, CodeSetKind, Vec<Coding>, Option<&Entry>)> = vec![];
    for e in &all {
        let (kind, path) = match e.rtype.as_str() {
            "Condition" => (CodeSetKind::Diagnoses, "encounter"),
            "Procedure" => (CodeSetKind::Procedures, "encounter"),
            "MedicationRequest" => (CodeSetKind::Medications, "encounter"),
            "MedicationStatement" | "MedicationAdministration" => (CodeSetKind::Medications, "context"),
            _ => continue,
        };
        if e.get("status").and_then(Value::as_str) == Some("entered-in-error") {
            continue;
        }
        let codings = if kind == CodeSetKind::Medications {
            medication_codings(e, &all)
        } else {
            fhir::codings(e, "code").ok().flatten().unwrap_or_default()
        };
        let enc = encounter_ref(e, path, &by_url).unwrap_or_default();
        let active = e.rtype == "MedicationRequest" && e.get("status").and_then(Value::as_str) == Some("active");
        coded.push((enc, kind, codings, active.then_some(e)));
    }
    let pairs: Vec<(CodeSetKind, &[Coding])> = coded.iter().map(|(_, k, c, _)| (*k, c.as_slice())).collect();
    let maps = code_maps(state, &pairs).await?;
    let draft_id = ctx.encounter_id.clone().filter(|id| !index.contains_key(id));
    let mut draft = HistoryVisit::default();
    let mut draft_used = false;
    let mut active_orders: OrdersByCode = HashMap::new();
    for (enc, kind, codings, active) in &coded {
        let Ok(chosen) = codes::choose(settings, &maps, *kind, codings) else { continue };
        let Some(code) = chosen.stored else { continue };
        if let Some(r) = active {
            active_orders.entry(code.clone()).or_default().push(Value::Object(r.res.clone()));
        }
        let target = match index.get(enc) {
            Some(&i) => &mut visits[i].visit,
            None if draft_id.as_deref() == Some(enc.as_str()) => {
                draft_used = true;
                &mut draft
            }
            None => continue,
        };
        match kind {
            CodeSetKind::Diagnoses => target.diagnoses.push(code),
            CodeSetKind::Procedures => target.procedures.push(code),
            CodeSetKind::Medications => target.medications.get_or_insert_with(Vec::new).push(code),
        }
    }
    visits.sort_by_key(|v| v.at);
    if draft_used {
        visits.push(HookVisit { encounter: draft_id, at: None, visit: draft });
    }
    if visits.is_empty() {
        return Ok(None);
    }
    Ok(Some(History { visits, from: "prefetch", active_orders }))
}

/// The stored history of the patient the FHIR id names (`None`: unknown).
async fn history_from_store(state: &AppState, ctx: &Context) -> Result<Option<History>, ApiError> {
    let source = &state.cds.source;
    let Some(patient_id) = store::fhir::patient_of(&state.db, source, &ctx.patient_id).await? else { return Ok(None) };
    let rows = store::visits::all(&state.db, patient_id).await?;
    let mut encounters: HashMap<Uuid, String> = HashMap::new();
    if !rows.is_empty() {
        let found: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT visit_id, resource_id FROM fhir_resources
             WHERE source = $1 AND patient_id = $2 AND resource_type = 'Encounter' AND visit_id IS NOT NULL",
        )
        .bind(source)
        .bind(patient_id)
        .fetch_all(&state.db)
        .await?;
        encounters = found.into_iter().collect();
    }
    let visits = rows
        .into_iter()
        .map(|r| HookVisit {
            encounter: encounters.get(&r.id).cloned(),
            at: Some(r.occurred_at),
            visit: HistoryVisit {
                occurred_at: Some(r.occurred_at),
                diagnoses: r.diagnoses,
                procedures: r.procedures,
                medications: r.medications,
            },
        })
        .collect::<Vec<_>>();
    if visits.is_empty() {
        return Ok(None);
    }
    Ok(Some(History { visits, from: "stored", active_orders: HashMap::new() }))
}

// ---------------------------------------------------------------------------
// Cards
// ---------------------------------------------------------------------------

/// A FHIR Coding (topics, override reasons).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CdsCoding {
    pub system: String,
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CardSource {
    pub label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<CdsCoding>,
}

/// A change the EHR can apply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CdsAction {
    /// `create`, `update` or `delete`.
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub resource: Option<Value>,
    /// For `delete`: the relative reference of the resource (`MedicationRequest/1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CdsSuggestion {
    pub label: String,
    pub uuid: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_recommended: Option<bool>,
    pub actions: Vec<CdsAction>,
}

/// A CDS Hooks card.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Card {
    pub uuid: Uuid,
    /// Under 140 characters.
    pub summary: String,
    /// GitHub-flavoured markdown.
    pub detail: String,
    /// `info`, or `warning` when the suggested set holds interacting pairs
    /// or the patient is outside the training distribution.
    pub indicator: String,
    pub source: CardSource,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suggestions: Vec<CdsSuggestion>,
    /// `any` when there are suggestions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection_behavior: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub override_reasons: Vec<CdsCoding>,
}

/// The answer to a CDS Hooks call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CdsResponse {
    pub cards: Vec<Card>,
}

fn fmt_p(p: f64) -> String {
    format!("{p:.2}")
}

/// Cuts a summary to under 140 characters.
fn summary(s: String) -> String {
    if s.chars().count() < 140 {
        return s;
    }
    let mut t: String = s.chars().take(138).collect();
    t.push('…');
    t
}

fn medication_resource(settings: &FhirSettings, code: &str, patient: &str, encounter: Option<&str>) -> Value {
    let (system, c) = settings.coding_of(CodeSetKind::Medications, code);
    let mut r = json!({
        "resourceType": "MedicationRequest",
        "status": "draft",
        "intent": "proposal",
        "subject": {"reference": format!("Patient/{patient}")},
        "medicationCodeableConcept": {"coding": [{"system": system, "code": c}], "text": code},
    });
    if let Some(e) = encounter {
        r["encounter"] = json!({"reference": format!("Encounter/{e}")});
    }
    r
}

/// A draft order of order-select, as the card reports it.
struct DraftOrder {
    reference: String,
    code: Option<String>,
    probability: Option<f64>,
    selected: bool,
}

struct CardInput<'a> {
    hook: &'a str,
    change: &'a MedicationChange,
    settings: &'a FhirSettings,
    patient: &'a str,
    encounter: Option<&'a str>,
    visit_at: Option<DateTime<Utc>>,
    from: &'static str,
    active_orders: &'a OrdersByCode,
    drafts: Vec<DraftOrder>,
}

fn overrides() -> Vec<CdsCoding> {
    [
        ("clinical-judgement", "Clinical judgement differs"),
        ("patient-preference", "Patient preference"),
        ("already-addressed", "Already addressed"),
    ]
    .into_iter()
    .map(|(c, d)| CdsCoding {
        system: format!("{TOPIC_SYSTEM}:override-reason"),
        code: c.into(),
        display: Some(d.into()),
    })
    .collect()
}

fn distinct(codes: &[String]) -> usize {
    codes.iter().map(|c| c.trim()).collect::<HashSet<_>>().len()
}

fn source_of(ch: &MedicationChange) -> CardSource {
    CardSource {
        label: format!("medchange MICRON (model {})", ch.model.version),
        url: None,
        topic: Some(CdsCoding {
            system: TOPIC_SYSTEM.into(),
            code: "medication-change".into(),
            display: Some("Medication change suggestion".into()),
        }),
    }
}

/// The card for a visit the model cannot assess (no known diagnosis or
/// procedure): no suggestion.
fn cannot_assess(ch: &MedicationChange, at: Option<DateTime<Utc>>, from: &str, given: usize) -> Card {
    let when = at.map(|t| format!(" of {}", t.format("%Y-%m-%d"))).unwrap_or_default();
    let mut d = format!(
        "MICRON (model `{}`) knows none of the {given} diagnosis and procedure codes of the visit{when} (history from \
         {from} data), so it makes no suggestion.\n\n",
        ch.model.version
    );
    let u = &ch.unknown_codes;
    let list: Vec<&str> = u.diagnoses.iter().chain(&u.procedures).map(String::as_str).take(20).collect();
    if !list.is_empty() {
        d.push_str(&format!("Unknown codes: {}.\n\n", list.join(", ")));
    }
    d.push_str(
        "Codes of other systems are kept as `system:code`: an administrator can map them to the model's codes \
         (`PUT /v1/fhir/code-maps/{set}`), or a model can be trained on this hospital's codes.\n",
    );
    Card {
        uuid: Uuid::new_v4(),
        summary: "MICRON cannot assess this visit: none of its diagnoses or procedures are known to the model".into(),
        detail: d,
        indicator: "info".into(),
        source: source_of(ch),
        suggestions: vec![],
        selection_behavior: None,
        override_reasons: vec![],
    }
}

fn build_card(inp: CardInput<'_>) -> Card {
    let ch = inp.change;
    let outside = ch.density.as_ref().is_some_and(|d| !d.in_distribution);
    let warning = ch.interaction_warning || outside;
    let (n_add, n_rm) = (ch.added.len(), ch.removed.len());
    let unlikely: Vec<&DraftOrder> = inp
        .drafts
        .iter()
        .filter(|d| d.selected && d.probability.is_some_and(|p| p < THRESHOLDS.remove as f64))
        .collect();
    let mut s = match inp.hook {
        "order-select" if !unlikely.is_empty() => {
            let d = unlikely[0];
            format!(
                "MICRON finds draft order {} unlikely (p={}); suggests +{n_add}/-{n_rm} medication(s)",
                d.code.as_deref().unwrap_or("?"),
                fmt_p(d.probability.unwrap_or(0.0))
            )
        }
        "order-select" => {
            format!("MICRON: selected order(s) fit the suggested set; suggests +{n_add}/-{n_rm} medication(s)")
        }
        _ if n_add + n_rm == 0 => "MICRON suggests no medication change for this visit".to_string(),
        _ => format!("MICRON suggests adding {n_add} and stopping {n_rm} medication(s) for this visit"),
    };
    if ch.interaction_warning {
        s.push_str("; interacting pair");
    }
    if outside {
        s.push_str("; atypical patient");
    }

    let mut d = String::new();
    let when = inp.visit_at.map(|t| format!(" of {}", t.format("%Y-%m-%d"))).unwrap_or_default();
    d.push_str(&format!(
        "**Medication change suggested for the visit{when}** (MICRON, model `{}`; add at p ≥ {}, stop at p < {}; history from {} data)\n\n",
        ch.model.version,
        fmt_p(ch.thresholds.add),
        fmt_p(ch.thresholds.remove),
        inp.from
    ));
    let rows = |v: &[CodeProbability], what: &str, out: &mut String| {
        for c in v {
            out.push_str(&format!("| {what} | {} | {} |\n", c.code, fmt_p(c.probability)));
        }
    };
    if n_add + n_rm > 0 {
        d.push_str("| change | medication | probability |\n|---|---|---|\n");
        rows(&ch.added, "add", &mut d);
        rows(&ch.removed, "stop", &mut d);
        d.push('\n');
    } else {
        d.push_str("No medication to add or stop.\n\n");
    }
    if !ch.kept.is_empty() {
        let kept: Vec<String> = ch.kept.iter().map(|c| format!("{} ({})", c.code, fmt_p(c.probability))).collect();
        d.push_str(&format!("Keep: {}.\n\n", kept.join(", ")));
    }
    if !inp.drafts.is_empty() {
        d.push_str("| draft order | medication | probability |\n|---|---|---|\n");
        for o in &inp.drafts {
            let p = match (o.probability, &o.code) {
                (Some(p), _) => fmt_p(p),
                (None, Some(_)) => "unknown to the model".into(),
                (None, None) => "no usable code".into(),
            };
            let sel = if o.selected { " (selected)" } else { "" };
            d.push_str(&format!("| {}{sel} | {} | {p} |\n", o.reference, o.code.as_deref().unwrap_or("-")));
        }
        d.push('\n');
    }
    if ch.interaction_warning {
        let pairs: Vec<String> = ch.interactions.iter().map(|i| format!("{} + {}", i.a, i.b)).collect();
        d.push_str(&format!("**Interacting pairs in the suggested set:** {}.\n\n", pairs.join(", ")));
    }
    match &ch.density {
        Some(x) if !x.in_distribution => d.push_str(&format!(
            "**The patient is outside the model's training distribution** (percentile {:.1}): weigh the suggestion with care.\n\n",
            x.percentile
        )),
        Some(x) => d.push_str(&format!("The patient resembles the training data (percentile {:.1}).\n\n", x.percentile)),
        None => d.push_str("Whether the patient resembles the training data is unknown (no density model is active).\n\n"),
    }
    let u = &ch.unknown_codes;
    let n_unknown = u.diagnoses.len() + u.procedures.len() + u.medications.len();
    if n_unknown > 0 {
        d.push_str(&format!(
            "Codes unknown to the model were ignored: {} diagnoses, {} procedures, {} medications.\n",
            u.diagnoses.len(),
            u.procedures.len(),
            u.medications.len()
        ));
    }

    let mut suggestions = vec![];
    for c in &ch.added {
        suggestions.push(CdsSuggestion {
            label: format!("Add {} (p={})", c.code, fmt_p(c.probability)),
            uuid: Uuid::new_v4(),
            is_recommended: None,
            actions: vec![CdsAction {
                kind: "create".into(),
                description: format!("Create a draft order for {}", c.code),
                resource: Some(medication_resource(inp.settings, &c.code, inp.patient, inp.encounter)),
                resource_id: None,
            }],
        });
    }
    for c in &ch.removed {
        // Stop an active order of the prefetch for it (update to `stopped`).
        let Some(orders) = inp.active_orders.get(&c.code) else { continue };
        let actions: Vec<CdsAction> = orders
            .iter()
            .filter(|r| r.get("id").is_some())
            .map(|r| {
                let mut r = r.clone();
                r["status"] = json!("stopped");
                CdsAction {
                    kind: "update".into(),
                    description: format!("Stop MedicationRequest/{} ({})", r["id"].as_str().unwrap_or(""), c.code),
                    resource: Some(r),
                    resource_id: None,
                }
            })
            .collect();
        if !actions.is_empty() {
            suggestions.push(CdsSuggestion {
                label: format!("Stop {} (p={})", c.code, fmt_p(c.probability)),
                uuid: Uuid::new_v4(),
                is_recommended: None,
                actions,
            });
        }
    }
    for o in unlikely {
        suggestions.push(CdsSuggestion {
            label: format!("Remove draft order {}", o.code.as_deref().unwrap_or(&o.reference)),
            uuid: Uuid::new_v4(),
            is_recommended: None,
            actions: vec![CdsAction {
                kind: "delete".into(),
                description: format!("Remove the draft order {}", o.reference),
                resource: None,
                resource_id: Some(o.reference.clone()),
            }],
        });
    }
    Card {
        uuid: Uuid::new_v4(),
        summary: summary(s),
        detail: d,
        indicator: if warning { "warning" } else { "info" }.into(),
        source: source_of(ch),
        selection_behavior: (!suggestions.is_empty()).then(|| "any".into()),
        suggestions,
        override_reasons: overrides(),
    }
}

// ---------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------

/// Answers a call of service `service_id` (404 for an unknown service).
pub async fn call(state: &AppState, service_id: &str, req: &HookRequest) -> Result<CdsResponse, ApiError> {
    let hook = hook_of(service_id).ok_or_else(|| ApiError::NotFound("CDS service".into()))?;
    if req.hook != hook {
        return Err(ApiError::validation(
            "/hook",
            format!("service {service_id} answers the `{hook}` hook, not `{}`", req.hook),
        ));
    }
    let ctx = parse_context(hook, req)?;
    let settings = store::fhir::settings(&state.db).await?;
    let prefetched = match &req.prefetch {
        Some(p) => history_from_prefetch(state, &settings, p, &ctx).await?,
        None => None,
    };
    let history = match prefetched {
        Some(h) => Some(h),
        None => history_from_store(state, &ctx).await?,
    };
    let Some(mut history) = history else { return Ok(CdsResponse { cards: vec![] }) };
    // The current visit: the context's encounter when it is in the history.
    if let Some(enc) = &ctx.encounter_id
        && let Some(i) = history.visits.iter().position(|v| v.encounter.as_deref() == Some(enc))
    {
        history.visits.truncate(i + 1);
    }
    let current = history.visits.last().expect("a history has a visit").clone();
    let visits: Vec<HistoryVisit> = history.visits.iter().map(|v| v.visit.clone()).collect();
    let opts = PredictOptions { all_probabilities: hook == "order-select", force_replay: false };
    let change = serving::predict_stateless(state, &visits, &opts).await?;
    // A visit none of whose diagnoses and procedures the model knows gives
    // it nothing to go on: say so instead of suggesting.
    let given = distinct(&current.visit.diagnoses) + distinct(&current.visit.procedures);
    let unknown = change.unknown_codes.diagnoses.len() + change.unknown_codes.procedures.len();
    if given <= unknown {
        return Ok(CdsResponse { cards: vec![cannot_assess(&change, current.at, history.from, given)] });
    }

    let mut drafts = vec![];
    if hook == "order-select" {
        let selected: HashSet<&str> = ctx.selections.iter().map(String::as_str).collect();
        let pairs: Vec<(CodeSetKind, Vec<Coding>)> = ctx
            .draft_orders
            .iter()
            .map(|e| (CodeSetKind::Medications, medication_codings(e, &ctx.draft_orders)))
            .collect();
        let refs: Vec<(CodeSetKind, &[Coding])> = pairs.iter().map(|(k, c)| (*k, c.as_slice())).collect();
        let maps = code_maps(state, &refs).await?;
        let probs: HashMap<&str, f64> = change.probabilities.iter().map(|c| (c.code.as_str(), c.probability)).collect();
        for (e, (_, codings)) in ctx.draft_orders.iter().zip(&pairs) {
            if e.rtype != "MedicationRequest" {
                continue;
            }
            let reference = format!("{}/{}", e.rtype, e.id.as_deref().unwrap_or("?"));
            let code = codes::choose(&settings, &maps, CodeSetKind::Medications, codings).ok().and_then(|c| c.stored);
            let probability = code.as_deref().and_then(|c| probs.get(c).copied());
            drafts.push(DraftOrder { selected: selected.contains(reference.as_str()), reference, code, probability });
        }
    }
    let card = build_card(CardInput {
        hook,
        change: &change,
        settings: &settings,
        patient: &ctx.patient_id,
        encounter: ctx.encounter_id.as_deref().or(current.encounter.as_deref()),
        visit_at: current.at,
        from: history.from,
        active_orders: &history.active_orders,
        drafts,
    });
    Ok(CdsResponse { cards: vec![card] })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(interactions: bool, in_distribution: Option<bool>) -> MedicationChange {
        let mut v = json!({
            "model": {"id": Uuid::nil(), "version": "v-test"},
            "previous": {"source": "recorded", "medications": ["C07A", "N02B"]},
            "predicted": ["A10B", "C07A"],
            "added": [{"code": "A10B", "probability": 0.91}],
            "removed": [{"code": "N02B", "probability": 0.05}],
            "kept": [{"code": "C07A", "probability": 0.97}],
            "probabilities": [{"code": "C07A", "probability": 0.97}, {"code": "A10B", "probability": 0.91}],
            "probability_floor": 0.01,
            "unknown_codes": {"diagnoses": ["sct:1"], "procedures": [], "medications": []},
            "interactions": [],
            "interaction_warning": false,
            "thresholds": {"add": 0.8, "remove": 0.2},
            "state": "stateless",
            "state_rebuilt": false,
            "density": null,
            "timing": {"model_us": 1, "database_us": 1, "total_us": 2}
        });
        if interactions {
            v["interactions"] = json!([{"a": "A10B", "b": "C07A"}]);
            v["interaction_warning"] = json!(true);
        }
        if let Some(d) = in_distribution {
            v["density"] = json!({"model_id": Uuid::nil(), "model_version": "d-test", "log_likelihood": -3.0,
                "bits_per_dim": 1.0, "percentile": if d { 40.0 } else { 0.4 }, "in_distribution": d});
        }
        serde_json::from_value(v).unwrap()
    }

    fn card(ch: &MedicationChange, active: &OrdersByCode) -> Card {
        build_card(CardInput {
            hook: "patient-view",
            change: ch,
            settings: &FhirSettings::default(),
            patient: "p1",
            encounter: Some("e1"),
            visit_at: None,
            from: "stored",
            active_orders: active,
            drafts: vec![],
        })
    }

    #[test]
    fn the_indicator_warns_on_interactions_and_atypical_patients() {
        let none = OrdersByCode::new();
        let c = card(&change(false, None), &none);
        assert_eq!(c.indicator, "info");
        assert!(c.detail.contains("unknown (no density model is active)"));
        let c = card(&change(false, Some(true)), &none);
        assert_eq!(c.indicator, "info");
        assert!(c.detail.contains("resembles the training data"));
        let c = card(&change(false, Some(false)), &none);
        assert_eq!(c.indicator, "warning");
        assert!(
            c.summary.contains("atypical patient") && c.detail.contains("outside the model's training distribution")
        );
        let c = card(&change(true, None), &none);
        assert_eq!(c.indicator, "warning");
        assert!(c.summary.contains("interacting pair") && c.detail.contains("A10B + C07A"));
        assert!(c.summary.chars().count() < 140);
    }

    #[test]
    fn suggestions_create_added_and_stop_active_orders() {
        let mut active = OrdersByCode::new();
        active.insert(
            "N02B".into(),
            vec![json!({"resourceType": "MedicationRequest", "id": "mr-7", "status": "active", "intent": "order"})],
        );
        let c = card(&change(false, None), &active);
        assert_eq!(c.selection_behavior.as_deref(), Some("any"));
        let add = &c.suggestions[0].actions[0];
        assert_eq!(add.kind, "create");
        let r = add.resource.as_ref().unwrap();
        assert_eq!(r["medicationCodeableConcept"]["coding"][0], json!({"system": codes::ATC, "code": "A10B"}));
        assert_eq!(r["encounter"]["reference"], "Encounter/e1");
        let stop = &c.suggestions[1].actions[0];
        assert_eq!(stop.kind, "update");
        assert_eq!(stop.resource.as_ref().unwrap()["status"], "stopped");
        assert_eq!(stop.resource.as_ref().unwrap()["id"], "mr-7");
        assert!(c.detail.contains("| add | A10B | 0.91 |") && c.detail.contains("| stop | N02B | 0.05 |"));
    }

    #[test]
    fn long_summaries_are_cut() {
        let s = summary("x".repeat(300));
        assert_eq!(s.chars().count(), 139);
    }
}
