//! Serving medication-change predictions from stored patient state: the
//! incremental step equals a replay, the previous-set rule, rebuilds,
//! previews and batches that store nothing, all-or-nothing writes,
//! concurrency, hot swaps, the audit trail and the error answers.
use std::{collections::BTreeMap, sync::Arc};

use axum::http::{Method, StatusCode};
use medchange::{
    ml::{
        backend::Device,
        data::{UnknownCodes, Vocabularies, Vocabulary},
        micron::{MicronArtifact, MicronConfig, MicronState, MicronWeights},
    },
    registry::hash_dir,
    serving::{self, VisitCodes},
    store,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::TestApp;

const N_DIAG: usize = 30;
const N_PROC: usize = 12;
const N_MED: usize = 20;

fn vocab() -> Vocabularies {
    let v = |p: &str, n: usize| Vocabulary::from((0..n).map(|i| format!("{p}{i}")).collect::<Vec<_>>());
    Vocabularies { diag: v("D", N_DIAG), proc: v("X", N_PROC), med: v("M", N_MED) }
}

/// A random MICRON model with spread-out probabilities (so the thresholds
/// add and remove medications), installed as a registry version; activated
/// when `activate`.
pub async fn install_micron(app: &TestApp, seed: u64, activate: bool) -> (Uuid, String) {
    let mut rng = StdRng::seed_from_u64(seed);
    let d = 8;
    let mut u = |n: usize, s: f32| (0..n).map(|_| rng.random_range(-s..s)).collect::<Vec<f32>>();
    let weights = MicronWeights {
        dim: d,
        n_diag: N_DIAG,
        n_proc: N_PROC,
        n_med: N_MED,
        diag_emb: u(N_DIAG * d, 1.0),
        proc_emb: u(N_PROC * d, 1.0),
        wh: u(2 * d * d, 0.6),
        bh: u(d, 0.3),
        w1: u(d * 4 * d, 0.8),
        b1: u(4 * d, 0.2),
        w2: u(4 * d * N_MED, 1.5),
        b2: u(N_MED, 1.0),
    };
    let config = MicronConfig::new(N_DIAG, N_PROC, N_MED).with_dim(d);
    let art = MicronArtifact { config: config.clone(), vocab: vocab(), weights };
    let id = Uuid::now_v7();
    let version = format!("test-{seed}-{}", &id.simple().to_string()[24..]);
    let rel = format!("micron/{version}");
    let dir = app.models_dir.join(&rel);
    art.save(&dir, &Device::flex()).unwrap();
    let files: BTreeMap<String, String> = hash_dir(&dir).unwrap();
    let new = store::models::NewModel {
        id,
        kind: "micron",
        version: &version,
        config: &serde_json::to_value(&config).unwrap(),
        metrics: &json!({}),
        val_score: None,
        vocab: &json!({}),
        artifact_path: &rel,
        files: &files,
        source: "import",
        job_id: None,
        data_snapshot: None,
        parent_id: None,
    };
    store::models::insert(&app.pool, &new).await.unwrap();
    if activate {
        app.state.registry.activate(id).await.unwrap();
    }
    (id, version)
}

/// A random visit; medications recorded with probability `p_recorded`.
fn random_visit(rng: &mut StdRng, p_recorded: f64) -> Value {
    let pick = |rng: &mut StdRng, p: &str, n: usize, k: usize| {
        (0..k).map(|_| format!("{p}{}", rng.random_range(0..n))).collect::<Vec<_>>()
    };
    let k = rng.random_range(1..5);
    let diagnoses = pick(rng, "D", N_DIAG, k);
    let k = rng.random_range(0..3);
    let procedures = pick(rng, "X", N_PROC, k);
    let k = rng.random_range(0..6);
    let medications = rng.random_bool(p_recorded).then(|| pick(rng, "M", N_MED, k));
    json!({"diagnoses": diagnoses, "procedures": procedures, "medications": medications})
}

fn codes(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect()
}

fn probs(v: &Value) -> BTreeMap<String, f64> {
    v["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["code"].as_str().unwrap().to_string(), c["probability"].as_f64().unwrap()))
        .collect()
}

async fn append(app: &TestApp, patient: &str, visit: &Value, query: &str) -> Value {
    let r = app.post(&format!("/v1/patients/{patient}/visits{query}"), visit.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body
}

async fn state_of(app: &TestApp, patient: &str, model: Uuid) -> Option<store::predictions::StateRow> {
    store::predictions::get_state(&app.pool, patient.parse().unwrap(), model).await.unwrap()
}

/// The state a full replay of the patient's stored visits gives.
async fn replayed_state(app: &TestApp, patient: &str) -> MicronState {
    let rows = store::visits::all(&app.pool, patient.parse().unwrap()).await.unwrap();
    let vocab = vocab();
    let (_, micron) = serving::served(&app.state).unwrap();
    let enc: Vec<_> =
        rows.iter().map(|r| serving::encode(&vocab, &VisitCodes::from(r), &mut UnknownCodes::default())).collect();
    serving::live_replay(&micron.predictor, &enc, serving::THRESHOLDS).0
}

fn assert_state_eq(stored: &store::predictions::StateRow, replay: &MicronState) {
    assert_eq!(stored.meds.iter().map(|&m| m as u32).collect::<Vec<_>>(), replay.meds, "medication sets");
    for (a, b) in stored.base.iter().zip(&replay.base) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "base {a} vs {b}");
    }
    for (a, b) in stored.h_last.iter().zip(&replay.h_last) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "h {a} vs {b}");
    }
}

