//! FHIR R4 ingest: the Synthea bundles of the shared fixtures against an
//! independent count, every resource type, code maps, re-posts, later
//! bundles, NDJSON, body limits and every error (nothing written).
use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::http::{Method, StatusCode};
use medchange::config::HttpArgs;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{Res, TestApp};

pub const SYNTHEA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/fhir/synthea-r4");
pub const SNOMED: &str = "http://snomed.info/sct";
pub const ICD9: &str = "http://hl7.org/fhir/sid/icd-9-cm";
pub const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
pub const ATC: &str = "http://www.whocc.no/atc";

pub fn synthea_files() -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(SYNTHEA)
        .expect("the Synthea fixtures (../shared/fixtures/fhir/synthea-r4)")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    v.sort();
    assert_eq!(v.len(), 4, "four Synthea bundles");
    v
}

pub async fn import(app: &TestApp, query: &str, content_type: &str, body: impl Into<axum::body::Body>) -> Res {
    app.raw(Method::POST, &format!("/v1/fhir/import{query}"), Some(&app.clinical), Some(content_type), body).await
}

pub async fn import_json(app: &TestApp, query: &str, bundle: &Value) -> Res {
    import(app, query, "application/fhir+json", bundle.to_string()).await
}

/// A bundle of `kind` whose entries have `urn:uuid:` fullUrls; references
/// written `@id` become the fullUrl of the resource with that id.
pub fn bundle(kind: &str, resources: Vec<Value>) -> Value {
    let urls: HashMap<String, String> = resources
        .iter()
        .filter_map(|r| r["id"].as_str().map(|id| (id.to_string(), format!("urn:uuid:{}", Uuid::new_v4()))))
        .collect();
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            let mut text = r.to_string();
            for (id, url) in &urls {
                text = text.replace(&format!("\"@{id}\""), &format!("\"{url}\""));
            }
            let r: Value = serde_json::from_str(&text).unwrap();
            let mut e = json!({"resource": r, "request": {"method": "POST", "url": r["resourceType"]}});
            if let Some(u) = r["id"].as_str().and_then(|id| urls.get(id)) {
                e["fullUrl"] = json!(u);
            }
            e
        })
        .collect();
    json!({"resourceType": "Bundle", "type": kind, "entry": entries})
}

pub fn patient(id: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "identifier": [{"system": "urn:mrn", "value": format!("MRN-{id}")}]})
}

pub fn encounter(id: &str, patient_ref: &str, start: &str) -> Value {
    json!({"resourceType": "Encounter", "id": id, "status": "finished", "subject": {"reference": patient_ref},
        "period": {"start": start}})
}

pub fn coded(rtype: &str, id: &str, enc_ref: &str, system: &str, code: &str) -> Value {
    let cc = json!({"coding": [{"system": system, "code": code, "display": format!("{code} display")}]});
    let mut r = json!({"resourceType": rtype, "id": id});
    match rtype {
        "Condition" | "Procedure" => {
            r["code"] = cc;
            r["encounter"] = json!({"reference": enc_ref});
        }
        "MedicationRequest" => {
            r["status"] = json!("active");
            r["intent"] = json!("order");
            r["medicationCodeableConcept"] = cc;
            r["encounter"] = json!({"reference": enc_ref});
        }
        _ => {
            r["status"] = json!("completed");
            r["medicationCodeableConcept"] = cc;
            r["context"] = json!({"reference": enc_ref});
        }
    }
    r
}

