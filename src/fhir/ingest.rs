//! Turns parsed FHIR resources into patients and visits, in the caller's
//! transaction: everything is resolved and checked before the first write,
//! and any error leaves nothing behind (the caller rolls back).
//!
//! - `Patient` -> a patient of the import's source; its external id is the
//!   value of the identifier of the requested system, else the resource id.
//!   A patient with that external id already stored is linked, not copied.
//! - `Encounter` -> a visit at `period.start`, of the patient its `subject`
//!   names. Visits land in time order among the patient's stored visits.
//! - `Condition`, `Procedure` (diagnoses, procedures) and
//!   `MedicationRequest`, `MedicationStatement`, `MedicationAdministration`
//!   (medications; `medicationReference` resolves a `Medication`) attach
//!   their code to the visit of their `encounter` (`context` for the last
//!   two), chosen as [`super::codes::choose`] says.
//! - References resolve to entries of the same input (`urn:uuid:` fullUrls,
//!   absolute URLs, `Type/id`), else to resources this source imported
//!   before; an unresolvable reference is an error.
//! - Every used resource is remembered by (source, type, id): posting it
//!   again changes nothing. A coded resource whose encounter was imported
//!   by an earlier request adds its code to that visit (bulk exports come
//!   as one file per resource type), and the patient's stored model states
//!   are dropped (the next prediction rebuilds them from the history).
use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    Entry, Parsed,
    codes::{self, Choice, CodeMaps, CodeSetKind, Coding, FhirSettings, NoCode},
    parse_datetime, reference, type_and_id,
};
use crate::{
    domain::CodeSet,
    http::{
        error::{ApiError, FieldError},
        visits::{ValidVisit, insert_visit},
    },
    store::{self, fhir::NewResource},
};

/// Resource types that become patients, visits or codes.
pub const USED_TYPES: [&str; 7] = [
    "Patient",
    "Encounter",
    "Condition",
    "Procedure",
    "MedicationRequest",
    "MedicationStatement",
    "MedicationAdministration",
];

/// Whether visits record their medications.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MedicationsMode {
    /// Recorded (an empty list when an encounter has none) when the input
    /// carries any medication resource; unknown (`null`) otherwise.
    #[default]
    Auto,
    /// Always recorded: an encounter without medication resources had none.
    Recorded,
    /// Always unknown (`null`), even when medication resources came.
    Unknown,
}

/// How to import.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// The EHR the resources come from; resource ids and external ids are
    /// unique per source.
    pub source: String,
    /// Take the patient's external id from the identifier of this system
    /// (e.g. the hospital's MRN system); default: the Patient resource id.
    pub identifier_system: Option<String>,
    pub medications: MedicationsMode,
}

/// Counts for one resource type.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResourceCounts {
    pub read: usize,
    /// Became a patient, a visit or a code of a visit.
    pub used: usize,
    pub skipped: usize,
    /// Why resources were skipped -> how many.
    pub skipped_reasons: BTreeMap<String, usize>,
}

/// A code of a non-native system without a mapping, and how often it came.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UnmappedCode {
    pub system: String,
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    pub count: usize,
}

/// How the codes of one set were obtained.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CodeCounts {
    /// Codes of the set's native system (the model's), stored bare.
    pub native: usize,
    /// Codes mapped through the admins' code map.
    pub mapped: usize,
    /// Codes of another accepted system without a mapping: stored as
    /// `alias:code` (unknown to a model trained on native codes), or left
    /// out when the settings say `unmapped: skip`.
    pub unmapped: usize,
    /// Concepts with no coding of an accepted system (resource skipped).
    pub rejected: usize,
    /// Codes that break the code rules (e.g. longer than 64 characters).
    pub invalid: usize,
    /// The most frequent unmapped codes (at most 50), most frequent first.
    pub unmapped_codes: Vec<UnmappedCode>,
    /// Systems seen on rejected concepts -> how many.
    pub rejected_systems: BTreeMap<String, usize>,
}

/// A patient the import touched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImportedPatient {
    /// `Patient/<id>` (or the fullUrl of a Patient without an id).
    pub resource: String,
    pub patient_id: Uuid,
    pub external_id: String,
    /// `created`, `matched` (a stored patient with this external id was
    /// linked) or `existing` (imported by an earlier request).
    pub status: String,
    pub visits_added: usize,
}