#[sqlx::test]
async fn appending_visits_predicts_every_visit_after_the_first(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (model, version) = install_micron(&app, 1, true).await;
    let p = app.patient("PRED-1").await;

    let first = append(&app, &p, &json!({"diagnoses": ["D1", "D2"], "procedures": ["X1"], "medications": ["M1", "M2"]}), "").await;
    assert_eq!(first["seq"], 1);
    assert!(first["prediction"].is_null());
    assert!(first["prediction_note"].as_str().unwrap().contains("first visit"));
    assert_eq!(state_of(&app, &p, model).await.unwrap().visit_seq, 1, "the first visit seeds the state");

    let second =
        append(&app, &p, &json!({"diagnoses": ["D3", "D4", "NOT-A-CODE"], "procedures": ["X2", "X99"], "medications": ["M3"]}), "").await;
    let pred = &second["prediction"];
    assert_eq!(pred["model"]["id"], model.to_string());
    assert_eq!(pred["model"]["version"], version);
    assert_eq!(pred["visit_id"], second["id"]);
    assert_eq!(pred["visit_seq"], 2);
    assert_eq!(pred["state"], "incremental");
    assert_eq!(pred["state_rebuilt"], false);
    assert_eq!(pred["previous"], json!({"source": "recorded", "medications": ["M1", "M2"]}));
    assert_eq!(pred["unknown_codes"], json!({"diagnoses": ["NOT-A-CODE"], "procedures": ["X99"], "medications": []}));
    assert_eq!(pred["thresholds"], json!({"add": 0.8, "remove": 0.2}));
    // The sets partition as they should.
    let predicted = codes(&pred["predicted"]);
    let names = |k: &str| pred[k].as_array().unwrap().iter().map(|c| c["code"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let (added, removed, kept) = (names("added"), names("removed"), names("kept"));
    let mut union: Vec<String> = added.iter().chain(&kept).cloned().collect();
    union.sort();
    assert_eq!(union, predicted);
    for m in &removed {
        assert!(["M1", "M2"].contains(&m.as_str()) && !predicted.contains(m));
    }
    for m in &kept {
        assert!(["M1", "M2"].contains(&m.as_str()));
    }
    // Probabilities: descending, above the floor; thresholds respected.
    let list = pred["probabilities"].as_array().unwrap();
    let ps: Vec<f64> = list.iter().map(|c| c["probability"].as_f64().unwrap()).collect();
    assert!(ps.windows(2).all(|w| w[0] >= w[1]));
    assert!(ps.iter().all(|&x| x >= 0.01));
    let all = probs(pred);
    for a in pred["added"].as_array().unwrap() {
        assert!(a["probability"].as_f64().unwrap() >= 0.8 - 1e-6);
    }
    for m in &removed {
        assert!(all.get(m).copied().unwrap_or(0.0) < 0.2);
    }
    assert!(pred["timing"]["total_us"].as_u64().unwrap() >= pred["timing"]["model_us"].as_u64().unwrap());
    assert!(pred["density"].is_null());
    // All probabilities on request.
    let third = append(&app, &p, &json!({"diagnoses": ["D5"]}), "?probabilities=all").await;
    assert_eq!(third["prediction"]["probabilities"].as_array().unwrap().len(), N_MED);
    assert_eq!(third["prediction"]["probability_floor"], 0.0);
    // Stored: state at the latest visit, one audit row per prediction.
    assert_eq!(state_of(&app, &p, model).await.unwrap().visit_seq, 3);
    assert_eq!(app.count("predictions").await, 2);
    // Without a prediction when asked.
    let fourth = append(&app, &p, &json!({"diagnoses": ["D6"]}), "?predict=false").await;
    assert!(fourth["prediction"].is_null());
    assert_eq!(app.count("predictions").await, 2);
}

#[sqlx::test]
async fn interacting_pairs_in_the_predicted_set_are_flagged(pool: PgPool) {
    let app = TestApp::new(pool).await;
    install_micron(&app, 2, true).await;
    let p = app.patient("DDI").await;
    append(&app, &p, &json!({"diagnoses": ["D1"], "medications": ["M1", "M2", "M3", "M4", "M5"]}), "").await;
    let draft = json!({"diagnoses": ["D2", "D3"], "procedures": ["X1"]});
    let preview = app.post(&format!("/v1/patients/{p}/predictions/preview"), draft.clone()).await;
    assert_eq!(preview.status, StatusCode::OK, "{}", preview.text);
    let predicted = codes(&preview.body["predicted"]);
    assert!(predicted.len() >= 2, "the model keeps at least two: {predicted:?}");
    assert_eq!(preview.body["interaction_warning"], false);
    let (a, b) = (predicted[0].clone(), predicted[1].clone());
    sqlx::query("INSERT INTO ddi_pairs (code_a, code_b, source) VALUES ($1, $2, 'test'), ('M98', 'M99', 'test')")
        .bind(&a)
        .bind(&b)
        .execute(&app.pool)
        .await
        .unwrap();
    let r = append(&app, &p, &draft, "").await;
    assert_eq!(r["prediction"]["interactions"], json!([{"a": a, "b": b}]));
    assert_eq!(r["prediction"]["interaction_warning"], true);
}

#[sqlx::test]
async fn incremental_predictions_equal_replays_for_random_histories(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (model, _) = install_micron(&app, 3, true).await;
    let mut rng = StdRng::seed_from_u64(99);
    let mut changed = 0;
    for n in 0..12 {
        let p = app.patient(&format!("RAND-{n}")).await;
        let len = rng.random_range(2..9);
        let visits: Vec<Value> = (0..len).map(|_| random_visit(&mut rng, 0.6)).collect();
        let mut live = vec![];
        for (t, v) in visits.iter().enumerate() {
            let r = append(&app, &p, v, "").await;
            if t == 0 {
                continue;
            }
            assert_eq!(r["prediction"]["state"], "incremental", "visit {t} of {n}");
            live.push(r["prediction"].clone());
        }
        // The same history replayed from scratch, statelessly.
        let batch = app.post("/v1/predictions/batch", json!({"patients": [{"id": "x", "visits": visits}]})).await;
        assert_eq!(batch.status, StatusCode::OK, "{}", batch.text);
        let replayed = batch.body["results"][0]["predictions"].as_array().unwrap().clone();
        assert_eq!(replayed.len(), live.len());
        // And replayed on the server from the stored visits.
        let forced = app.post(&format!("/v1/patients/{p}/predictions?replay=true"), json!(null)).await;
        assert_eq!(forced.status, StatusCode::CREATED, "{}", forced.text);
        assert_eq!(forced.body["state"], "replayed");
        for (t, (a, b)) in live.iter().zip(&replayed).enumerate() {
            assert_eq!(a["predicted"], b["predicted"], "patient {n} visit {}", t + 2);
            assert_eq!(a["previous"], b["previous"], "patient {n} visit {}", t + 2);
            assert_eq!(a["added"].as_array().unwrap().len(), b["added"].as_array().unwrap().len());
            let (pa, pb) = (probs(a), probs(b));
            for (code, x) in &pa {
                let y = pb.get(code).copied().unwrap_or(0.0);
                assert!((x - y).abs() < 1e-5, "{code}: {x} vs {y}");
            }
            if !a["added"].as_array().unwrap().is_empty() || !a["removed"].as_array().unwrap().is_empty() {
                changed += 1;
            }
        }
        let last = live.last().unwrap();
        assert_eq!(forced.body["predicted"], last["predicted"]);
        assert_state_eq(&state_of(&app, &p, model).await.unwrap(), &replayed_state(&app, &p).await);
    }
    assert!(changed > 5, "the model changes medication sets ({changed} visits): the comparison is not vacuous");
}

#[sqlx::test]
async fn the_previous_set_is_the_recorded_one_else_the_previous_prediction(pool: PgPool) {
    let app = TestApp::new(pool).await;
    install_micron(&app, 4, true).await;
    let p = app.patient("PREV").await;
    append(&app, &p, &json!({"diagnoses": ["D1"], "medications": ["M7", "M3", "UNKNOWN-MED"]}), "").await;
    let v2 = append(&app, &p, &json!({"diagnoses": ["D2"], "medications": null}), "").await;
    let pred2 = &v2["prediction"];
    assert_eq!(pred2["previous"], json!({"source": "recorded", "medications": ["M3", "M7"]}));
    assert_eq!(pred2["unknown_codes"]["medications"], json!(["UNKNOWN-MED"]));
    // Visit 2's medications are unknown: visit 3 changes visit 2's prediction.
    let v3 = append(&app, &p, &json!({"diagnoses": ["D3"], "medications": ["M0"]}), "").await;
    assert_eq!(v3["prediction"]["previous"]["source"], "predicted");
    assert_eq!(v3["prediction"]["previous"]["medications"], pred2["predicted"]);
    // Visit 3's are recorded (and differ from its prediction): visit 4 starts from them.
    let v4 = append(&app, &p, &json!({"diagnoses": ["D4"]}), "").await;
    assert_eq!(v4["prediction"]["previous"], json!({"source": "recorded", "medications": ["M0"]}));
    // A first visit with unknown medications leaves no previous set.
    let q = app.patient("PREV-NONE").await;
    append(&app, &q, &json!({"diagnoses": ["D1"]}), "").await;
    let w2 = append(&app, &q, &json!({"diagnoses": ["D2"]}), "").await;
    assert_eq!(w2["prediction"]["previous"], json!({"source": "none", "medications": []}));
    assert!(w2["prediction"]["removed"].as_array().unwrap().is_empty());
    // The audit rows say the same.
    let sources: Vec<String> =
        sqlx::query_scalar("SELECT previous_source FROM predictions WHERE patient_id = $1::uuid ORDER BY id")
            .bind(&p)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(sources, ["recorded", "predicted", "recorded"]);
}

#[sqlx::test]
async fn a_missing_state_is_rebuilt_once_per_model_version(pool: PgPool) {
    let app = TestApp::new(pool).await;
    // History stored before any model existed (as an import does).
    app.seed_visits(1, 4).await;
    let p: String = sqlx::query_scalar("SELECT id::text FROM patients").fetch_one(&app.pool).await.unwrap();
    let (m1, _) = install_micron(&app, 5, true).await;
    let r = app.post(&format!("/v1/patients/{p}/predictions"), json!(null)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["state"], "rebuilt");
    assert_eq!(r.body["state_rebuilt"], true);
    assert_eq!(r.body["visit_seq"], 4);
    // Asking again returns the stored answer.
    let again = app.post(&format!("/v1/patients/{p}/predictions"), json!(null)).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["prediction_id"], r.body["prediction_id"]);
    // The next visit is one step.
    let next = append(&app, &p, &json!({"diagnoses": ["D1"]}), "").await;
    assert_eq!(next["prediction"]["state"], "incremental");
    assert_state_eq(&state_of(&app, &p, m1).await.unwrap(), &replayed_state(&app, &p).await);

    // A newly activated version has no state yet: rebuilt, kept beside the first.
    let (m2, v2) = install_micron(&app, 6, true).await;
    let r = append(&app, &p, &json!({"diagnoses": ["D2"]}), "").await;
    assert_eq!(r["prediction"]["model"]["version"], v2);
    assert_eq!(r["prediction"]["state"], "rebuilt");
    let r = append(&app, &p, &json!({"diagnoses": ["D3"]}), "").await;
    assert_eq!(r["prediction"]["state"], "incremental");
    assert_eq!(state_of(&app, &p, m1).await.unwrap().visit_seq, 5, "the old version's state stays where it was");
    assert_eq!(state_of(&app, &p, m2).await.unwrap().visit_seq, 7);
    assert_state_eq(&state_of(&app, &p, m2).await.unwrap(), &replayed_state(&app, &p).await);

    // A back-dated visit invalidates the order: the history is replayed.
    let r = append(&app, &p, &json!({"occurred_at": "2023-11-15T00:00:00Z", "diagnoses": ["D4"]}), "").await;
    assert_eq!(r["seq"], 2);
    assert_eq!(r["prediction"]["state"], "rebuilt");
    assert_eq!(r["prediction"]["visit_seq"], 2);
    let s = state_of(&app, &p, m2).await.unwrap();
    assert_eq!(s.visit_seq, 8, "the state moves to the latest visit");
    assert_state_eq(&s, &replayed_state(&app, &p).await);
}

#[sqlx::test]
async fn previews_and_batches_store_nothing(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (model, _) = install_micron(&app, 7, true).await;
    let p = app.patient("PREVIEW").await;
    append(&app, &p, &json!({"diagnoses": ["D1", "D2"], "medications": ["M1", "M4"]}), "").await;
    append(&app, &p, &json!({"diagnoses": ["D3"], "medications": ["M2"]}), "").await;
    let tables = ["visits", "predictions", "patient_states", "idempotency_keys"];
    let mut before = vec![];
    for t in tables {
        before.push(app.count(t).await);
    }
    let state_before = state_of(&app, &p, model).await.unwrap();
    let draft = json!({"diagnoses": ["D5", "D6"], "procedures": ["X3"]});
    let preview = app.post(&format!("/v1/patients/{p}/predictions/preview"), draft.clone()).await;
    assert_eq!(preview.status, StatusCode::OK, "{}", preview.text);
    assert_eq!(preview.body["state"], "incremental");
    assert!(preview.body.get("prediction_id").is_none());
    let batch = app
        .post("/v1/predictions/batch", json!({"patients": [{"visits": [{"diagnoses": ["D1"]}, {"diagnoses": ["D2"]}]}]}))
        .await;
    assert_eq!(batch.status, StatusCode::OK);
    assert_eq!(batch.body["results"][0]["predictions"][0]["state"], "stateless");
    assert_eq!(batch.body["results"][0]["predictions"][0]["visit_seq"], 2);
    for (t, n) in tables.iter().zip(&before) {
        assert_eq!(app.count(t).await, *n, "{t}");
    }
    assert_eq!(state_of(&app, &p, model).await.unwrap().base, state_before.base);
    // The preview is what appending the draft then gives.
    let stored = append(&app, &p, &draft, "").await;
    assert_eq!(stored["prediction"]["predicted"], preview.body["predicted"]);
    assert_eq!(stored["prediction"]["probabilities"], preview.body["probabilities"]);
    // A patient without visits: the draft is predicted from the empty history.
    let q = app.patient("EMPTY").await;
    let r = app.post(&format!("/v1/patients/{q}/predictions/preview"), draft).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["previous"]["source"], "none");
}