async fn visits_of(app: &TestApp, patient_id: &str) -> Vec<Value> {
    let r = app.get(&format!("/v1/patients/{patient_id}/visits?limit=500")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["items"].as_array().unwrap().clone()
}

/// visit id -> encounter resource id, from the import's bookkeeping.
async fn encounters_of(app: &TestApp, source: &str) -> HashMap<String, String> {
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT visit_id, resource_id FROM fhir_resources WHERE source = $1 AND resource_type = 'Encounter'",
    )
    .bind(source)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    rows.into_iter().map(|(v, e)| (v.to_string(), e)).collect()
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

/// An encounter's start and codes (diagnoses, procedures, medications).
type Codes = (String, BTreeSet<String>, BTreeSet<String>, BTreeSet<String>);

/// What a Synthea bundle holds, counted straight from its JSON.
struct Expected {
    patient_id: String,
    /// encounter id -> (start, diagnoses, procedures, medications) as `alias:code`.
    encounters: BTreeMap<String, Codes>,
    conditions: usize,
    procedures: usize,
    medication_requests: usize,
    other: usize,
}

fn expected(bundle: &Value) -> Expected {
    let entries = bundle["entry"].as_array().unwrap();
    let id_of_url: HashMap<&str, &str> =
        entries.iter().map(|e| (e["fullUrl"].as_str().unwrap(), e["resource"]["id"].as_str().unwrap())).collect();
    let mut x = Expected {
        patient_id: String::new(),
        encounters: BTreeMap::new(),
        conditions: 0,
        procedures: 0,
        medication_requests: 0,
        other: 0,
    };
    for e in entries {
        let r = &e["resource"];
        match r["resourceType"].as_str().unwrap() {
            "Patient" => x.patient_id = r["id"].as_str().unwrap().to_string(),
            "Encounter" => {
                x.encounters.insert(
                    r["id"].as_str().unwrap().to_string(),
                    (
                        r["period"]["start"].as_str().unwrap().to_string(),
                        Default::default(),
                        Default::default(),
                        Default::default(),
                    ),
                );
            }
            _ => {}
        }
    }
    for e in entries {
        let r = &e["resource"];
        let t = r["resourceType"].as_str().unwrap();
        let (alias, cc, which) = match t {
            "Condition" => ("sct", &r["code"], 0),
            "Procedure" => ("sct", &r["code"], 1),
            "MedicationRequest" => ("rxnorm", &r["medicationCodeableConcept"], 2),
            "Patient" | "Encounter" => continue,
            _ => {
                x.other += 1;
                continue;
            }
        };
        match which {
            0 => x.conditions += 1,
            1 => x.procedures += 1,
            _ => x.medication_requests += 1,
        }
        let enc = id_of_url[r["encounter"]["reference"].as_str().unwrap()];
        let code = format!("{alias}:{}", cc["coding"][0]["code"].as_str().unwrap());
        let slot = x.encounters.get_mut(enc).unwrap();
        match which {
            0 => slot.1.insert(code),
            1 => slot.2.insert(code),
            _ => slot.3.insert(code),
        };
    }
    x
}

#[sqlx::test]
async fn synthea_bundles_import_into_patients_and_visits_matching_an_independent_count(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let mut total_encounters = 0;
    for file in synthea_files() {
        let bytes = std::fs::read(&file).unwrap();
        let b: Value = serde_json::from_slice(&bytes).unwrap();
        let x = expected(&b);
        total_encounters += x.encounters.len();
        let r = import(&app, "?source=synthea", "application/fhir+json", bytes).await;
        assert_eq!(r.status, StatusCode::OK, "{}: {}", file.display(), r.text);
        let rep = &r.body;
        assert_eq!(rep["format"], "bundle");
        assert_eq!(rep["bundle_type"], "transaction");
        assert_eq!(rep["patients_created"], 1);
        assert_eq!(rep["visits_added"], x.encounters.len());
        assert_eq!(rep["resources"]["Encounter"]["read"], x.encounters.len());
        assert_eq!(rep["resources"]["Encounter"]["used"], x.encounters.len());
        assert_eq!(rep["resources"]["Condition"]["used"].as_u64().unwrap_or(0) as usize, x.conditions);
        assert_eq!(rep["resources"]["Procedure"]["used"].as_u64().unwrap_or(0) as usize, x.procedures);
        assert_eq!(rep["resources"]["MedicationRequest"]["used"].as_u64().unwrap_or(0) as usize, x.medication_requests);
        // Every other resource is read and skipped, with the reason.
        let other: u64 = rep["resources"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(t, _)| {
                !["Patient", "Encounter", "Condition", "Procedure", "MedicationRequest"].contains(&t.as_str())
            })
            .map(|(_, c)| {
                assert_eq!(c["read"], c["skipped"]);
                assert_eq!(c["skipped_reasons"]["resource type not imported"], c["read"]);
                c["read"].as_u64().unwrap()
            })
            .sum();
        assert_eq!(other as usize, x.other);
        // SNOMED and RxNorm are accepted but not the model's systems: every
        // code is unmapped, kept with its system and reported.
        assert_eq!(rep["codes"]["diagnoses"]["unmapped"].as_u64().unwrap() as usize, x.conditions);
        assert_eq!(rep["codes"]["diagnoses"]["native"], 0);
        assert_eq!(rep["codes"]["medications"]["unmapped"].as_u64().unwrap() as usize, x.medication_requests);
        if x.conditions > 0 {
            let listed: u64 = rep["codes"]["diagnoses"]["unmapped_codes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["count"].as_u64().unwrap())
                .sum();
            assert_eq!(listed as usize, x.conditions);
        }

        // The stored visits: one per encounter, in time order, with its codes.
        let p = &rep["patients"][0];
        assert_eq!(p["resource"], format!("Patient/{}", x.patient_id));
        assert_eq!(p["external_id"], x.patient_id.as_str());
        assert_eq!(p["visits_added"], x.encounters.len());
        let visits = visits_of(&app, p["patient_id"].as_str().unwrap()).await;
        assert_eq!(visits.len(), x.encounters.len(), "{}", file.display());
        let enc_of = encounters_of(&app, "synthea").await;
        let mut starts: Vec<chrono::DateTime<chrono::Utc>> = vec![];
        for (i, v) in visits.iter().enumerate() {
            assert_eq!(v["seq"], i + 1);
            let enc = &enc_of[v["id"].as_str().unwrap()];
            let (start, diag, proc, meds) = &x.encounters[enc];
            let at: chrono::DateTime<chrono::Utc> = v["occurred_at"].as_str().unwrap().parse().unwrap();
            assert_eq!(at, chrono::DateTime::parse_from_rfc3339(start).unwrap());
            starts.push(at);
            assert_eq!(&strings(&v["diagnoses"]), diag, "encounter {enc}");
            assert_eq!(&strings(&v["procedures"]), proc, "encounter {enc}");
            // The bundles carry medication requests, so medications are recorded.
            assert!(v["medications"].is_array(), "{v}");
            assert_eq!(&strings(&v["medications"]), meds, "encounter {enc}");
            assert_eq!(v["source"], "synthea");
        }
        assert!(starts.windows(2).all(|w| w[0] <= w[1]), "visits in time order");
    }
    assert_eq!(app.count("patients").await, 4);
    assert_eq!(app.count("visits").await as usize, total_encounters);

    // Posting them all again changes nothing.
    let before = (app.count("patients").await, app.count("visits").await, app.count("fhir_resources").await);
    for file in synthea_files() {
        let r = import(&app, "?source=synthea", "application/json", std::fs::read(&file).unwrap()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body["visits_added"], 0);
        assert_eq!(r.body["patients_created"], 0);
        let enc = &r.body["resources"]["Encounter"];
        assert_eq!(enc["skipped_reasons"]["already imported"], enc["read"]);
        assert_eq!(r.body["resources"]["Patient"]["skipped_reasons"]["already imported"], 1);
        assert_eq!(r.body["patients"][0]["status"], "existing");
    }
    assert_eq!((app.count("patients").await, app.count("visits").await, app.count("fhir_resources").await), before);
}

#[sqlx::test]
async fn every_resource_type_and_the_coding_rules(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let b = bundle(
        "transaction",
        vec![
            patient("p1"),
            encounter("e1", "@p1", "2026-03-01T10:00:00+02:00"),
            encounter("e2", "Patient/p1", "2026-04-01"),
            coded("Condition", "c1", "@e1", ICD9, "401.9"),
            coded("Condition", "c2", "Encounter/e1", SNOMED, "44054006"),
            coded("Condition", "c3", "@e2", "http://loinc.org", "1234-5"),
            json!({"resourceType": "Condition", "id": "c4", "code": {"coding": [{"system": ICD9, "code": "250.00"}]}}),
            json!({"resourceType": "Condition", "id": "c5", "encounter": {"reference": "@e2"},
            "verificationStatus": {"coding": [{"code": "refuted"}]}, "code": {"coding": [{"system": ICD9, "code": "428.0"}]}}),
            coded("Procedure", "x1", "@e1", ICD9, "38.93"),
            json!({"resourceType": "Procedure", "id": "x2", "status": "not-done", "encounter": {"reference": "@e1"},
            "code": {"coding": [{"system": ICD9, "code": "99.04"}]}}),
            json!({"resourceType": "Medication", "id": "med1", "code": {"coding": [{"system": ATC, "code": "N02BE01"}]}}),
            json!({"resourceType": "Medication", "id": "med2", "code": {"coding": [{"system": ATC, "code": "A10BA02"}]}}),
            json!({"resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
            "medicationReference": {"reference": "@med1"}, "subject": {"reference": "@p1"}, "encounter": {"reference": "@e1"}}),
            coded("MedicationStatement", "ms1", "@e2", ATC, "C07AB02"),
            coded("MedicationAdministration", "ma1", "@e2", RXNORM, "197361"),
            json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "BP"}}),
        ],
    );
    let r = import_json(&app, "?source=ehr&identifier_system=urn:mrn", &b).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let rep = &r.body;
    let res = &rep["resources"];
    assert_eq!(res["Patient"]["used"], 1);
    assert_eq!(res["Encounter"]["used"], 2);
    assert_eq!(res["Condition"]["read"], 5);
    assert_eq!(res["Condition"]["used"], 2);
    assert_eq!(res["Condition"]["skipped_reasons"]["no coding in a system accepted for diagnoses"], 1);
    assert_eq!(res["Condition"]["skipped_reasons"]["no encounter reference (not attached to a visit)"], 1);
    assert_eq!(res["Condition"]["skipped_reasons"]["verificationStatus refuted or entered-in-error"], 1);
    assert_eq!(res["Procedure"]["used"], 1);
    assert_eq!(res["Procedure"]["skipped_reasons"]["status not-done"], 1);
    assert_eq!(res["MedicationRequest"]["used"], 1);
    assert_eq!(res["MedicationStatement"]["used"], 1);
    assert_eq!(res["MedicationAdministration"]["used"], 1);
    assert_eq!(res["Medication"]["used"], 1);
    assert_eq!(res["Medication"]["skipped_reasons"]["not referenced by an imported medication resource"], 1);
    assert_eq!(res["Observation"]["skipped_reasons"]["resource type not imported"], 1);
    let codes = &rep["codes"];
    assert_eq!((codes["diagnoses"]["native"].as_u64(), codes["diagnoses"]["unmapped"].as_u64()), (Some(1), Some(1)));
    assert_eq!(codes["diagnoses"]["rejected"], 1);
    assert_eq!(codes["diagnoses"]["rejected_systems"]["http://loinc.org"], 1);
    assert_eq!(codes["medications"]["native"], 2);
    assert_eq!(codes["medications"]["unmapped"], 1);
    assert_eq!(codes["medications"]["unmapped_codes"][0]["code"], "197361");
    assert_eq!(codes["medications"]["unmapped_codes"][0]["display"], "197361 display");

    // The patient's external id is its identifier of the requested system.
    assert_eq!(rep["patients"][0]["external_id"], "MRN-p1");
    let r = app.get("/v1/patients/lookup?external_id=MRN-p1&source=ehr").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let visits = visits_of(&app, r.body["id"].as_str().unwrap()).await;
    assert_eq!(visits.len(), 2);
    assert_eq!(visits[0]["occurred_at"], "2026-03-01T08:00:00Z");
    assert_eq!(strings(&visits[0]["diagnoses"]), BTreeSet::from(["4019".into(), "sct:44054006".into()]));
    assert_eq!(strings(&visits[0]["procedures"]), BTreeSet::from(["3893".into()]));
    assert_eq!(strings(&visits[0]["medications"]), BTreeSet::from(["N02B".into()]));
    assert_eq!(visits[1]["occurred_at"], "2026-04-01T00:00:00Z");
    assert!(visits[1]["diagnoses"].as_array().unwrap().is_empty());
    assert_eq!(strings(&visits[1]["medications"]), BTreeSet::from(["C07A".into(), "rxnorm:197361".into()]));
    // Provenance: each coded resource keeps its original coding.
    let (system, code, stored): (String, String, String) =
        sqlx::query_as("SELECT system, code, stored_code FROM fhir_resources WHERE resource_id = 'c1'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((system.as_str(), code.as_str(), stored.as_str()), (ICD9, "401.9", "4019"));

    // Without medication resources, medications are unknown (null); with
    // `medications=recorded` an encounter without any recorded none.
    let b = bundle("collection", vec![patient("p2"), encounter("e9", "@p2", "2025-01-01")]);
    let r = import_json(&app, "?source=ehr", &b).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = visits_of(&app, r.body["patients"][0]["patient_id"].as_str().unwrap()).await;
    assert!(v[0]["medications"].is_null());
    let b = bundle("batch", vec![patient("p3"), encounter("e10", "@p3", "2025-01-01")]);
    let r = import_json(&app, "?source=ehr&medications=recorded", &b).await;
    assert_eq!(r.body["bundle_type"], "batch");
    let v = visits_of(&app, r.body["patients"][0]["patient_id"].as_str().unwrap()).await;
    assert_eq!(v[0]["medications"], json!([]));
}