/// What an import did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "source": "st-elsewhere-ehr", "format": "bundle", "bundle_type": "transaction",
    "patients_created": 1, "patients_matched": 0, "visits_added": 2, "visits_amended": 0,
    "resources": {"Patient": {"read": 1, "used": 1, "skipped": 0, "skipped_reasons": {}},
        "Observation": {"read": 3, "used": 0, "skipped": 3, "skipped_reasons": {"resource type not imported": 3}}},
    "codes": {"diagnoses": {"native": 0, "mapped": 0, "unmapped": 2, "rejected": 0, "invalid": 0,
        "unmapped_codes": [{"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes", "count": 2}],
        "rejected_systems": {}}},
    "patients": [{"resource": "Patient/p1", "patient_id": "019ae4a0-6a3c-7b51-9a43-6f0d3c1c2b10",
        "external_id": "p1", "status": "created", "visits_added": 2}]
}))]
pub struct ImportReport {
    pub source: String,
    /// `bundle` or `ndjson`.
    pub format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_type: Option<String>,
    pub patients_created: usize,
    pub patients_matched: usize,
    pub visits_added: usize,
    /// Visits imported by an earlier request that got codes of resources
    /// posted now (e.g. bulk Condition files after the Encounter file).
    pub visits_amended: usize,
    /// Per resource type: read, used, skipped and why.
    pub resources: BTreeMap<String, ResourceCounts>,
    /// Per code set (`diagnoses`, `procedures`, `medications`).
    pub codes: BTreeMap<String, CodeCounts>,
    pub patients: Vec<ImportedPatient>,
}

impl ImportReport {
    fn count(&mut self, rtype: &str) -> &mut ResourceCounts {
        self.resources.entry(rtype.to_string()).or_default()
    }
    fn used(&mut self, rtype: &str) {
        self.count(rtype).used += 1;
    }
    fn skip(&mut self, rtype: &str, why: impl Into<String>) {
        let c = self.count(rtype);
        c.skipped += 1;
        *c.skipped_reasons.entry(why.into()).or_default() += 1;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum PatientSlot {
    /// Index into the new patients.
    New(usize),
    Existing(Uuid),
}

enum Target<'a> {
    Entry(usize),
    Known(&'a store::fhir::KnownResource),
}

struct NewPatient {
    entry: usize,
    key: String,
    external_id: String,
}

struct PlannedVisit {
    entry: usize,
    key: String,
    patient: PatientSlot,
    at: DateTime<Utc>,
    sets: [Vec<String>; 3],
    coded: Vec<NewResource>,
}

/// Where a coded resource's code goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dest {
    /// A visit of this input (index into the planned visits).
    New(usize),
    /// A visit imported by an earlier request.
    Stored { patient_id: Uuid, visit_id: Uuid },
}

struct Pending {
    entry: usize,
    dest: Dest,
    kind: CodeSetKind,
    codings: Vec<Coding>,
}

/// Codes added to a stored visit.
#[derive(Default)]
struct Amendment {
    sets: [Vec<String>; 3],
    coded: Vec<NewResource>,
    /// The first coded resource's entry (for errors).
    entry: usize,
}

struct Resolver<'a> {
    entries: &'a [Entry],
    by_url: HashMap<&'a str, usize>,
    by_tid: HashMap<(&'a str, &'a str), usize>,
    known: HashMap<(String, String), store::fhir::KnownResource>,
}