#[sqlx::test]
async fn a_failure_before_commit_leaves_no_visit_state_or_prediction(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (model, _) = install_micron(&app, 8, true).await;
    let p = app.patient("CRASH").await;
    append(&app, &p, &json!({"diagnoses": ["D1"], "medications": ["M1"]}), "").await;
    append(&app, &p, &json!({"diagnoses": ["D2"]}), "").await;
    let state_before = state_of(&app, &p, model).await.unwrap();
    // The last write of the transaction fails (as a crash before commit would).
    sqlx::raw_sql(
        "CREATE FUNCTION fail_prediction() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'simulated failure before commit'; END $$;
         CREATE TRIGGER fail_prediction BEFORE INSERT ON predictions FOR EACH ROW EXECUTE FUNCTION fail_prediction();",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let counts = (app.count("visits").await, app.count("predictions").await, app.count("patient_states").await);
    let r = app
        .call_with(Method::POST, &format!("/v1/patients/{p}/visits"), Some(&app.clinical), Some(json!({"diagnoses": ["D3"]})), &[("idempotency-key", "crash-1")])
        .await;
    r.assert_problem(500, "/problems/internal");
    assert!(!r.text.contains("simulated"), "internal details stay out of answers");
    assert_eq!((app.count("visits").await, app.count("predictions").await, app.count("patient_states").await), counts);
    assert_eq!(app.count("idempotency_keys").await, 0);
    let s = state_of(&app, &p, model).await.unwrap();
    assert_eq!((s.visit_id, s.visit_seq, s.base.clone()), (state_before.visit_id, state_before.visit_seq, state_before.base));
    assert_eq!(app.get(&format!("/v1/patients/{p}")).await.body["visit_count"], 2);
    // Once the fault is gone the retry succeeds and continues incrementally.
    sqlx::query("DROP TRIGGER fail_prediction ON predictions").execute(&app.pool).await.unwrap();
    let r = app
        .call_with(Method::POST, &format!("/v1/patients/{p}/visits"), Some(&app.clinical), Some(json!({"diagnoses": ["D3"]})), &[("idempotency-key", "crash-1")])
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["prediction"]["state"], "incremental");
}

