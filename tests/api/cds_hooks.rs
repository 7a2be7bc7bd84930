//! CDS Hooks: discovery's shape, both hooks with and without prefetch on
//! the shipped MICRON model, every card checked against a strict model of
//! the CDS Hooks 2.0 response, warnings, JWT authentication (ES384 keys
//! made here) and the refusals.
use std::collections::BTreeMap;

use axum::{
    body::Body,
    http::{Method, Request, StatusCode},
};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use medchange::{app::app as build_app, cds::jwt::CdsAuth};
use p384::{elliptic_curve::sec1::ToEncodedPoint, pkcs8::EncodePrivateKey};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    fhir::{ATC, ICD9, bundle, coded, encounter, import_json, patient},
    helpers::{Res, TestApp},
};

const PV: &str = "medchange-patient-view";
const OS: &str = "medchange-order-select";
const BASE: &str = "https://cds.example.org";
const ISSUER: &str = "https://ehr.example.org";

// ---------------------------------------------------------------------------
// A strict model of the CDS Hooks 2.0 discovery and card responses
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscoveryStrict {
    services: Vec<ServiceStrict>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceStrict {
    hook: String,
    #[serde(default)]
    title: Option<String>,
    description: String,
    id: String,
    #[serde(default)]
    prefetch: Option<BTreeMap<String, String>>,
    #[serde(default)]
    usage_requirements: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ResponseStrict {
    cards: Vec<CardStrict>,
    #[serde(default)]
    system_actions: Option<Vec<ActionStrict>>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Indicator {
    Info,
    Warning,
    Critical,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum SelectionBehavior {
    AtMostOne,
    Any,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CardStrict {
    #[serde(default)]
    uuid: Option<Uuid>,
    summary: String,
    #[serde(default)]
    detail: Option<String>,
    indicator: Indicator,
    source: SourceStrict,
    #[serde(default)]
    suggestions: Option<Vec<SuggestionStrict>>,
    #[serde(default)]
    selection_behavior: Option<SelectionBehavior>,
    #[serde(default)]
    override_reasons: Option<Vec<CodingStrict>>,
    #[serde(default)]
    links: Option<Vec<LinkStrict>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceStrict {
    label: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    icon: Option<String>,
    #[serde(default)]
    topic: Option<CodingStrict>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CodingStrict {
    #[serde(default)]
    system: Option<String>,
    code: String,
    #[serde(default)]
    display: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SuggestionStrict {
    label: String,
    #[serde(default)]
    uuid: Option<Uuid>,
    #[serde(default)]
    is_recommended: Option<bool>,
    #[serde(default)]
    actions: Option<Vec<ActionStrict>>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum ActionType {
    Create,
    Update,
    Delete,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ActionStrict {
    #[serde(rename = "type")]
    kind: ActionType,
    description: String,
    #[serde(default)]
    resource: Option<Value>,
    #[serde(default)]
    resource_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct LinkStrict {
    label: String,
    url: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    app_context: Option<String>,
}

/// Checks a hook answer against the CDS Hooks 2.0 response rules.
fn valid_cards(r: &Res) -> ResponseStrict {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.headers.get("content-type").unwrap(), "application/json");
    let resp: ResponseStrict = serde_json::from_value(r.body.clone()).unwrap_or_else(|e| panic!("{e}: {}", r.text));
    assert!(resp.system_actions.is_none());
    for c in &resp.cards {
        assert!(!c.summary.is_empty() && c.summary.chars().count() < 140, "summary: {}", c.summary);
        assert!(!c.source.label.is_empty());
        assert!(c.source.url.is_none() && c.source.icon.is_none());
        assert!(c.links.is_none());
        let topic = c.source.topic.as_ref().expect("a topic");
        assert!(topic.system.is_some() && topic.display.is_some() && !topic.code.is_empty());
        if c.override_reasons.as_ref().is_some_and(|o| !o.is_empty()) {
            assert!(c.uuid.is_some(), "overrideReasons need a card uuid");
        }
        let suggestions = c.suggestions.as_deref().unwrap_or_default();
        if !suggestions.is_empty() {
            assert!(c.selection_behavior.is_some(), "suggestions need a selectionBehavior");
        }
        if c.selection_behavior == Some(SelectionBehavior::AtMostOne) {
            assert!(suggestions.len() <= 1);
        }
        for s in suggestions {
            assert!(!s.label.is_empty() && s.uuid.is_some());
            assert!(s.is_recommended.is_none());
            for a in s.actions.as_deref().unwrap_or_default() {
                assert!(!a.description.is_empty());
                match a.kind {
                    ActionType::Create | ActionType::Update => {
                        let res = a.resource.as_ref().expect("create/update carry a resource");
                        assert!(res["resourceType"].is_string(), "{res}");
                        assert!(a.resource_id.is_none());
                    }
                    ActionType::Delete => {
                        let id = a.resource_id.as_deref().expect("delete names the resource");
                        assert!(id.contains('/'), "a relative reference: {id}");
                    }
                }
            }
        }
        assert!(c.detail.as_deref().is_some_and(|d| !d.is_empty()));
    }
    resp
}

// ---------------------------------------------------------------------------
// Data: a patient coded in the shipped model's vocabulary
// ---------------------------------------------------------------------------

async fn with_shipped_model(pool: PgPool) -> TestApp {
    let app = TestApp::new(pool).await;
    let shipped = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/models/shipped"));
    let got = app.state.registry.register_shipped(shipped).await.unwrap();
    assert!(got.iter().any(|m| m.kind == "micron"), "the shipped MICRON model is active");
    app
}

/// `pid`'s record: four encounters with diagnoses, procedures and
/// medications the shipped model knows; references are relative.
#[allow(clippy::type_complexity)]
fn record(pid: &str) -> Vec<Value> {
    let p = format!("Patient/{pid}");
    let visits: [(&str, &[&str], &[&str], &[&str]); 4] = [
        ("2026-01-05T09:00:00Z", &["8849", "8243"], &["7805"], &["S08C", "B18D"]),
        ("2026-03-02T09:00:00Z", &["8849", "V06", "4894"], &["9542"], &["S08C", "V19E"]),
        ("2026-05-11T09:00:00Z", &["759", "99400", "7521"], &[], &["S08C", "A10E", "D19H"]),
        ("2026-07-20T09:00:00Z", &["V7424", "7635", "5010", "8849"], &["7108"], &["P10A"]),
    ];
    let mut out = vec![patient(pid)];
    for (i, (start, dx, px, rx)) in visits.iter().enumerate() {
        let e = format!("{pid}-e{i}");
        out.push(encounter(&e, &p, start));
        let er = format!("Encounter/{e}");
        for (j, c) in dx.iter().enumerate() {
            out.push(coded("Condition", &format!("{e}-c{j}"), &er, ICD9, c));
        }
        for (j, c) in px.iter().enumerate() {
            out.push(coded("Procedure", &format!("{e}-x{j}"), &er, ICD9, c));
        }
        for (j, c) in rx.iter().enumerate() {
            out.push(coded("MedicationRequest", &format!("{e}-m{j}"), &er, ATC, c));
        }
    }
    out
}

/// The record as prefetch search bundles (absolute fullUrls).
fn prefetch_of(resources: &[Value]) -> Value {
    let search = |t: &str| {
        let entries: Vec<Value> = resources
            .iter()
            .filter(|r| r["resourceType"] == t)
            .map(|r| json!({"fullUrl": format!("https://ehr.example.org/fhir/{t}/{}", r["id"].as_str().unwrap()), "resource": r}))
            .collect();
        json!({"resourceType": "Bundle", "type": "searchset", "total": entries.len(), "entry": entries})
    };
    json!({
        "patient": resources[0],
        "encounters": search("Encounter"),
        "conditions": search("Condition"),
        "procedures": search("Procedure"),
        "medications": search("MedicationRequest"),
    })
}

fn hook_body(hook: &str, pid: &str, encounter: Option<&str>, prefetch: Option<Value>) -> Value {
    let mut b = json!({
        "hook": hook,
        "hookInstance": Uuid::new_v4().to_string(),
        "fhirServer": "https://ehr.example.org/fhir",
        "context": {"userId": "Practitioner/dr-1", "patientId": pid},
    });
    if let Some(e) = encounter {
        b["context"]["encounterId"] = json!(e);
    }
    if let Some(p) = prefetch {
        b["prefetch"] = p;
    }
    b
}

fn draft_orders(pid: &str, orders: &[(&str, &str)]) -> Value {
    let entries: Vec<Value> = orders
        .iter()
        .map(|(id, code)| {
            json!({"resource": {"resourceType": "MedicationRequest", "id": id, "status": "draft", "intent": "order",
                "subject": {"reference": format!("Patient/{pid}")},
                "medicationCodeableConcept": {"coding": [{"system": ATC, "code": code}]}}})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "collection", "entry": entries})
}

async fn call(app: &TestApp, service: &str, body: &Value, bearer: Option<&str>) -> Res {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(format!("/cds-services/{service}"))
        .header("content-type", "application/json");
    if let Some(b) = bearer {
        req = req.header("authorization", format!("Bearer {b}"));
    }
    app.send(req.body(Body::from(body.to_string())).unwrap()).await
}

fn detail_without_origin(card: &CardStrict) -> String {
    card.detail.clone().unwrap().replace("history from prefetch data", "").replace("history from stored data", "")
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[sqlx::test]
async fn discovery_lists_both_services_with_prefetch_templates(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let r = app.call(Method::GET, "/cds-services", None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let d: DiscoveryStrict = serde_json::from_value(r.body.clone()).unwrap_or_else(|e| panic!("{e}: {}", r.text));
    let by_id: BTreeMap<&str, &ServiceStrict> = d.services.iter().map(|s| (s.id.as_str(), s)).collect();
    assert_eq!(by_id.keys().copied().collect::<Vec<_>>(), [OS, PV]);
    assert_eq!(by_id[PV].hook, "patient-view");
    assert_eq!(by_id[OS].hook, "order-select");
    for s in &d.services {
        assert!(!s.description.is_empty() && s.title.is_some() && s.usage_requirements.is_some());
        let p = s.prefetch.as_ref().unwrap();
        assert_eq!(p["patient"], "Patient/{{context.patientId}}");
        for (k, q) in p {
            assert!(q.contains("{{context.patientId}}"), "{k}: {q}");
        }
        for k in ["encounters", "conditions", "procedures", "medications"] {
            assert!(p.contains_key(k), "{k}");
        }
    }
}

#[sqlx::test]
async fn patient_view_answers_from_stored_data_and_from_prefetch_alike(pool: PgPool) {
    let app = with_shipped_model(pool).await;
    let rec = record("p1");
    let r = import_json(&app, "?source=fhir", &bundle("transaction", rec.clone())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["codes"]["diagnoses"]["unmapped"], 0, "coded in the model's vocabulary");
    let before = (app.count("predictions").await, app.count("patient_states").await, app.count("visits").await);

    // Without prefetch: the stored history of the imported patient.
    let stored = valid_cards(&call(&app, PV, &hook_body("patient-view", "p1", None, None), Some(&app.clinical)).await);
    assert_eq!(stored.cards.len(), 1);
    let card = &stored.cards[0];
    assert_eq!(card.indicator, Indicator::Info, "no interaction pairs stored, no density model");
    assert!(card.source.label.contains("shipped-"), "the model version: {}", card.source.label);
    let detail = card.detail.as_deref().unwrap();
    assert!(detail.contains("history from stored data"), "{detail}");
    assert!(detail.contains("visit of 2026-07-20"), "the latest visit is the current one: {detail}");
    assert!(detail.contains("unknown (no density model is active)"), "{detail}");
    let adds = card.suggestions.as_deref().unwrap_or_default().iter().filter(|s| s.label.starts_with("Add ")).count();
    let add_rows = detail.lines().filter(|l| l.starts_with("| add |")).count();
    assert_eq!(adds, add_rows, "one create suggestion per added medication");
    for s in card.suggestions.as_deref().unwrap_or_default().iter().filter(|s| s.label.starts_with("Add ")) {
        let a = &s.actions.as_ref().unwrap()[0];
        assert_eq!(a.kind, ActionType::Create);
        let res = a.resource.as_ref().unwrap();
        assert_eq!(res["resourceType"], "MedicationRequest");
        assert_eq!(res["subject"]["reference"], "Patient/p1");
        assert_eq!(res["medicationCodeableConcept"]["coding"][0]["system"], ATC);
    }
    // The same record sent as prefetch (for a patient never imported)
    // gives the same suggestion.
    let pre = valid_cards(
        &call(&app, PV, &hook_body("patient-view", "p1", None, Some(prefetch_of(&rec))), Some(&app.clinical)).await,
    );
    let pcard = &pre.cards[0];
    assert!(pcard.detail.as_deref().unwrap().contains("history from prefetch data"));
    assert_eq!(pcard.summary, card.summary);
    assert_eq!(detail_without_origin(pcard), detail_without_origin(card));
    let rec2 = record("p2");
    let other = valid_cards(
        &call(&app, PV, &hook_body("patient-view", "p2", None, Some(prefetch_of(&rec2))), Some(&app.clinical)).await,
    );
    assert_eq!(detail_without_origin(&other.cards[0]), detail_without_origin(card));

    // The context's encounter is the current visit.
    let second =
        valid_cards(&call(&app, PV, &hook_body("patient-view", "p1", Some("p1-e1"), None), Some(&app.clinical)).await);
    assert!(second.cards[0].detail.as_deref().unwrap().contains("visit of 2026-03-02"));
    // Unknown patient, no prefetch: no card.
    let none =
        valid_cards(&call(&app, PV, &hook_body("patient-view", "nobody", None, None), Some(&app.clinical)).await);
    assert!(none.cards.is_empty());
    // Nothing was stored by any of this.
    assert_eq!((app.count("predictions").await, app.count("patient_states").await, app.count("visits").await), before);
}

#[sqlx::test]
async fn a_visit_with_no_code_the_model_knows_gets_no_suggestion(pool: PgPool) {
    let app = with_shipped_model(pool).await;
    // Synthea codes conditions in SNOMED CT: unknown to the shipped model.
    let file = crate::fhir::synthea_files().into_iter().find(|f| f.to_string_lossy().contains("Mitch")).unwrap();
    let r = crate::fhir::import(&app, "", "application/fhir+json", std::fs::read(&file).unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let pid = r.body["patients"][0]["resource"].as_str().unwrap().trim_start_matches("Patient/").to_string();
    let resp = valid_cards(&call(&app, PV, &hook_body("patient-view", &pid, None, None), Some(&app.clinical)).await);
    let card = &resp.cards[0];
    assert!(card.summary.starts_with("MICRON cannot assess this visit"), "{}", card.summary);
    assert_eq!(card.indicator, Indicator::Info);
    assert!(card.suggestions.is_none());
    assert!(card.detail.as_deref().unwrap().contains("code-maps"));
    // With a code the model knows in the current visit, it suggests again.
    let rec = record("p1");
    let r = valid_cards(
        &call(&app, PV, &hook_body("patient-view", "p1", None, Some(prefetch_of(&rec))), Some(&app.clinical)).await,
    );
    assert!(!r.cards[0].summary.contains("cannot assess"));
}

#[sqlx::test]
async fn interacting_pairs_make_the_card_a_warning(pool: PgPool) {
    let app = with_shipped_model(pool).await;
    let rec = record("p1");
    let body = hook_body("patient-view", "p1", None, Some(prefetch_of(&rec)));
    // The predicted set, from the same preview the hook runs.
    let history: Vec<medchange::serving::HistoryVisit> = [
        (vec!["8849", "8243"], vec!["7805"], vec!["S08C", "B18D"]),
        (vec!["8849", "V06", "4894"], vec!["9542"], vec!["S08C", "V19E"]),
        (vec!["759", "99400", "7521"], vec![], vec!["S08C", "A10E", "D19H"]),
        (vec!["V7424", "7635", "5010", "8849"], vec!["7108"], vec!["P10A"]),
    ]
    .into_iter()
    .map(|(d, p, m)| medchange::serving::HistoryVisit {
        occurred_at: None,
        diagnoses: d.into_iter().map(String::from).collect(),
        procedures: p.into_iter().map(String::from).collect(),
        medications: Some(m.into_iter().map(String::from).collect()),
    })
    .collect();
    let change = medchange::serving::predict_stateless(&app.state, &history, &Default::default()).await.unwrap();
    assert!(change.predicted.len() >= 2, "{:?}", change.predicted);
    let (a, b) = (&change.predicted[0], &change.predicted[1]);
    sqlx::query("INSERT INTO ddi_pairs (code_a, code_b, source) VALUES ($1, $2, 'test')")
        .bind(a.min(b))
        .bind(a.max(b))
        .execute(&app.pool)
        .await
        .unwrap();
    let r = valid_cards(&call(&app, PV, &body, Some(&app.clinical)).await);
    let card = &r.cards[0];
    assert_eq!(card.indicator, Indicator::Warning);
    assert!(card.summary.contains("interacting pair"), "{}", card.summary);
    assert!(card.detail.as_deref().unwrap().contains(&format!("{} + {}", a.min(b), a.max(b))));
}

#[sqlx::test]
async fn order_select_checks_the_draft_orders_with_and_without_prefetch(pool: PgPool) {
    let app = with_shipped_model(pool).await;
    let rec = record("p1");
    let r = import_json(&app, "", &bundle("transaction", rec.clone())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // Draft orders: a medication the model knows, and one it does not.
    let mut body = hook_body("order-select", "p1", Some("p1-e3"), None);
    body["context"]["selections"] = json!(["MedicationRequest/d1"]);
    body["context"]["draftOrders"] = draft_orders("p1", &[("d1", "S08C"), ("d2", "Z99Z")]);
    let r = valid_cards(&call(&app, OS, &body, Some(&app.clinical)).await);
    assert_eq!(r.cards.len(), 1);
    let card = &r.cards[0];
    let detail = card.detail.as_deref().unwrap();
    assert!(detail.contains("| MedicationRequest/d1 (selected) | S08C |"), "{detail}");
    assert!(detail.contains("| MedicationRequest/d2 | Z99Z | unknown to the model |"), "{detail}");
    assert!(detail.contains("history from stored data"));
    // The probability the card gives the selected order is the model's.
    let p = detail
        .lines()
        .find(|l| l.contains("MedicationRequest/d1"))
        .unwrap()
        .rsplit('|')
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    let p: f64 = p.parse().unwrap();
    if p < 0.2 {
        let del = card
            .suggestions
            .as_ref()
            .unwrap()
            .iter()
            .flat_map(|s| s.actions.iter().flatten())
            .find(|a| a.kind == ActionType::Delete);
        assert_eq!(del.unwrap().resource_id.as_deref(), Some("MedicationRequest/d1"));
        assert!(card.summary.contains("unlikely"));
    } else {
        assert!(card.summary.contains("fit the suggested set"), "{}", card.summary);
    }

    // With prefetch, for a patient that was never imported.
    let rec2 = record("p9");
    let mut body = hook_body("order-select", "p9", Some("p9-e3"), Some(prefetch_of(&rec2)));
    body["context"]["selections"] = json!(["MedicationRequest/d1"]);
    body["context"]["draftOrders"] = draft_orders("p9", &[("d1", "S08C"), ("d2", "Z99Z")]);
    let r2 = valid_cards(&call(&app, OS, &body, Some(&app.clinical)).await);
    assert_eq!(r2.cards[0].summary, card.summary);
    assert!(r2.cards[0].detail.as_deref().unwrap().contains("history from prefetch data"));

    // A draft visit: an encounter that only the prefetch's conditions name.
    let mut rec3 = record("p8");
    rec3.push(coded("Condition", "new-c", "Encounter/p8-now", ICD9, "8849"));
    let r3 = valid_cards(
        &call(
            &app,
            PV,
            &hook_body("patient-view", "p8", Some("p8-now"), Some(prefetch_of(&rec3))),
            Some(&app.clinical),
        )
        .await,
    );
    assert!(!r3.cards[0].detail.as_deref().unwrap().contains("visit of 2026-07-20"), "the draft visit is current");
}

#[sqlx::test]
async fn malformed_calls_are_refused(pool: PgPool) {
    let app = with_shipped_model(pool).await;
    let key = Some(app.clinical.clone());
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            PV,
            {
                let mut b = hook_body("patient-view", "p1", None, None);
                b["context"].as_object_mut().unwrap().remove("patientId");
                b
            },
            422,
            "/context/patientId",
        ),
        (
            PV,
            {
                let mut b = hook_body("patient-view", "p1", None, None);
                b["context"] = json!("p1");
                b
            },
            422,
            "/context",
        ),
        (PV, hook_body("order-select", "p1", None, None), 422, "/hook"),
        (
            PV,
            {
                let mut b = hook_body("patient-view", "p1", None, None);
                b["hookInstance"] = json!("not-a-uuid");
                b
            },
            422,
            "/hookInstance",
        ),
        (OS, hook_body("order-select", "p1", None, None), 422, "/context/draftOrders"),
        (
            OS,
            {
                let mut b = hook_body("order-select", "p1", None, None);
                b["context"]["selections"] = json!([]);
                b["context"]["draftOrders"] = json!({"resourceType": "Patient"});
                b
            },
            422,
            "/context/draftOrders/resourceType",
        ),
        (
            PV,
            hook_body(
                "patient-view",
                "p1",
                None,
                Some(json!({"encounters": {"resourceType": "Bundle", "entry": [{"x": 1}]}})),
            ),
            422,
            "/prefetch/encounters/entry/0/resource",
        ),
        (
            PV,
            {
                let mut b = hook_body("patient-view", "p1", None, None);
                b.as_object_mut().unwrap().remove("hook");
                b
            },
            422,
            "",
        ), // serde names the missing field in the detail
    ];
    for (service, body, status, pointer) in cases {
        let r = call(&app, service, &body, key.as_deref()).await;
        r.assert_problem(status, "/problems/validation");
        assert!(r.pointers().iter().any(|p| p == pointer), "{pointer}: {}", r.text);
    }
    let r = call(&app, "no-such-service", &hook_body("patient-view", "p1", None, None), key.as_deref()).await;
    r.assert_problem(404, "/problems/not-found");
    let r = app.raw(Method::POST, &format!("/cds-services/{PV}"), key.as_deref(), Some("application/json"), "{").await;
    r.assert_problem(400, "/problems/malformed-json");
}

// ---------------------------------------------------------------------------
// JWT authentication
// ---------------------------------------------------------------------------

struct Signer {
    kid: String,
    der: Vec<u8>,
    jwk: Value,
}

fn signer(kid: &str, seed: u8) -> Signer {
    let sk = p384::SecretKey::from_slice(&[seed; 48]).unwrap();
    let der = sk.to_pkcs8_der().unwrap().as_bytes().to_vec();
    let pt = sk.public_key().to_encoded_point(false);
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({"kty": "EC", "crv": "P-384", "x": b64(pt.x().unwrap()), "y": b64(pt.y().unwrap()),
        "kid": kid, "alg": "ES384", "use": "sig"});
    Signer { kid: kid.into(), der, jwk }
}

fn token(s: &Signer, kid: &str, claims: Value) -> String {
    let mut h = Header::new(Algorithm::ES384);
    h.kid = Some(kid.into());
    h.typ = Some("JWT".into());
    let _ = &s.kid;
    jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ec_der(&s.der)).unwrap()
}

fn claims(aud: &str, exp_in: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"iss": ISSUER, "aud": aud, "exp": now + exp_in, "iat": now, "jti": Uuid::new_v4().to_string(), "sub": "ehr-client"})
}

#[sqlx::test]
async fn jwts_from_the_configured_jwks_and_api_keys_are_accepted(pool: PgPool) {
    let mut app = with_shipped_model(pool).await;
    let good = signer("ehr-key-1", 7);
    let stranger = signer("ehr-key-1", 9); // same kid, another key
    let jwks = json!({"keys": [good.jwk.clone()]}).to_string();
    let auth = CdsAuth::with_jwks(&jwks, vec![ISSUER.into()], BASE, "fhir").unwrap();
    app.state = app.state.clone().with_cds(auth);
    app.router = build_app(app.state.clone());
    let rec = record("p1");
    let body = hook_body("patient-view", "p1", None, Some(prefetch_of(&rec)));
    let aud = format!("{BASE}/cds-services/{PV}");

    let ok = token(&good, "ehr-key-1", claims(&aud, 300));
    let r = valid_cards(&call(&app, PV, &body, Some(&ok)).await);
    assert_eq!(r.cards.len(), 1);
    // An array audience holding the endpoint is fine too.
    let mut c = claims(&aud, 300);
    c["aud"] = json!([aud.clone()]);
    valid_cards(&call(&app, PV, &body, Some(&token(&good, "ehr-key-1", c))).await);
    // API keys work alongside.
    valid_cards(&call(&app, PV, &body, Some(&app.clinical)).await);
    valid_cards(&call(&app, PV, &body, Some(&app.admin)).await);

    let now = chrono::Utc::now().timestamp();
    let refused: Vec<(&str, String, &str)> = vec![
        ("no credentials", String::new(), "missing"),
        ("replayed", ok.clone(), "already used"),
        ("wrong signature", token(&stranger, "ehr-key-1", claims(&aud, 300)), "signature"),
        ("unknown kid", token(&good, "ehr-key-2", claims(&aud, 300)), "key id"),
        ("wrong audience", token(&good, "ehr-key-1", claims(&format!("{BASE}/cds-services/{OS}"), 300)), "audience"),
        ("discovery audience", token(&good, "ehr-key-1", claims(&format!("{BASE}/cds-services"), 300)), "audience"),
        ("expired", token(&good, "ehr-key-1", claims(&aud, -600)), "expired"),
        ("too long-lived", token(&good, "ehr-key-1", claims(&aud, 86_400)), "too far"),
        (
            "other issuer",
            token(&good, "ehr-key-1", {
                let mut c = claims(&aud, 300);
                c["iss"] = json!("https://evil.example");
                c
            }),
            "issuer",
        ),
        (
            "no jti",
            token(&good, "ehr-key-1", json!({"iss": ISSUER, "aud": aud, "exp": now + 300, "iat": now})),
            "claim",
        ),
        ("garbage", "a.b.c".into(), "malformed"),
        ("unknown api key", "mck_not-a-key".into(), "unknown"),
    ];
    for (name, t, needle) in refused {
        let r = call(&app, PV, &body, (!t.is_empty()).then_some(t.as_str())).await;
        r.assert_problem(401, "/problems/unauthorized");
        assert!(r.body["detail"].as_str().unwrap().contains(needle), "{name}: {}", r.text);
        assert_eq!(r.headers.get("www-authenticate").unwrap(), "Bearer", "{name}");
    }
}

#[sqlx::test]
async fn without_a_jwks_jwts_are_refused_and_cors_is_open(pool: PgPool) {
    let app = with_shipped_model(pool).await;
    let s = signer("k", 5);
    let t = token(&s, "k", claims(&format!("{BASE}/cds-services/{PV}"), 300));
    let r = call(&app, PV, &hook_body("patient-view", "p1", None, None), Some(&t)).await;
    r.assert_problem(401, "/problems/unauthorized");
    assert!(r.text.contains("no CDS Hooks JWKS"), "{}", r.text);
    // A browser's preflight.
    let req = Request::builder()
        .method(Method::OPTIONS)
        .uri(format!("/cds-services/{PV}"))
        .header("origin", "https://ehr.example.org")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type")
        .body(Body::empty())
        .unwrap();
    let r = app.send(req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.headers.get("access-control-allow-origin").unwrap(), "*");
    let r = app.call_with(Method::GET, "/cds-services", None, None, &[("origin", "https://ehr.example.org")]).await;
    assert_eq!(r.headers.get("access-control-allow-origin").unwrap(), "*");
}

/// A 2048-bit RSA key made with `openssl genrsa` for this test only (it
/// signs nothing else): PKCS#1 DER, and its modulus for the JWK.
const RSA_PKCS1_DER_B64: &str = "MIIEogIBAAKCAQEAp4e4SdQCLd4nIdS1cmEJwrj5YR8tIx8KdDxG+4OLp1La7EIR3e9VX3EMuODWo1YTQaCuDK7wDBjLczeFEpcldmxr/Ccnl1XX49QioMNSco2iGMI1Z+xW4qj5KjGKUUwFtpa4eR8EcCPqH7Dl0x59Wq17gvnoIenWxwRzYAAwhkTfKujAVFdlwlrkMr2OEbSrddgF0/6BCBzo8NpJYEbV88fdcI+MFlv+RvA4J/OVle5l1CsAsj3kDgrCX6cEBkhodYGkFw/WjC5R8t65pm9P6tSU3ozVbXVBqgaR5ibG04fUEK/p/kFE8ZFnoUVGh07ZPU6LOqafZpEA2mO6LSpb0wIDAQABAoIBAALyKkBXb9e03UGFQ5gBiGO9iIUbXQS4pMtOd5n3UHB7B59kZLQJ8dJhm9839PHXr2xVywDX3x/ecYc2eyrMhZ88YNm91L6ev9Lod5/c+heDX9wetURgyjnmlP6l1pd/YrwckJ1wo/g6MI/GGlnXKaNfA2EA6HSJGl42cdK4kbAY8xpdOYMdysj5IxM2kign+hWeDs86naWjIazmyQsl6tFRQbQsMIWJtJKvLZfDkKPQnP7DOjU/S9WN4Dqb+K1LvQMg2VKICdRYhVxOAUVBdgnJ3QcXAWNXZQAjAOrzQtU6ZVmBI6bZY4K8Ph3B4oMJjtWfsYWC28PqgfqPuCBxdyECgYEA1R7eqXKAgbYbhTJXzfSzjFVvIN5yk3HO79KIK9GmIxy2RwuBOmaadn4MPvaTU5xO9JY8YhWKUrK/IYZ6txHKi4GUQ1QbcKrrfxBsz4RnYPJDPEClp3e6xlofKlZS1jHqAfyiwijn4+1oaYtCc8Z6l6RcY5fJKOBU0WMH20vVxB0CgYEAyTyjo0uh2MVg7Xxto/Zr8MP4JtIVQruMnsaMbRjH2gHmXWhjEgTCWE8dxB142Y+CPI+6RqOsUWPNDwTdYOmjXERF1harW7lyCAOPk+kmTQcA+TtdpRiaUcDY2tYVAAXZE6fJd84bvhatS6LlC+izEB6OCabUGLWc6Yb5uxrUvK8CgYAC/ePyTQEw0PWh8Qr6gSzkE27z7yt8lmRpSXNP6imC5KxKYwb1YutYLnzNhXib+92/4TwHxHWko427Ur/2QfGt86u5Jj0cX8nehsSARUOOQNhgyCeLKksc7bbySTPwfdLjJEDEqP5YXMTSdnoAVhDygAQsAb15LW0DY3iAw5fEoQKBgE6k0B6lFB8vI+4rzn1hdFWngHdLatuliBMU7RRFtvTQAUNH5E/KZFk2sh9OlUgQ+YjJcrbgiBtWsXDJKesR47HPTKuaOGWkV5giLB5V443+yracKMC4mLaScy0ytQpJPsibrfSQK+9h1V/VzUWWL0SBbGkBNapib2wkP7yLg9ApAoGAayEf9NPsLrHoo7TqWWZOUE1ZG9zLEvk2yekK4jpsvtx8DnvklLinNjAYp/WxzZbZjhb6qyU8Q2QhGDewxOb72LkLAox3VeI/FLk2Jl2dc7pLjErH+LyMREHiGOokDWu6ayXfUhBNKzH8ZwnbMens7vnNb1GU72xDAlSOwW056PI=";
const RSA_N: &str = "p4e4SdQCLd4nIdS1cmEJwrj5YR8tIx8KdDxG-4OLp1La7EIR3e9VX3EMuODWo1YTQaCuDK7wDBjLczeFEpcldmxr_Ccnl1XX49QioMNSco2iGMI1Z-xW4qj5KjGKUUwFtpa4eR8EcCPqH7Dl0x59Wq17gvnoIenWxwRzYAAwhkTfKujAVFdlwlrkMr2OEbSrddgF0_6BCBzo8NpJYEbV88fdcI-MFlv-RvA4J_OVle5l1CsAsj3kDgrCX6cEBkhodYGkFw_WjC5R8t65pm9P6tSU3ozVbXVBqgaR5ibG04fUEK_p_kFE8ZFnoUVGh07ZPU6LOqafZpEA2mO6LSpb0w";

#[sqlx::test]
async fn rs384_jwts_are_accepted_too(pool: PgPool) {
    let mut app = with_shipped_model(pool).await;
    let der = base64::engine::general_purpose::STANDARD.decode(RSA_PKCS1_DER_B64).unwrap();
    let jwk = json!({"kty": "RSA", "n": RSA_N, "e": "AQAB", "kid": "rsa-1", "alg": "RS384", "use": "sig"});
    let ec = signer("ec-1", 11);
    let jwks = json!({"keys": [jwk, ec.jwk]}).to_string();
    let auth = CdsAuth::with_jwks(&jwks, vec![ISSUER.into()], BASE, "fhir").unwrap();
    app.state = app.state.clone().with_cds(auth);
    app.router = build_app(app.state.clone());
    let aud = format!("{BASE}/cds-services/{OS}");
    let rsa = |kid: &str, alg: Algorithm| {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, &claims(&aud, 300), &EncodingKey::from_rsa_der(&der)).unwrap()
    };
    let mut body = hook_body("order-select", "p1", None, Some(prefetch_of(&record("p1"))));
    body["context"]["selections"] = json!([]);
    body["context"]["draftOrders"] = draft_orders("p1", &[]);
    valid_cards(&call(&app, OS, &body, Some(&rsa("rsa-1", Algorithm::RS384))).await);
    // Algorithms the specification does not name, and a key used with
    // another algorithm than its own, are refused.
    let r = call(&app, OS, &body, Some(&rsa("rsa-1", Algorithm::RS256))).await;
    r.assert_problem(401, "/problems/unauthorized");
    assert!(r.text.contains("algorithm"), "{}", r.text);
    let r = call(&app, OS, &body, Some(&rsa("ec-1", Algorithm::RS384))).await;
    r.assert_problem(401, "/problems/unauthorized");
}

#[test]
fn a_jwks_needs_issuers_a_base_url_and_kids() {
    let s = signer("k", 3);
    let jwks = json!({"keys": [s.jwk]}).to_string();
    assert!(CdsAuth::with_jwks(&jwks, vec![], BASE, "fhir").is_err());
    assert!(CdsAuth::with_jwks(&jwks, vec![ISSUER.into()], "cds.example.org", "fhir").is_err());
    assert!(CdsAuth::with_jwks("{\"keys\": []}", vec![ISSUER.into()], BASE, "fhir").is_err());
    let mut nokid = s.jwk.clone();
    nokid.as_object_mut().unwrap().remove("kid");
    assert!(CdsAuth::with_jwks(&json!({"keys": [nokid]}).to_string(), vec![ISSUER.into()], BASE, "fhir").is_err());
    let a = CdsAuth::with_jwks(&jwks, vec![ISSUER.into()], &format!("{BASE}/"), "fhir").unwrap();
    assert_eq!(a.audience(PV).unwrap(), format!("{BASE}/cds-services/{PV}"));
    assert!(!format!("{a:?}").contains("\"x\""), "keys are not dumped");
}