impl<'a> Resolver<'a> {
    fn resolve(&self, r: &str, want: &str) -> Result<Target<'_>, String> {
        let found = if r.starts_with('#') {
            return Err(format!("reference {r} points at a contained resource, which the import does not read"));
        } else if r.starts_with("urn:") {
            match self.by_url.get(r) {
                Some(&i) => Some(i),
                None => return Err(format!("reference {r} does not resolve to the fullUrl of any entry")),
            }
        } else {
            self.by_url.get(r).copied()
        };
        if let Some(i) = found {
            let t = &self.entries[i].rtype;
            return if t == want {
                Ok(Target::Entry(i))
            } else {
                Err(format!("reference {r} points at a {t}, not a {want}"))
            };
        }
        let Some((t, id)) = type_and_id(r) else {
            return Err(format!("reference {r} is neither a fullUrl of this input nor a `{want}/id` reference"));
        };
        if t != want {
            return Err(format!("reference {r} points at a {t}, not a {want}"));
        }
        if let Some(&i) = self.by_tid.get(&(t, id)) {
            return Ok(Target::Entry(i));
        }
        match self.known.get(&(t.to_string(), id.to_string())) {
            Some(k) => Ok(Target::Known(k)),
            None => {
                Err(format!("reference {r} resolves neither to a resource of this input nor to one imported before"))
            }
        }
    }
}

/// Unmapped codes of a set: (system, code) -> (display, count).
type Tally = BTreeMap<(String, String), (Option<String>, usize)>;

fn status_of(e: &Entry) -> Option<&str> {
    e.get("status").and_then(Value::as_str)
}

/// Why a coded resource is not used, from its status (None: used).
fn excluded(e: &Entry) -> Option<String> {
    let status = status_of(e);
    if status == Some("entered-in-error") {
        return Some("status entered-in-error".into());
    }
    match e.rtype.as_str() {
        "Procedure" | "MedicationAdministration" if status == Some("not-done") => Some("status not-done".into()),
        "MedicationStatement" if status == Some("not-taken") => Some("status not-taken".into()),
        "Condition" => {
            let vs = e.get("verificationStatus").and_then(|v| v.get("coding")).and_then(Value::as_array);
            let bad = vs.is_some_and(|c| {
                c.iter().any(|c| matches!(c.get("code").and_then(Value::as_str), Some("entered-in-error" | "refuted")))
            });
            bad.then(|| "verificationStatus refuted or entered-in-error".into())
        }
        _ => None,
    }
}

fn check_external_id(s: &str) -> Result<String, &'static str> {
    let s = s.trim();
    if s.is_empty() || s.chars().count() > 128 || s.chars().any(char::is_control) {
        Err("the external id must be 1 to 128 printable characters")
    } else {
        Ok(s.to_string())
    }
}

fn identifier_value(e: &Entry, system: &str) -> Option<String> {
    e.get("identifier")?.as_array()?.iter().find_map(|i| {
        (i.get("system").and_then(Value::as_str) == Some(system))
            .then(|| i.get("value").and_then(Value::as_str))?
            .map(str::to_string)
    })
}