#[sqlx::test]
async fn concurrent_appends_lose_no_update(pool: PgPool) {
    let app = Arc::new(TestApp::new(pool).await);
    let (model, _) = install_micron(&app, 9, true).await;
    // 100 appends to one patient at once.
    let p = app.patient("HOT").await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let (app, p) = (app.clone(), p.clone());
        tasks.spawn(async move {
            let meds = if i % 3 == 0 { json!(null) } else { json!([format!("M{}", i % N_MED)]) };
            let v = json!({"diagnoses": [format!("D{}", i % N_DIAG)], "procedures": [format!("X{}", i % N_PROC)], "medications": meds});
            append(&app, &p, &v, "").await
        });
    }
    let answers = tasks.join_all().await;
    assert_eq!(answers.iter().filter(|a| a["prediction"].is_object()).count(), 99);
    assert_eq!(app.count("predictions").await, 99);
    let s = state_of(&app, &p, model).await.unwrap();
    assert_eq!(s.visit_seq, 100);
    assert_state_eq(&s, &replayed_state(&app, &p).await);
    // Each prediction was made from the state of the visit before it.
    let rebuilt: i64 = sqlx::query_scalar("SELECT count(*) FROM predictions WHERE state_rebuilt").fetch_one(&app.pool).await.unwrap();
    assert_eq!(rebuilt, 0, "appends at the end never need a replay");

    // 100 patients, one append each at once (second visits).
    let mut ids = vec![];
    for i in 0..100 {
        let q = app.patient(&format!("MANY-{i}")).await;
        append(&app, &q, &json!({"diagnoses": [format!("D{}", i % N_DIAG)], "medications": ["M1"]}), "").await;
        ids.push(q);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, q) in ids.iter().enumerate() {
        let (app, q) = (app.clone(), q.clone());
        tasks.spawn(async move { append(&app, &q, &json!({"diagnoses": [format!("D{}", (i * 7) % N_DIAG)]}), "").await });
    }
    for a in tasks.join_all().await {
        assert_eq!(a["prediction"]["state"], "incremental");
    }
    for q in &ids {
        let s = state_of(&app, q, model).await.unwrap();
        assert_eq!(s.visit_seq, 2);
        assert_state_eq(&s, &replayed_state(&app, q).await);
    }
}