#[sqlx::test]
async fn code_maps_map_codes_and_unmapped_ones_are_counted(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let file = synthea_files().into_iter().find(|f| f.to_string_lossy().contains("Ernie")).unwrap();
    let bytes = std::fs::read(&file).unwrap();
    let b: Value = serde_json::from_slice(&bytes).unwrap();
    let x = expected(&b);
    let rx: BTreeSet<String> =
        x.encounters.values().flat_map(|e| e.3.iter().map(|c| c.trim_start_matches("rxnorm:").to_string())).collect();
    assert!(rx.len() >= 2, "the fixture has several medications: {rx:?}");
    // Map all but one RxNorm code, and one SNOMED condition.
    let mapped: Vec<&String> = rx.iter().skip(1).collect();
    let mut csv = String::from("from_system,from_code,to_code\n");
    for (i, c) in mapped.iter().enumerate() {
        csv.push_str(&format!("{RXNORM},{c},M{i:02}X\n"));
    }
    let r = app.raw(Method::PUT, "/v1/fhir/code-maps/medications", Some(&app.admin), Some("text/csv"), csv).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["rows"], mapped.len());
    let sct = x.encounters.values().flat_map(|e| e.1.iter()).next().unwrap().trim_start_matches("sct:").to_string();
    let r = app
        .call(
            Method::PUT,
            "/v1/fhir/code-maps/diagnoses",
            Some(&app.admin),
            Some(json!({"mappings": [{"from_system": SNOMED, "from_code": sct, "to_code": "4019"}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app.admin_get("/v1/fhir/code-maps").await;
    assert_eq!(r.body.as_array().unwrap().len(), 2, "{}", r.text);

    let r = import(&app, "", "application/fhir+json", bytes).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let meds = &r.body["codes"]["medications"];
    let unmapped_code = rx.iter().next().unwrap();
    let n_unmapped = x.encounters.values().filter(|e| e.3.contains(&format!("rxnorm:{unmapped_code}"))).count();
    assert_eq!(meds["unmapped"].as_u64().unwrap() as usize, n_unmapped);
    assert_eq!(meds["mapped"].as_u64().unwrap() as usize, x.medication_requests - n_unmapped);
    assert_eq!(meds["unmapped_codes"].as_array().unwrap().len(), 1);
    assert_eq!(meds["unmapped_codes"][0]["code"], unmapped_code.as_str());
    assert!(r.body["codes"]["diagnoses"]["mapped"].as_u64().unwrap() >= 1);
    let visits = visits_of(&app, r.body["patients"][0]["patient_id"].as_str().unwrap()).await;
    let all_meds: BTreeSet<String> = visits.iter().flat_map(|v| strings(&v["medications"])).collect();
    assert!(all_meds.contains(&format!("rxnorm:{unmapped_code}")));
    assert!(all_meds.iter().filter(|c| c.starts_with('M')).count() == mapped.len(), "{all_meds:?}");
    assert!(visits.iter().any(|v| strings(&v["diagnoses"]).contains("4019")));

    // Bad maps are refused whole, with the line or pointer.
    let before = app.count("fhir_code_maps").await;
    let r = app
        .raw(
            Method::PUT,
            "/v1/fhir/code-maps/medications",
            Some(&app.admin),
            Some("text/csv"),
            format!("from_system,from_code,to_code\n{RXNORM},1,A01A\n{RXNORM},2\n"),
        )
        .await;
    r.assert_problem(422, "/problems/validation");
    assert_eq!(r.pointers(), ["line:3"]);
    let r = app
        .call(
            Method::PUT,
            "/v1/fhir/code-maps/medications",
            Some(&app.admin),
            Some(json!({"mappings": [{"from_system": RXNORM, "from_code": "1", "to_code": " "}]})),
        )
        .await;
    assert_eq!(r.pointers(), ["/mappings/0/to_code"]);
    let r =
        app.call(Method::PUT, "/v1/fhir/code-maps/allergies", Some(&app.admin), Some(json!({"mappings": []}))).await;
    assert_eq!(r.pointers(), ["path:code_set"]);
    let r = app.raw(Method::PUT, "/v1/fhir/code-maps/medications", Some(&app.clinical), Some("text/csv"), "x").await;
    r.assert_problem(403, "/problems/forbidden");
    assert_eq!(app.count("fhir_code_maps").await, before);
}

#[sqlx::test]
async fn settings_choose_the_systems_of_each_set(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let r = app.admin_get("/v1/fhir/settings").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["medications"]["native"], ATC);
    let mut s = r.body.clone();
    // Diagnoses: SNOMED only, unmapped codes left out.
    s["diagnoses"]["accept"] = json!([SNOMED]);
    s["diagnoses"]["unmapped"] = json!("skip");
    let r = app.call(Method::PUT, "/v1/fhir/settings", Some(&app.admin), Some(s.clone())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let b = bundle(
        "transaction",
        vec![
            patient("p1"),
            encounter("e1", "@p1", "2026-03-01"),
            coded("Condition", "c1", "@e1", SNOMED, "44054006"),
            coded("Condition", "c2", "@e1", "http://hl7.org/fhir/sid/icd-10-cm", "E11.9"),
        ],
    );
    let r = import_json(&app, "", &b).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let c = &r.body["resources"]["Condition"]["skipped_reasons"];
    assert_eq!(c["unmapped code left out (settings: unmapped = skip)"], 1);
    assert_eq!(c["no coding in a system accepted for diagnoses"], 1);
    // A system without an alias is refused.
    s["diagnoses"]["accept"] = json!(["urn:oid:1.2.3"]);
    let r = app.call(Method::PUT, "/v1/fhir/settings", Some(&app.admin), Some(s)).await;
    r.assert_problem(422, "/problems/validation");
    assert_eq!(r.pointers(), ["/diagnoses/accept/0"]);
}

#[sqlx::test]
async fn later_inputs_append_visits_in_time_order_and_resolve_earlier_resources(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let b = bundle(
        "transaction",
        vec![
            patient("p1"),
            encounter("e1", "@p1", "2026-02-01T00:00:00Z"),
            encounter("e2", "@p1", "2026-04-01T00:00:00Z"),
            coded("Condition", "c1", "@e1", ICD9, "4019"),
        ],
    );
    let r = import_json(&app, "?source=ehr", &b).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let pid = r.body["patients"][0]["patient_id"].as_str().unwrap().to_string();
    // Bulk NDJSON with relative references to the patient and an encounter
    // imported before: new encounters land in time order; a condition for
    // the old encounter is added to its visit.
    let ndjson = [
        encounter("e0", "Patient/p1", "2026-01-01T00:00:00Z"),
        encounter("e3", "Patient/p1", "2026-03-01T00:00:00Z"),
        encounter("e4", "https://ehr.example/fhir/Patient/p1", "2026-05-01T00:00:00Z"),
        coded("Condition", "c3", "Encounter/e3", ICD9, "25000"),
        coded("Condition", "c4", "Encounter/e1", ICD9, "4280"),
    ]
    .iter()
    .map(|r| r.to_string())
    .collect::<Vec<_>>()
    .join("\n");
    let r = import(&app, "?source=ehr", "application/fhir+ndjson", format!("{ndjson}\n")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["format"], "ndjson");
    assert_eq!(r.body["visits_added"], 3);
    assert_eq!(r.body["patients"][0]["status"], "existing");
    assert_eq!(r.body["patients"][0]["patient_id"], pid.as_str());
    assert_eq!(r.body["visits_amended"], 1);
    assert_eq!(r.body["resources"]["Condition"]["used"], 2);
    let visits = visits_of(&app, &pid).await;
    let enc_of = encounters_of(&app, "ehr").await;
    let order: Vec<&str> = visits.iter().map(|v| enc_of[v["id"].as_str().unwrap()].as_str()).collect();
    assert_eq!(order, ["e0", "e1", "e3", "e2", "e4"]);
    assert_eq!(strings(&visits[2]["diagnoses"]), BTreeSet::from(["25000".into()]));
    assert_eq!(visits[1]["diagnoses"], json!(["4019", "4280"]), "added after the stored code");
    // The same resource ids under another source are other resources.
    let r = import_json(&app, "?source=other-ehr", &b).await;
    assert_eq!(r.body["patients_created"], 1);
    assert_eq!(app.count("patients").await, 2);
}

#[sqlx::test]
async fn a_patient_stored_through_the_api_is_linked_not_copied(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let r = app.post("/v1/patients", json!({"external_id": "p1", "source": "ehr"})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let id = r.body["id"].as_str().unwrap().to_string();
    let b = bundle("collection", vec![patient("p1"), encounter("e1", "@p1", "2026-01-01")]);
    let r = import_json(&app, "?source=ehr", &b).await;
    assert_eq!(r.body["patients_matched"], 1);
    assert_eq!(r.body["patients"][0]["patient_id"], id.as_str());
    assert_eq!(r.body["patients"][0]["status"], "matched");
    assert_eq!(app.count("patients").await, 1);
}

#[sqlx::test]
async fn malformed_fhir_is_refused_naming_the_entry_and_nothing_is_written(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let ok_patient = patient("p1");
    let ok_enc = encounter("e1", "@p1", "2026-01-01");
    let cases: Vec<(&str, Value, u16, &str, &str)> = vec![
        ("not a bundle", ok_patient.clone(), 422, "/resourceType", "expected a Bundle"),
        ("searchset", json!({"resourceType": "Bundle", "type": "searchset", "entry": []}), 422, "/type", "searchset"),
        ("no type", json!({"resourceType": "Bundle"}), 422, "/type", "missing"),
        ("entry not a list", json!({"resourceType": "Bundle", "type": "batch", "entry": {}}), 422, "/entry", "array"),
        (
            "entry without resource",
            {
                let mut b = bundle("transaction", vec![ok_patient.clone()]);
                b["entry"].as_array_mut().unwrap().push(json!({"fullUrl": "urn:uuid:1"}));
                b
            },
            422,
            "/entry/1/resource",
            "entry 1",
        ),
        (
            "resource without type",
            {
                let mut b = bundle("transaction", vec![ok_patient.clone()]);
                b["entry"].as_array_mut().unwrap().push(json!({"resource": {"id": "x"}}));
                b
            },
            422,
            "/entry/1/resource/resourceType",
            "entry 1",
        ),
        (
            "bad id",
            bundle("collection", vec![json!({"resourceType": "Patient", "id": "a b"})]),
            422,
            "/entry/0/resource/id",
            "entry 0",
        ),
        (
            "delete",
            {
                let mut b = bundle("transaction", vec![ok_patient.clone()]);
                b["entry"][0]["request"]["method"] = json!("DELETE");
                b
            },
            422,
            "/entry/0/request/method",
            "DELETE",
        ),
        (
            "duplicate fullUrl",
            {
                let mut b = bundle("transaction", vec![ok_patient.clone(), ok_enc.clone()]);
                b["entry"][1]["fullUrl"] = b["entry"][0]["fullUrl"].clone();
                b
            },
            422,
            "/entry/1/fullUrl",
            "entry 0",
        ),
        (
            "unresolvable urn reference",
            bundle(
                "transaction",
                vec![ok_patient.clone(), ok_enc.clone(), coded("Condition", "c1", "urn:uuid:0000", ICD9, "4019")],
            ),
            422,
            "/entry/2/resource/encounter/reference",
            "entry 2",
        ),
        (
            "unresolvable relative reference",
            bundle("transaction", vec![ok_patient.clone(), encounter("e1", "Patient/nobody", "2026-01-01")]),
            422,
            "/entry/1/resource/subject/reference",
            "imported before",
        ),
        (
            "reference of the wrong type",
            bundle(
                "transaction",
                vec![ok_patient.clone(), ok_enc.clone(), coded("Condition", "c1", "@p1", ICD9, "4019")],
            ),
            422,
            "/entry/2/resource/encounter/reference",
            "not a Encounter",
        ),
        (
            "encounter without subject",
            bundle(
                "transaction",
                vec![
                    ok_patient.clone(),
                    json!({"resourceType": "Encounter", "id": "e1", "period": {"start": "2026-01-01"}}),
                ],
            ),
            422,
            "/entry/1/resource/subject",
            "needs a subject",
        ),
        (
            "bad period.start",
            bundle("transaction", vec![ok_patient.clone(), encounter("e1", "@p1", "2026-01-01T10:00:00")]),
            422,
            "/entry/1/resource/period/start",
            "dateTime",
        ),
        (
            "future visit",
            bundle("transaction", vec![ok_patient.clone(), encounter("e1", "@p1", "2999-01-01")]),
            422,
            "/entry/1/resource/period/start",
            "future",
        ),
        (
            "subject not the encounter's patient",
            bundle(
                "transaction",
                vec![ok_patient.clone(), patient("p2"), ok_enc.clone(), {
                    let mut c = coded("Condition", "c1", "@e1", ICD9, "4019");
                    c["subject"] = json!({"reference": "@p2"});
                    c
                }],
            ),
            422,
            "/entry/3/resource/subject/reference",
            "not the patient",
        ),
        (
            "coding not an array",
            bundle(
                "transaction",
                vec![
                    ok_patient.clone(),
                    ok_enc.clone(),
                    json!({"resourceType": "Condition", "id": "c1", "encounter": {"reference": "@e1"}, "code": {"coding": {}}}),
                ],
            ),
            422,
            "/entry/2/resource/code/coding",
            "array",
        ),
        (
            "identifier-only reference",
            bundle(
                "transaction",
                vec![
                    ok_patient.clone(),
                    json!({"resourceType": "Encounter", "id": "e1", "subject": {"identifier": {"value": "x"}}, "period": {"start": "2026-01-01"}}),
                ],
            ),
            422,
            "/entry/1/resource/subject",
            "identifier",
        ),
        (
            "missing identifier",
            bundle("transaction", vec![json!({"resourceType": "Patient", "id": "p9"}), ok_enc.clone()]),
            422,
            "/entry/0/resource/identifier",
            "urn:mrn",
        ),
    ];
    for (name, body, status, pointer, needle) in cases {
        let before = app.counts().await;
        let q = if name == "missing identifier" { "?identifier_system=urn:mrn" } else { "" };
        let r = import_json(&app, q, &body).await;
        r.assert_problem(status, "/problems/validation");
        assert!(r.pointers().iter().any(|p| p == pointer), "{name}: {:?} lacks {pointer}: {}", r.pointers(), r.text);
        assert!(r.text.contains(needle), "{name}: `{needle}` not in {}", r.text);
        assert_eq!(app.counts().await, before, "{name} wrote something");
        assert_eq!(app.count("fhir_resources").await, 0, "{name}");
    }

    // Not JSON; NDJSON errors name the line; media types.
    let r = import(&app, "", "application/fhir+json", "{\"resourceType\": ").await;
    r.assert_problem(400, "/problems/malformed-json");
    let ndjson = format!("{}\n{{\"id\": \"x\"}}\n", ok_patient);
    let r = import(&app, "", "application/fhir+ndjson", ndjson).await;
    r.assert_problem(422, "/problems/validation");
    assert_eq!(r.pointers(), ["line:2/resourceType"]);
    let r = import(&app, "", "application/x-ndjson", format!("{}\nnot json\n", ok_patient)).await;
    r.assert_problem(400, "/problems/malformed-json");
    assert!(r.text.contains("line 2"), "{}", r.text);
    let r = import(&app, "", "text/plain", "{}").await;
    r.assert_problem(415, "/problems/unsupported-media-type");
    let r = import(&app, "?medications=sometimes", "application/fhir+json", bundle("batch", vec![]).to_string()).await;
    assert_eq!(r.pointers(), ["query:medications"]);
    assert_eq!(app.count("patients").await, 0);
}

#[sqlx::test]
async fn the_import_has_its_own_body_limit_and_honours_idempotency_keys(pool: PgPool) {
    let limit = 3 * 1024 * 1024;
    let app = TestApp::with_http(pool, HttpArgs { fhir_body_limit: limit, ..HttpArgs::default() }).await;
    // Above the 2 MiB default limit of other routes, below the import's.
    let pad = "x".repeat(2_500_000);
    let b = bundle(
        "collection",
        vec![
            patient("p1"),
            encounter("e1", "@p1", "2026-01-01"),
            json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": pad}}),
        ],
    );
    let text = b.to_string();
    assert!(text.len() > 2 * 1024 * 1024);
    let key = [("idempotency-key", "import-1")];
    let send = |body: String| {
        let app = &app;
        async move {
            let req = axum::http::Request::builder()
                .method(Method::POST)
                .uri("/v1/fhir/import")
                .header("authorization", format!("Bearer {}", app.clinical))
                .header("content-type", "application/fhir+json")
                .header(key[0].0, key[0].1)
                .body(axum::body::Body::from(body))
                .unwrap();
            app.send(req).await
        }
    };
    let r = send(text.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", &r.text[..r.text.len().min(500)]);
    assert_eq!(r.body["visits_added"], 1);
    let again = send(text.clone()).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.body, r.body, "the original report is replayed");
    assert_eq!(app.count("visits").await, 1);

    let big = "y".repeat(limit + 10);
    let r = import(&app, "", "application/fhir+json", big).await;
    r.assert_problem(413, "/problems/payload-too-large");
    assert!(r.body["detail"].as_str().unwrap().contains(&limit.to_string()), "{}", r.text);
}

#[sqlx::test]
async fn the_cli_imports_a_synthea_folder(pool: PgPool) {
    let opts = medchange::fhir::ingest::ImportOptions {
        source: "synthea".into(),
        identifier_system: None,
        medications: Default::default(),
    };
    let s = medchange::import::fhir(&pool, std::path::Path::new(SYNTHEA), &opts).await.unwrap();
    let encounters: usize = synthea_files()
        .iter()
        .map(|f| {
            let b: Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
            b["entry"].as_array().unwrap().iter().filter(|e| e["resource"]["resourceType"] == "Encounter").count()
        })
        .sum();
    assert_eq!((s.files, s.summary.patients, s.summary.visits), (4, 4, encounters));
    assert!(s.to_string().contains("without a mapping"), "{s}");
    let visits: i64 = sqlx::query_scalar("SELECT count(*) FROM visits").fetch_one(&pool).await.unwrap();
    assert_eq!(visits as usize, encounters);
    // Again: nothing new.
    let s = medchange::import::fhir(&pool, std::path::Path::new(SYNTHEA), &opts).await.unwrap();
    assert_eq!((s.summary.patients, s.summary.visits), (0, 0));
}

/// A bundle's resources as Bulk Data files: one NDJSON body per type.
fn bulk_files(bundle: &Value) -> Vec<(String, String)> {
    let mut by_type: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in bundle["entry"].as_array().unwrap() {
        // Bulk exports use relative references, not the bundle's urn:uuid ones.
        let mut text = e["resource"].to_string();
        for e2 in bundle["entry"].as_array().unwrap() {
            let url = e2["fullUrl"].as_str().unwrap();
            let rel = format!(
                "{}/{}",
                e2["resource"]["resourceType"].as_str().unwrap(),
                e2["resource"]["id"].as_str().unwrap()
            );
            text = text.replace(&format!("\"{url}\""), &format!("\"{rel}\""));
        }
        by_type.entry(e["resource"]["resourceType"].as_str().unwrap().to_string()).or_default().push(text);
    }
    let order = ["Patient", "Encounter", "Condition", "Procedure", "MedicationRequest"];
    let mut out: Vec<(String, String)> = by_type.into_iter().map(|(t, lines)| (t, lines.join("\n") + "\n")).collect();
    out.sort_by_key(|(t, _)| order.iter().position(|o| o == t).unwrap_or(order.len()));
    out
}

#[sqlx::test]
async fn bulk_files_posted_one_type_at_a_time_give_the_same_visits(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let shipped = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/models/shipped"));
    app.state.registry.register_shipped(shipped).await.unwrap();
    let file = synthea_files().into_iter().find(|f| f.to_string_lossy().contains("Rickey")).unwrap();
    let b: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let r = import_json(&app, "?source=whole", &b).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let whole = visits_of(&app, r.body["patients"][0]["patient_id"].as_str().unwrap()).await;

    let x = expected(&b);
    let last_start = whole.last().unwrap()["occurred_at"].clone();
    let (last_enc, last_codes) = x
        .encounters
        .iter()
        .find(|(_, e)| {
            chrono::DateTime::parse_from_rfc3339(&e.0)
                .unwrap()
                .to_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                == last_start.as_str().unwrap()
        })
        .map(|(id, e)| (id.clone(), e.1.len() + e.2.len() + e.3.len()))
        .unwrap();
    let mut frozen_skips = 0;
    let mut pid = String::new();
    for (t, body) in bulk_files(&b) {
        let r = import(&app, "?source=bulk", "application/fhir+ndjson", body).await;
        assert_eq!(r.status, StatusCode::OK, "{t}: {}", r.text);
        match t.as_str() {
            "Patient" => pid = r.body["patients"][0]["patient_id"].as_str().unwrap().to_string(),
            "Encounter" => {
                assert_eq!(r.body["visits_added"], whole.len());
                // A prediction stores the patient's model state.
                let p = app.post(&format!("/v1/patients/{pid}/predictions"), json!({})).await;
                assert_eq!(p.status, StatusCode::CREATED, "{}", p.text);
                let states: i64 = sqlx::query_scalar("SELECT count(*) FROM patient_states WHERE patient_id = $1::uuid")
                    .bind(&pid)
                    .fetch_one(&app.pool)
                    .await
                    .unwrap();
                assert_eq!(states, 1);
            }
            "Condition" | "Procedure" | "MedicationRequest" => {
                assert!(r.body["visits_amended"].as_u64().unwrap() >= 1, "{t}: {}", r.text);
                let c = &r.body["resources"][&t];
                let frozen = c["skipped_reasons"]["its visit (imported earlier) already has stored predictions"]
                    .as_u64()
                    .unwrap_or(0);
                frozen_skips += frozen;
                assert_eq!(c["used"].as_u64().unwrap() + frozen, c["read"].as_u64().unwrap(), "{t}");
            }
            _ => assert_eq!(
                r.body["resources"][&t]["skipped_reasons"]["resource type not imported"],
                r.body["resources"][&t]["read"]
            ),
        }
    }
    let bulk = visits_of(&app, &pid).await;
    let codes = |v: &[Value]| -> Vec<Codes> {
        v.iter()
            .map(|v| {
                let at = v["occurred_at"].as_str().unwrap().to_string();
                (at, strings(&v["diagnoses"]), strings(&v["procedures"]), strings(&v["medications"]))
            })
            .collect()
    };
    // The same visits and codes either way, except the latest visit: it was
    // predicted before its codes came, so it keeps what was predicted from.
    let n = whole.len();
    assert_eq!(codes(&bulk[..n - 1]), codes(&whole[..n - 1]), "the same visits and codes either way");
    assert_eq!(frozen_skips as usize, last_codes, "the coded resources of {last_enc}");
    assert!(last_codes > 0, "the fixture's last encounter has codes");
    // The stale model state was dropped; the next prediction rebuilds it.
    let states: i64 = sqlx::query_scalar("SELECT count(*) FROM patient_states WHERE patient_id = $1::uuid")
        .bind(&pid)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(states, 0);
    let r = app.post(&format!("/v1/patients/{pid}/predictions?replay=false"), json!({})).await;
    assert!(r.status == StatusCode::OK || r.status == StatusCode::CREATED, "{}", r.text);
}