/// Imports parsed resources in the caller's transaction.
pub async fn import(conn: &mut PgConnection, parsed: &Parsed, opts: &ImportOptions) -> Result<ImportReport, ApiError> {
    let entries = &parsed.entries;
    let mut report = ImportReport {
        source: opts.source.clone(),
        format: parsed.format.as_str().into(),
        bundle_type: parsed.bundle_type.clone(),
        patients_created: 0,
        patients_matched: 0,
        visits_added: 0,
        visits_amended: 0,
        resources: BTreeMap::new(),
        codes: CodeSetKind::ALL.iter().map(|k| (k.as_str().to_string(), CodeCounts::default())).collect(),
        patients: vec![],
    };
    for e in entries {
        report.count(&e.rtype).read += 1;
    }
    // Imports of one source serialize (resource ids are unique per source).
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('medchange-fhir:' || $1, 0))")
        .bind(&opts.source)
        .execute(&mut *conn)
        .await?;
    let settings: FhirSettings = store::fhir::settings(&mut *conn).await?;
    let mut errors: Vec<FieldError> = vec![];

    // What earlier imports of this source know about the resources used and
    // referenced here.
    let mut keys: BTreeSet<(String, String)> = BTreeSet::new();
    for e in entries.iter().filter(|e| USED_TYPES.contains(&e.rtype.as_str())) {
        match e.key() {
            Some(k) => {
                keys.insert((e.rtype.clone(), k.to_string()));
            }
            None => errors.push(e.error("id", "a resource needs an id or a fullUrl (re-imports are recognised by it)")),
        }
        for path in ["subject", "encounter", "context"] {
            if let Ok(Some(r)) = reference(e, path)
                && let Some((t, id)) = type_and_id(r)
            {
                keys.insert((t.to_string(), id.to_string()));
            }
        }
    }
    let keys: Vec<(String, String)> = keys.into_iter().collect();
    let known = store::fhir::find(&mut *conn, &opts.source, &keys)
        .await?
        .into_iter()
        .map(|k| ((k.resource_type.clone(), k.resource_id.clone()), k))
        .collect();
    let mut by_url = HashMap::new();
    let mut by_tid = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let Some(u) = &e.full_url {
            by_url.insert(u.as_str(), i);
        }
        if let Some(id) = &e.id {
            by_tid.insert((e.rtype.as_str(), id.as_str()), i);
        }
    }
    let rs = Resolver { entries, by_url, by_tid, known };
    let is_known = |e: &Entry| e.key().and_then(|k| rs.known.get(&(e.rtype.clone(), k.to_string())));

    // Patients.
    let mut new_patients: Vec<NewPatient> = vec![];
    let mut slot_of: HashMap<usize, PatientSlot> = HashMap::new();
    let mut existing_resources: BTreeMap<Uuid, String> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate().filter(|(_, e)| e.rtype == "Patient") {
        let Some(key) = e.key() else { continue };
        if let Some(k) = is_known(e) {
            slot_of.insert(i, PatientSlot::Existing(k.patient_id));
            existing_resources.insert(k.patient_id, format!("Patient/{key}"));
            report.skip("Patient", "already imported");
            continue;
        }
        let raw = match &opts.identifier_system {
            Some(sys) => match identifier_value(e, sys) {
                Some(v) => v,
                None => {
                    errors.push(e.error("identifier", format!("no identifier of system {sys} (the external id)")));
                    continue;
                }
            },
            None => key.to_string(),
        };
        match check_external_id(&raw) {
            Ok(external_id) => {
                slot_of.insert(i, PatientSlot::New(new_patients.len()));
                new_patients.push(NewPatient { entry: i, key: key.to_string(), external_id });
            }
            Err(why) => errors.push(e.error("identifier", why)),
        }
    }
    let patient_slot = |t: Target<'_>, slot_of: &HashMap<usize, PatientSlot>| match t {
        Target::Entry(j) => slot_of.get(&j).copied(),
        Target::Known(k) => Some(PatientSlot::Existing(k.patient_id)),
    };

    // Encounters.
    let mut visits: Vec<PlannedVisit> = vec![];
    let mut visit_of: HashMap<usize, usize> = HashMap::new();
    // Encounter entries not becoming a visit -> why (for their coded resources).
    let mut encounter_gone: HashMap<usize, &'static str> = HashMap::new();
    // Encounter entries imported by an earlier request -> their stored visit.
    let mut stored_visit_of: HashMap<usize, (Uuid, Uuid)> = HashMap::new();
    let now = Utc::now();
    for (i, e) in entries.iter().enumerate().filter(|(_, e)| e.rtype == "Encounter") {
        let Some(key) = e.key() else { continue };
        if let Some(k) = is_known(e) {
            report.skip("Encounter", "already imported");
            match k.visit_id {
                Some(v) => {
                    stored_visit_of.insert(i, (k.patient_id, v));
                }
                None => {
                    encounter_gone.insert(i, "its Encounter was skipped");
                }
            }
            continue;
        }
        let subject = match reference(e, "subject") {
            Ok(Some(r)) => r,
            Ok(None) => {
                errors.push(e.error("subject", "an Encounter needs a subject (the patient)"));
                continue;
            }
            Err(fe) => {
                errors.push(fe);
                continue;
            }
        };
        let patient = match rs.resolve(subject, "Patient") {
            Ok(t) => match patient_slot(t, &slot_of) {
                Some(p @ PatientSlot::Existing(id)) => {
                    if let Some((_, rid)) = type_and_id(subject) {
                        existing_resources.entry(id).or_insert_with(|| format!("Patient/{rid}"));
                    }
                    p
                }
                Some(p) => p,
                None => continue, // the Patient entry itself has an error
            },
            Err(why) => {
                errors.push(e.error("subject/reference", why));
                continue;
            }
        };
        if status_of(e) == Some("entered-in-error") {
            report.skip("Encounter", "status entered-in-error");
            encounter_gone.insert(i, "its Encounter was skipped");
            continue;
        }
        let start = e.get("period").and_then(|p| p.get("start"));
        let at = match start {
            None | Some(Value::Null) => {
                report.skip("Encounter", "no period.start (the visit time)");
                encounter_gone.insert(i, "its Encounter was skipped");
                continue;
            }
            Some(Value::String(s)) => match parse_datetime(s) {
                Some(t) => t,
                None => {
                    errors.push(e.error("period/start", format!("`{s}` is not a FHIR dateTime (a time needs a zone)")));
                    continue;
                }
            },
            Some(_) => {
                errors.push(e.error("period/start", "must be a dateTime string"));
                continue;
            }
        };
        if at > now + chrono::Duration::days(1) {
            errors.push(e.error("period/start", "the visit time must not be in the future"));
            continue;
        }
        visit_of.insert(i, visits.len());
        visits.push(PlannedVisit {
            entry: i,
            key: key.to_string(),
            patient,
            at,
            sets: Default::default(),
            coded: vec![],
        });
    }

    // Coded resources.
    let mut pending: Vec<Pending> = vec![];
    let mut used_medications: BTreeSet<usize> = BTreeSet::new();
    let mut any_medication = false;
    for (i, e) in entries.iter().enumerate() {
        let (kind, enc_path) = match e.rtype.as_str() {
            "Condition" => (CodeSetKind::Diagnoses, "encounter"),
            "Procedure" => (CodeSetKind::Procedures, "encounter"),
            "MedicationRequest" => (CodeSetKind::Medications, "encounter"),
            "MedicationStatement" | "MedicationAdministration" => (CodeSetKind::Medications, "context"),
            _ => continue,
        };
        if kind == CodeSetKind::Medications {
            any_medication = true;
        }
        if e.key().is_none() {
            continue;
        }
        if is_known(e).is_some() {
            report.skip(&e.rtype, "already imported");
            continue;
        }
        let enc = match reference(e, enc_path) {
            Ok(Some(r)) => r,
            Ok(None) => {
                report.skip(&e.rtype, format!("no {enc_path} reference (not attached to a visit)"));
                continue;
            }
            Err(fe) => {
                errors.push(fe);
                continue;
            }
        };
        let dest = match rs.resolve(enc, "Encounter") {
            Ok(Target::Entry(j)) => match (visit_of.get(&j), stored_visit_of.get(&j)) {
                (Some(&v), _) => Dest::New(v),
                (None, Some(&(patient_id, visit_id))) => Dest::Stored { patient_id, visit_id },
                (None, None) => {
                    if let Some(why) = encounter_gone.get(&j) {
                        report.skip(&e.rtype, *why);
                    }
                    continue;
                }
            },
            Ok(Target::Known(k)) => match k.visit_id {
                Some(visit_id) => Dest::Stored { patient_id: k.patient_id, visit_id },
                None => {
                    report.skip(&e.rtype, "its Encounter was skipped");
                    continue;
                }
            },
            Err(why) => {
                errors.push(e.error(&format!("{enc_path}/reference"), why));
                continue;
            }
        };
        // The subject, when given, must be the encounter's patient.
        match reference(e, "subject") {
            Ok(Some(r)) => match rs.resolve(r, "Patient") {
                Ok(t) => {
                    let theirs = match dest {
                        Dest::New(v) => visits[v].patient,
                        Dest::Stored { patient_id, .. } => PatientSlot::Existing(patient_id),
                    };
                    if let Some(p) = patient_slot(t, &slot_of)
                        && p != theirs
                    {
                        errors.push(e.error("subject/reference", "the subject is not the patient of its encounter"));
                        continue;
                    }
                }
                Err(why) => {
                    errors.push(e.error("subject/reference", why));
                    continue;
                }
            },
            Ok(None) => {}
            Err(fe) => {
                errors.push(fe);
                continue;
            }
        }
        if let Some(why) = excluded(e) {
            report.skip(&e.rtype, why);
            continue;
        }
        let concept = if kind == CodeSetKind::Medications {
            if e.get("medicationCodeableConcept").is_some() {
                super::codings(e, "medicationCodeableConcept")
            } else {
                match reference(e, "medicationReference") {
                    Ok(Some(r)) => match rs.resolve(r, "Medication") {
                        Ok(Target::Entry(j)) => {
                            used_medications.insert(j);
                            super::codings(&entries[j], "code")
                        }
                        Ok(Target::Known(_)) => Ok(None),
                        Err(why) => Err(e.error("medicationReference/reference", why)),
                    },
                    Ok(None) => Ok(None),
                    Err(fe) => Err(fe),
                }
            }
        } else {
            super::codings(e, "code")
        };
        match concept {
            Ok(Some(c)) if !c.is_empty() => pending.push(Pending { entry: i, dest, kind, codings: c }),
            Ok(_) => report.skip(&e.rtype, "no code"),
            Err(fe) => errors.push(fe),
        }
    }
    for (i, e) in entries.iter().enumerate() {
        match e.rtype.as_str() {
            t if USED_TYPES.contains(&t) => {}
            "Medication" if used_medications.contains(&i) => report.used("Medication"),
            "Medication" => report.skip("Medication", "not referenced by an imported medication resource"),
            t => report.skip(t, "resource type not imported"),
        }
    }
    if !errors.is_empty() {
        errors.truncate(50);
        return Err(ApiError::Validation(errors));
    }

    // Stored visits that already have predictions keep their codes: the
    // audit trail says what was predicted from them.
    let stored: Vec<(Uuid, Uuid)> = pending
        .iter()
        .filter_map(|p| match p.dest {
            Dest::Stored { patient_id, visit_id } => Some((patient_id, visit_id)),
            Dest::New(_) => None,
        })
        .collect();
    let frozen = store::fhir::predicted_visits(&mut *conn, &stored).await?;
    pending.retain(|p| match p.dest {
        Dest::Stored { visit_id, .. } if frozen.contains(&visit_id) => {
            report.skip(&entries[p.entry].rtype, "its visit (imported earlier) already has stored predictions");
            false
        }
        _ => true,
    });

    // Codes: one look-up of the admins' code maps, then the choice.
    let mut map_keys: BTreeSet<(CodeSetKind, String, String)> = BTreeSet::new();
    for p in &pending {
        for c in p.codings.iter().filter(|c| c.system != settings.set(p.kind).native) {
            map_keys.insert((p.kind, c.system.clone(), c.code.clone()));
        }
    }
    let map_keys: Vec<_> = map_keys.into_iter().collect();
    let maps: CodeMaps = store::fhir::lookup_maps(&mut *conn, &map_keys)
        .await?
        .into_iter()
        .filter_map(|(set, sys, code, to)| CodeSetKind::parse(&set).map(|k| ((k, sys, code), to)))
        .collect();
    let mut unmapped: BTreeMap<CodeSetKind, Tally> = BTreeMap::new();
    let mut amendments: BTreeMap<(Uuid, Uuid), Amendment> = BTreeMap::new();
    for p in pending {
        let e = &entries[p.entry];
        let counts = report.codes.get_mut(p.kind.as_str()).expect("every set has counts");
        match codes::choose(&settings, &maps, p.kind, &p.codings) {
            Ok(chosen) => {
                match chosen.how {
                    Choice::Native => counts.native += 1,
                    Choice::Mapped => counts.mapped += 1,
                    Choice::Unmapped => {
                        counts.unmapped += 1;
                        let slot = unmapped
                            .entry(p.kind)
                            .or_default()
                            .entry((chosen.from.system.clone(), chosen.from.code.clone()))
                            .or_insert((chosen.from.display.clone(), 0));
                        slot.1 += 1;
                    }
                }
                let Some(stored) = chosen.stored else {
                    report.skip(&e.rtype, "unmapped code left out (settings: unmapped = skip)");
                    continue;
                };
                let row = NewResource {
                    resource_type: e.rtype.clone(),
                    resource_id: e.key().unwrap_or_default().to_string(),
                    patient_id: Uuid::nil(),
                    visit_id: None,
                    code_set: Some(p.kind),
                    system: Some(chosen.from.system),
                    code: Some(chosen.from.code),
                    stored_code: Some(stored.clone()),
                };
                let (sets, coded) = match p.dest {
                    Dest::New(v) => {
                        let v = &mut visits[v];
                        (&mut v.sets, &mut v.coded)
                    }
                    Dest::Stored { patient_id, visit_id } => {
                        let a = amendments
                            .entry((patient_id, visit_id))
                            .or_insert_with(|| Amendment { entry: p.entry, ..Default::default() });
                        (&mut a.sets, &mut a.coded)
                    }
                };
                sets[p.kind as usize].push(stored);
                coded.push(row);
                report.used(&e.rtype);
            }
            Err(NoCode::NotAccepted(systems)) => {
                counts.rejected += 1;
                for s in systems {
                    *counts.rejected_systems.entry(if s.is_empty() { "(no system)".into() } else { s }).or_default() +=
                        1;
                }
                report.skip(&e.rtype, format!("no coding in a system accepted for {}", p.kind.as_str()));
            }
            Err(NoCode::Invalid(_)) => {
                counts.invalid += 1;
                report.skip(&e.rtype, "the code breaks the code rules (1 to 64 printable characters)");
            }
        }
    }
    for (kind, m) in unmapped {
        let mut list: Vec<UnmappedCode> = m
            .into_iter()
            .map(|((system, code), (display, count))| UnmappedCode { system, code, display, count })
            .collect();
        list.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| (&a.system, &a.code).cmp(&(&b.system, &b.code))));
        list.truncate(50);
        report.codes.get_mut(kind.as_str()).expect("every set has counts").unmapped_codes = list;
    }

    // Code sets of each visit, checked before any write.
    let recorded = match opts.medications {
        MedicationsMode::Auto => any_medication,
        MedicationsMode::Recorded => true,
        MedicationsMode::Unknown => false,
    };
    let mut valid: Vec<ValidVisit> = Vec::with_capacity(visits.len());
    for v in &visits {
        let e = &entries[v.entry];
        let set = |k: CodeSetKind, errors: &mut Vec<FieldError>| match CodeSet::parse(&v.sets[k as usize]) {
            Ok(s) => s,
            Err(err) => {
                errors.push(e.error("", format!("its {}: {err}", k.as_str())));
                CodeSet::default()
            }
        };
        let diagnoses = set(CodeSetKind::Diagnoses, &mut errors);
        let procedures = set(CodeSetKind::Procedures, &mut errors);
        let medications = set(CodeSetKind::Medications, &mut errors);
        valid.push(ValidVisit {
            occurred_at: Some(v.at),
            diagnoses,
            procedures,
            medications: recorded.then_some(medications),
            source: Some(opts.source.clone()),
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }

    // Writes.
    let mut rows: Vec<NewResource> = vec![];
    let mut patient_ids: Vec<Uuid> = Vec::with_capacity(new_patients.len());
    let mut imported: BTreeMap<Uuid, ImportedPatient> = BTreeMap::new();
    for p in &new_patients {
        let (row, status) = match store::patients::get_by_external(&mut *conn, &opts.source, &p.external_id).await? {
            Some(row) => {
                report.patients_matched += 1;
                (row, "matched")
            }
            None => {
                report.patients_created += 1;
                (store::patients::insert(&mut *conn, &opts.source, &p.external_id).await?, "created")
            }
        };
        report.used("Patient");
        patient_ids.push(row.id);
        let resource = match &entries[p.entry].id {
            Some(id) => format!("Patient/{id}"),
            None => p.key.clone(),
        };
        imported.insert(
            row.id,
            ImportedPatient {
                resource,
                patient_id: row.id,
                external_id: row.external_id.clone(),
                status: status.into(),
                visits_added: 0,
            },
        );
        rows.push(NewResource {
            resource_type: "Patient".into(),
            resource_id: p.key.clone(),
            patient_id: row.id,
            visit_id: None,
            code_set: None,
            system: None,
            code: None,
            stored_code: None,
        });
    }
    let pid = |s: PatientSlot| match s {
        PatientSlot::New(i) => patient_ids[i],
        PatientSlot::Existing(id) => id,
    };
    let mut order: Vec<usize> = (0..visits.len()).collect();
    order.sort_by_key(|&i| (pid(visits[i].patient), visits[i].at, visits[i].entry));
    for i in order {
        let v = &mut visits[i];
        let patient_id = pid(v.patient);
        let row = insert_visit(&mut *conn, patient_id, &valid[i])
            .await?
            .ok_or_else(|| anyhow::anyhow!("the patient of an imported encounter vanished"))?;
        report.visits_added += 1;
        report.used("Encounter");
        #[allow(clippy::map_entry)] // the entry's value needs an await
        if !imported.contains_key(&patient_id) {
            let p = store::patients::get(&mut *conn, patient_id).await?.ok_or_else(|| anyhow::anyhow!("no patient"))?;
            imported.insert(
                patient_id,
                ImportedPatient {
                    resource: existing_resources.get(&patient_id).cloned().unwrap_or_default(),
                    patient_id,
                    external_id: p.external_id,
                    status: "existing".into(),
                    visits_added: 0,
                },
            );
        }
        if let Some(p) = imported.get_mut(&patient_id) {
            p.visits_added += 1;
        }
        rows.push(NewResource {
            resource_type: "Encounter".into(),
            resource_id: v.key.clone(),
            patient_id,
            visit_id: Some(row.id),
            code_set: None,
            system: None,
            code: None,
            stored_code: None,
        });
        for mut c in v.coded.drain(..) {
            c.patient_id = patient_id;
            c.visit_id = Some(row.id);
            rows.push(c);
        }
    }
    for (id, resource) in existing_resources {
        imported.entry(id).or_insert_with(|| ImportedPatient {
            resource,
            patient_id: id,
            external_id: String::new(),
            status: "existing".into(),
            visits_added: 0,
        });
    }
    // Codes for visits imported before: added to them (in order, without
    // duplicates); the patient's stored model states no longer match its
    // history, so they are dropped (rebuilt by the next prediction).
    for ((patient_id, visit_id), a) in amendments {
        store::patients::lock(&mut *conn, patient_id).await?;
        let Some(v) = store::visits::get(&mut *conn, patient_id, visit_id).await? else {
            return Err(anyhow::anyhow!("a stored visit of an imported encounter vanished").into());
        };
        let merge = |old: &[String], new: &[String], kind: CodeSetKind| -> Result<Vec<String>, ApiError> {
            let all: Vec<&String> = old.iter().chain(new).collect();
            CodeSet::parse(&all).map(CodeSet::into_vec).map_err(|err| {
                ApiError::Validation(vec![entries[a.entry].error("", format!("its visit's {}: {err}", kind.as_str()))])
            })
        };
        let [d, p, m] = &a.sets;
        let diagnoses = merge(&v.diagnoses, d, CodeSetKind::Diagnoses)?;
        let procedures = merge(&v.procedures, p, CodeSetKind::Procedures)?;
        let medications = match (&v.medications, m.is_empty()) {
            (None, true) => None,
            (old, _) => Some(merge(old.as_deref().unwrap_or_default(), m, CodeSetKind::Medications)?),
        };
        store::fhir::amend_visit(&mut *conn, patient_id, visit_id, &diagnoses, &procedures, medications.as_deref())
            .await?;
        report.visits_amended += 1;
        for mut c in a.coded {
            c.patient_id = patient_id;
            c.visit_id = Some(visit_id);
            rows.push(c);
        }
    }
    store::fhir::insert_resources(&mut *conn, &opts.source, &rows).await?;
    // External ids of existing patients that got no visit (one query).
    let missing: Vec<Uuid> = imported.values().filter(|p| p.external_id.is_empty()).map(|p| p.patient_id).collect();
    if !missing.is_empty() {
        let found: Vec<(Uuid, String)> = sqlx::query_as("SELECT id, external_id FROM patients WHERE id = ANY($1)")
            .bind(&missing)
            .fetch_all(&mut *conn)
            .await?;
        for (id, ext) in found {
            if let Some(p) = imported.get_mut(&id) {
                p.external_id = ext;
            }
        }
    }
    report.patients = imported.into_values().collect();
    Ok(report)
}