#[sqlx::test]
async fn activating_a_version_under_load_drops_no_request(pool: PgPool) {
    let app = Arc::new(TestApp::new(pool).await);
    let (m1, v1) = install_micron(&app, 10, true).await;
    let (m2, v2) = install_micron(&app, 11, false).await;
    let mut patients = vec![];
    for i in 0..60 {
        let q = app.patient(&format!("SWAP-{i}")).await;
        append(&app, &q, &json!({"diagnoses": ["D1"], "medications": ["M2"]}), "").await;
        patients.push(q);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, q) in patients.iter().enumerate() {
        let (app, q) = (app.clone(), q.clone());
        tasks.spawn(async move {
            if i == 30 {
                app.state.registry.activate(m2).await.unwrap();
            }
            let r = append(&app, &q, &json!({"diagnoses": [format!("D{}", i % N_DIAG)]}), "").await;
            (q, r)
        });
    }
    let mut by_version = BTreeMap::<String, usize>::new();
    for (q, r) in tasks.join_all().await {
        let pred = &r["prediction"];
        let version = pred["model"]["version"].as_str().unwrap().to_string();
        assert!(version == v1 || version == v2, "{version}");
        // The stored prediction and state belong to the version that answered.
        let id: Uuid = pred["model"]["id"].as_str().unwrap().parse().unwrap();
        let stored: Uuid = sqlx::query_scalar("SELECT model_id FROM predictions WHERE id = $1")
            .bind(pred["prediction_id"].as_str().unwrap().parse::<Uuid>().unwrap())
            .fetch_one(&app.pool)
            .await
            .unwrap();
        assert_eq!(stored, id);
        assert_eq!(state_of(&app, &q, id).await.unwrap().visit_seq, 2);
        *by_version.entry(version).or_default() += 1;
    }
    assert_eq!(by_version.values().sum::<usize>(), 60);
    // After the swap every new request is answered by the new version.
    let r = append(&app, &patients[0], &json!({"diagnoses": ["D9"]}), "").await;
    assert_eq!(r["prediction"]["model"]["version"], v2);
    let _ = m1;
}

