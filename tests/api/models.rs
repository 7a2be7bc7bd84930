//! The registry's integrity guarantees: a tampered artifact is refused
//! loudly and the served version stays; shipped default models are
//! registered on first start.
use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::TestApp;

async fn train(app: &TestApp) -> (String, std::path::PathBuf) {
    let r = app
        .admin_post("/v1/jobs", Some(json!({"kind": "train_copy_previous"})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let done = app.worker("w").claim_and_run_one().await.unwrap().unwrap();
    assert_eq!(done.status, "succeeded", "{:?}", done.error);
    let id = done.model_id.unwrap().to_string();
    let m = app.admin_get(&format!("/v1/models/{id}")).await.body;
    (
        id,
        app.models_dir.join(m["artifact_path"].as_str().unwrap()),
    )
}

#[sqlx::test]
async fn a_tampered_artifact_is_refused_and_the_active_version_keeps_serving(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.seed_visits(15, 3).await;
    let (v1, _) = train(&app).await;
    let (v2, dir2) = train(&app).await;
    assert_eq!(
        app.admin_post(&format!("/v1/models/{v1}/activate"), None)
            .await
            .status,
        StatusCode::OK
    );

    // Someone edits v2's metrics on disk.
    let path = dir2.join("metrics.json");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text = text.replacen("\"jaccard\"", "\"jaccard\" ", 1);
    std::fs::write(&path, text).unwrap();

    let r = app
        .admin_post(&format!("/v1/models/{v2}/activate"), None)
        .await;
    r.assert_problem(409, "/problems/artifact-integrity");
    let detail = r.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("metrics.json")
            && detail.contains("sha256")
            && detail.contains("not loaded"),
        "{detail}"
    );
    // The previous version is still served, in the database and in memory.
    let served = app.admin_get("/v1/models/active").await.body;
    assert_eq!(served.as_array().unwrap().len(), 1);
    assert_eq!(served[0]["model_id"], v1.as_str());
    assert_eq!(
        app.admin_get(&format!("/v1/models/{v1}")).await.body["status"],
        "active"
    );
    assert_eq!(
        app.admin_get(&format!("/v1/models/{v2}")).await.body["status"],
        "ready"
    );

    // A missing file is refused too, and evaluation refuses to load it.
    std::fs::remove_file(dir2.join("vocab.json")).unwrap();
    let r = app
        .admin_post(&format!("/v1/models/{v2}/activate"), None)
        .await;
    r.assert_problem(409, "/problems/artifact-integrity");
    app.admin_post(
        "/v1/jobs",
        Some(json!({"kind": "evaluate", "params": {"model_id": v2}})),
    )
    .await;
    let done = app.worker("w").claim_and_run_one().await.unwrap().unwrap();
    assert_eq!(done.status, "failed");
    assert!(done.error.unwrap().contains("integrity check failed"));

    // Another replica (a fresh registry) loads only what verifies.
    let replica = medchange::registry::Registry::new(app.pool.clone(), app.models_dir.clone());
    replica.refresh().await.unwrap();
    assert_eq!(replica.active("copy_previous").unwrap().id.to_string(), v1);
}

#[sqlx::test]
async fn activation_of_unknown_or_failed_versions(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let ghost = uuid::Uuid::now_v7();
    app.admin_post(&format!("/v1/models/{ghost}/activate"), None)
        .await
        .assert_problem(404, "/problems/not-found");
    app.admin_post(&format!("/v1/models/{ghost}/retire"), None)
        .await
        .assert_problem(404, "/problems/not-found");
    app.admin_get(&format!("/v1/models/compare?a={ghost}&b=x"))
        .await
        .assert_problem(422, "/problems/validation");
    app.admin_get("/v1/models?kind=bogus")
        .await
        .assert_problem(422, "/problems/validation");
}

fn write(dir: &std::path::Path, name: &str, v: &Value) {
    std::fs::write(dir.join(name), serde_json::to_vec(v).unwrap()).unwrap();
}

#[sqlx::test]
async fn shipped_models_are_registered_and_served_on_first_start(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let shipped = app.models_dir.join("shipped");
    let src = shipped.join("copy_previous");
    std::fs::create_dir_all(&src).unwrap();
    write(
        &src,
        "config.json",
        &json!({"model": "copy_previous", "seed": 1203}),
    );
    write(
        &src,
        "vocab.json",
        &json!({"diag": ["D1"], "proc": ["X1"], "med": ["M1", "M2"]}),
    );
    write(&src, "metrics.json", &json!({"test": {"jaccard": 0.4}}));
    let sums: String = ["config.json", "vocab.json", "metrics.json"]
        .iter()
        .map(|n| {
            format!(
                "{}  {n}\n",
                medchange::registry::sha256_file(&src.join(n)).unwrap()
            )
        })
        .collect();
    std::fs::write(src.join("SHA256SUMS"), sums).unwrap();

    let registered = app.state.registry.register_shipped(&shipped).await.unwrap();
    assert_eq!(registered.len(), 1);
    assert_eq!(registered[0].status, "active");
    assert_eq!(registered[0].source, "shipped");
    assert_eq!(
        registered[0].vocab,
        json!({"diagnoses": 1, "procedures": 1, "medications": 2})
    );
    assert_eq!(
        app.state
            .registry
            .active("copy_previous")
            .unwrap()
            .vocab
            .as_ref()
            .unwrap()
            .med
            .len(),
        2
    );
    // Not again once the kind has versions.
    assert!(
        app.state
            .registry
            .register_shipped(&shipped)
            .await
            .unwrap()
            .is_empty()
    );
}

#[sqlx::test]
async fn a_shipped_folder_that_fails_its_sums_is_refused(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let shipped = app.models_dir.join("shipped");
    let src = shipped.join("copy_previous");
    std::fs::create_dir_all(&src).unwrap();
    write(&src, "config.json", &json!({"model": "copy_previous"}));
    std::fs::write(
        src.join("SHA256SUMS"),
        format!("{}  config.json\n", "0".repeat(64)),
    )
    .unwrap();
    let err = app
        .state
        .registry
        .register_shipped(&shipped)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
    assert_eq!(app.count("models").await, 0);
    assert!(app.state.registry.active("copy_previous").is_none());
}

/// The default model shipped in `models/shipped/` registers, activates and
/// loads as a working MICRON model that predicts medication changes.
#[sqlx::test]
async fn the_shipped_default_micron_model_serves(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let shipped = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/models/shipped"));
    let registered = app.state.registry.register_shipped(shipped).await.unwrap();
    let micron = registered
        .iter()
        .find(|m| m.kind == "micron")
        .expect("a shipped MICRON model");
    assert_eq!(micron.status, "active");
    let active = app.state.registry.active("micron").expect("served at once");
    let dir = app.models_dir.join(&micron.artifact_path);
    let device = medchange::ml::backend::BackendChoice::default().device();
    let art = medchange::ml::micron::MicronArtifact::load(&dir, &device).unwrap();
    assert_eq!(
        art.vocab.med.len(),
        active.vocab.as_ref().unwrap().med.len()
    );
    // A two-visit history with codes from its vocabulary: the recurrence runs.
    let (d, p, m) = (
        art.vocab.diag.codes(),
        art.vocab.proc.codes(),
        art.vocab.med.codes(),
    );
    let raw = medchange::ml::data::RawPatient {
        id: "x".into(),
        visits: (0..2)
            .map(|i| medchange::ml::data::RawVisit {
                diagnoses: d[i * 5..i * 5 + 5].to_vec(),
                procedures: p[i..i + 2].to_vec(),
                medications: Some(m[i * 3..i * 3 + 6].to_vec()),
            })
            .collect(),
    };
    let (patient, unknown) = art.vocab.encode_patient(&raw);
    assert!(unknown.is_empty());
    let pred = art.predictor().predict_patient(
        &patient.visits,
        medchange::ml::micron::Thresholds::default(),
    );
    assert_eq!(pred.visits.len(), 1);
    assert_eq!(pred.visits[0].probs.len(), m.len());
    assert!(pred.visits[0].probs.iter().all(|p| (0.0..=1.0).contains(p)));
}

#[sqlx::test]
async fn reference_weights_become_a_version_that_serves_them(pool: PgPool) {
    use medchange::{ml::micron::MicronArtifact, registry::ModelKind};
    let app = TestApp::new(pool).await;
    // A saved MICRON artifact's weights are a state dict in the reference's
    // names and PyTorch layout, and its vocab.json is the reference's voc.json.
    let shipped = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/shipped/micron"
    ));
    let device = medchange::ml::backend::BackendChoice::default().device();
    let imported = MicronArtifact::import_reference(
        &shipped.join("weights.safetensors"),
        &shipped.join("vocab.json"),
        &device,
    )
    .unwrap();
    let out = std::env::temp_dir().join(format!("medchange-import-{}", uuid::Uuid::new_v4()));
    imported.save(&out, &device).unwrap();
    let row = app
        .state
        .registry
        .register_folder(&out, ModelKind::Micron, "import")
        .await
        .unwrap();
    assert_eq!(row.status, "ready");
    assert!(row.version.starts_with("import-"), "{}", row.version);
    let r = app.admin_get(&format!("/v1/models/{}", row.id)).await;
    assert_eq!(r.body["source"], "import", "{}", r.body);
    assert!(
        r.body["files"]
            .as_object()
            .unwrap()
            .contains_key("weights.safetensors"),
        "{}",
        r.body
    );
    let r = app
        .admin_post(&format!("/v1/models/{}/activate", row.id), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let served = app
        .state
        .registry
        .active("micron")
        .expect("an active MICRON version");
    assert_eq!(served.id, row.id);
    let original = MicronArtifact::load(shipped, &device).unwrap();
    let micron = served.micron.as_ref().expect("MICRON weights loaded");
    assert_eq!(
        micron.artifact.weights, original.weights,
        "the served weights are the imported ones"
    );
    assert_eq!(micron.artifact.vocab.med, original.vocab.med);
    let _ = std::fs::remove_dir_all(&out);
}