#[sqlx::test]
async fn the_audit_trail_lists_predictions_next_to_what_was_recorded(pool: PgPool) {
    let app = TestApp::new(pool).await;
    install_micron(&app, 12, true).await;
    let p = app.patient("AUDIT").await;
    append(&app, &p, &json!({"diagnoses": ["D1"], "medications": ["M1"]}), "").await;
    let v2 = append(&app, &p, &json!({"diagnoses": ["D2"], "medications": ["M2", "M3"]}), "").await;
    let v3 = append(&app, &p, &json!({"diagnoses": ["D3"], "medications": ["M4"]}), "").await;
    let r = app.get(&format!("/v1/patients/{p}/predictions?limit=1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let e = &r.body["items"][0];
    assert_eq!(e["visit"]["id"], v2["id"]);
    assert_eq!(e["visit"]["recorded_medications"], json!(["M2", "M3"]));
    assert_eq!(e["next_visit"]["id"], v3["id"]);
    assert_eq!(e["next_visit"]["recorded_medications"], json!(["M4"]));
    assert_eq!(e["prediction"], v2["prediction"]);
    let key_id: Uuid = sqlx::query_scalar("SELECT id FROM api_keys WHERE key_hash = $1")
        .bind(store::keys::hash(&app.clinical))
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(e["api_key_id"], key_id.to_string());
    let cursor = r.body["next_cursor"].as_str().unwrap();
    let r = app.get(&format!("/v1/patients/{p}/predictions?cursor={cursor}")).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    assert!(r.body["items"][0]["next_visit"].is_null());
    assert!(r.body.get("next_cursor").is_none());
    // Hourly counts for the dashboard.
    let s = app.admin_get("/v1/predictions/stats?hours=3").await;
    assert_eq!(s.status, StatusCode::OK, "{}", s.text);
    assert_eq!(s.body["total"], 2);
    assert_eq!(s.body["per_hour"].as_array().unwrap().len(), 3);
    app.admin_get("/v1/predictions/stats?hours=0").await.assert_problem(422, "/problems/validation");
}

#[sqlx::test]
async fn bad_requests_get_problem_answers(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let p = app.patient("ERR").await;
    // No active model: predictions are 503, visits are still stored.
    let r = app.post(&format!("/v1/patients/{p}/predictions/preview"), json!({"diagnoses": ["D1"]})).await;
    r.assert_problem(503, "/problems/unavailable");
    assert!(r.body["detail"].as_str().unwrap().contains("train_micron"));
    let v = append(&app, &p, &json!({"diagnoses": ["D1"]}), "").await;
    assert_eq!(v["prediction_note"], "no MICRON model version is active");
    app.post("/v1/predictions/batch", json!({"patients": [{"visits": [{"diagnoses": ["D1"]}]}]}))
        .await
        .assert_problem(503, "/problems/unavailable");

    install_micron(&app, 13, true).await;
    let unknown = Uuid::now_v7();
    app.post(&format!("/v1/patients/{unknown}/predictions"), json!(null)).await.assert_problem(404, "/problems/not-found");
    app.post(&format!("/v1/patients/{unknown}/predictions/preview"), json!({"diagnoses": []}))
        .await
        .assert_problem(404, "/problems/not-found");
    app.get(&format!("/v1/patients/{unknown}/predictions")).await.assert_problem(404, "/problems/not-found");
    // Fewer than two visits.
    let q = app.patient("ERR-EMPTY").await;
    let r = app.post(&format!("/v1/patients/{q}/predictions"), json!(null)).await;
    r.assert_problem(409, "/problems/conflict");
    assert!(r.body["detail"].as_str().unwrap().contains("0 visit"));
    // Codes failing validation, with pointers.
    let r = app.post(&format!("/v1/patients/{p}/predictions/preview"), json!({"diagnoses": ["D1", " "], "procedures": ["x\u{7}"]})).await;
    r.assert_problem(422, "/problems/validation");
    assert_eq!(r.pointers(), ["/diagnoses/1", "/procedures/0"]);
    let r = app
        .post("/v1/predictions/batch", json!({"patients": [{"visits": [{"diagnoses": ["D1"]}, {"diagnoses": [""]}]}, {"visits": []}]}))
        .await;
    r.assert_problem(422, "/problems/validation");
    assert_eq!(r.pointers(), ["/patients/0/visits/1/diagnoses/0", "/patients/1/visits"]);
    // Limits.
    let many: Vec<Value> = (0..1001).map(|_| json!({"visits": [{"diagnoses": ["D1"]}]})).collect();
    let r = app.post("/v1/predictions/batch", json!({"patients": many})).await;
    r.assert_problem(422, "/problems/validation");
    assert_eq!(r.pointers(), ["/patients"]);
    let huge = "D1,".repeat(1_000_000);
    let r = app.raw(Method::POST, "/v1/predictions/batch", Some(&app.clinical), Some("application/json"), huge).await;
    r.assert_problem(413, "/problems/payload-too-large");
    // Bad options.
    let r = app.post(&format!("/v1/patients/{p}/visits?replay=maybe"), json!({"diagnoses": ["D1"]})).await;
    r.assert_problem(422, "/problems/validation");
    assert_eq!(r.pointers(), ["query:replay"]);
    let r = app.post(&format!("/v1/patients/{p}/predictions/preview?probabilities=some"), json!({"diagnoses": ["D1"]})).await;
    assert_eq!(r.pointers(), ["query:probabilities"]);
    assert_eq!(app.count("visits").await, 1, "refused requests wrote nothing");
}
