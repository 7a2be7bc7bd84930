//! The job queue end to end: creation and validation, the lifecycle up to
//! a registered and activated version, exclusive claiming, crash recovery,
//! cancellation, shutdown, and the live event stream. Workers are driven
//! synchronously with `claim_and_run_one`; nothing sleeps.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, mpsc},
};

use axum::{
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use http_body_util::BodyExt;
use medchange::{
    jobs::{JobContext, JobKind, JobKinds, NewVersion, Outcome, Progress},
    registry::ModelKind,
    store,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;
use uuid::Uuid;

use crate::helpers::{TestApp, test_jobs_args};

async fn create(app: &TestApp, body: Value) -> String {
    let r = app.admin_post("/v1/jobs", Some(body)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["status"], "queued");
    r.body["id"].as_str().unwrap().to_string()
}

async fn events(app: &TestApp, job: &str) -> Vec<Value> {
    let r = app.admin_get(&format!("/v1/jobs/{job}/events?limit=1000")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["items"].as_array().unwrap().clone()
}

fn sha256(path: &std::path::Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[sqlx::test]
async fn lifecycle_from_creation_to_an_active_version(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.seed_visits(30, 3).await;
    let job = create(&app, json!({"kind": "train_copy_previous", "params": {"seed": 7}})).await;
    let r = app.admin_get(&format!("/v1/jobs/{job}")).await;
    assert_eq!(r.body["params"], json!({"seed": 7}));
    assert_eq!(r.body["attempts"], 0);

    let worker = app.worker("w1");
    let done = worker.claim_and_run_one().await.unwrap().expect("a job was claimed");
    assert_eq!(done.id.to_string(), job);
    assert_eq!(done.status, "succeeded", "error: {:?}", done.error);
    assert!(worker.claim_and_run_one().await.unwrap().is_none(), "the queue is empty");

    let r = app.admin_get(&format!("/v1/jobs/{job}")).await;
    assert_eq!(r.body["status"], "succeeded");
    assert_eq!(r.body["attempts"], 1);
    assert_eq!(r.body["data_snapshot"]["visits"], 90, "the snapshot records the visits used");
    assert_eq!(r.body["data_snapshot"]["patients"], 30);
    assert!(r.body["lease_owner"].is_null());
    let model = r.body["model_id"].as_str().expect("a version was registered").to_string();

    // Events: numbered 1.. in order, from queued to succeeded, with progress.
    let evs = events(&app, &job).await;
    let ids: Vec<i64> = evs.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>());
    assert_eq!(evs[0]["data"]["status"], "queued");
    assert_eq!(evs[1]["data"]["status"], "running");
    assert_eq!(evs.last().unwrap()["data"]["status"], "succeeded");
    assert!(evs.iter().any(|e| e["kind"] == "step" && e["data"]["throughput"].as_f64().is_some()));
    let epoch = evs.iter().find(|e| e["kind"] == "epoch").expect("an epoch event");
    assert!(epoch["data"]["metrics"]["val"]["jaccard"].as_f64().is_some());

    // The version: artifacts on disk with matching checksums, lineage.
    let r = app.admin_get(&format!("/v1/models/{model}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["kind"], "copy_previous");
    assert_eq!(r.body["status"], "ready");
    assert_eq!(r.body["job_id"], job.as_str());
    assert_eq!(r.body["data_snapshot"]["visits"], 90);
    assert!(r.body["metrics"]["test"]["jaccard"].as_f64().is_some());
    assert!(r.body["vocab"]["medications"].as_u64().unwrap() > 0);
    let dir = app.models_dir.join(r.body["artifact_path"].as_str().unwrap());
    let files = r.body["files"].as_object().unwrap();
    let mut names: Vec<&str> = files.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["config.json", "metrics.json", "split.json", "vocab.json"]);
    for (name, sum) in files {
        assert_eq!(sha256(&dir.join(name)), sum.as_str().unwrap(), "{name}");
    }
    let split: Value = serde_json::from_slice(&std::fs::read(dir.join("split.json")).unwrap()).unwrap();
    assert_eq!(split["seed"], 7);
    assert_eq!(
        split["train"].as_array().unwrap().len()
            + split["val"].as_array().unwrap().len()
            + split["test"].as_array().unwrap().len(),
        30
    );
    assert!(!app.models_dir.join(".staging").join(format!("{job}-1")).exists(), "staging is cleaned up");

    // Activate: served at once.
    assert!(app.admin_get("/v1/models/active").await.body.as_array().unwrap().is_empty());
    let r = app.admin_post(&format!("/v1/models/{model}/activate"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "active");
    let served = app.admin_get("/v1/models/active").await.body;
    assert_eq!(served[0]["model_id"], model.as_str());
    assert_eq!(app.state.registry.active("copy_previous").unwrap().id.to_string(), model);

    // Evaluate it on its test split.
    let eval = create(&app, json!({"kind": "evaluate", "params": {"model_id": model}})).await;
    let done = worker.claim_and_run_one().await.unwrap().unwrap();
    assert_eq!(done.status, "succeeded", "{:?}", done.error);
    let r = app.admin_get(&format!("/v1/jobs/{eval}")).await;
    assert_eq!(r.body["params"]["split"], "test", "defaults are filled in");
    assert_eq!(
        r.body["result"]["metrics"],
        app.admin_get(&format!("/v1/models/{model}")).await.body["metrics"]["test"],
        "evaluation reproduces the training's test metrics"
    );

    // A second version replaces the first; compare, retire.
    create(&app, json!({"kind": "train_copy_previous"})).await;
    let second = worker.claim_and_run_one().await.unwrap().unwrap().model_id.unwrap().to_string();
    let r = app.admin_post(&format!("/v1/models/{second}/activate"), None).await;
    assert_eq!(r.body["status"], "active");
    assert_eq!(app.admin_get(&format!("/v1/models/{model}")).await.body["status"], "ready");
    let r = app.admin_get(&format!("/v1/models/compare?a={model}&b={second}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let jac = r.body["metrics"].as_array().unwrap().iter().find(|m| m["metric"] == "/val/jaccard").unwrap().clone();
    assert!(jac["a"].is_number() && jac["b"].is_number() && jac["diff"].is_number());
    app.admin_post(&format!("/v1/models/{second}/retire"), None).await.assert_problem(409, "/problems/conflict");
    let r = app.admin_post(&format!("/v1/models/{model}/retire"), None).await;
    assert_eq!(r.body["status"], "retired");
    let r = app.admin_get("/v1/models?kind=copy_previous&status=retired").await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    let r = app.admin_get("/v1/jobs?status=succeeded").await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 3);
}

#[sqlx::test]
async fn bad_jobs_are_refused_at_creation(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let cases = [
        (json!({"kind": "nope"}), "/kind"),
        (json!({"kind": "train_gru", "params": {"epochs": 0}}), "/params/epochs"),
        (json!({"kind": "train_gru", "params": {"recipe": "faithful"}}), "/params/recipe"),
        (json!({"kind": "train_micron", "params": {"epochs": 0}}), "/params/epochs"),
        (json!({"kind": "train_micron", "params": {"backend": "abacus"}}), "/params/backend"),
        (json!({"kind": "train_micron", "params": {"recipe": "fast"}}), "/params/recipe"),
        (json!({"kind": "train_copy_previous", "params": {"seed": 1u64 << 40}}), "/params/seed"),
        (json!({"kind": "train_copy_previous", "params": {"seed": "x"}}), "/params/seed"),
        (json!({"kind": "train_copy_previous", "params": {"epochs": 3}}), "/params/epochs"),
        (json!({"kind": "evaluate", "params": {"model_id": Uuid::now_v7()}}), "/params/model_id"),
        (json!({"kind": "evaluate", "params": {}}), "/params"),
        (json!({"kind": "train_copy_previous", "max_attempts": 0}), "/max_attempts"),
    ];
    for (body, pointer) in cases {
        let r = app.admin_post("/v1/jobs", Some(body.clone())).await;
        r.assert_problem(422, "/problems/validation");
        assert_eq!(r.pointers(), [pointer], "{body}: {}", r.text);
    }
    assert_eq!(app.count("jobs").await, 0, "nothing was queued");
    let kinds = app.admin_get("/v1/job-kinds").await.body;
    let names: Vec<(&str, bool)> = kinds
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["name"].as_str().unwrap(), k["available"].as_bool().unwrap()))
        .collect();
    assert!(names.contains(&("train_copy_previous", true))
            && names.contains(&("train_micron", true))
            && names.contains(&("train_gru", true)), "{names:?}");
}

#[sqlx::test]
async fn a_micron_training_job_registers_a_servable_version(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.seed_visits(40, 3).await;
    let job = create(&app, json!({"kind": "train_micron", "params": {"epochs": 3, "recipe": "minibatch"}})).await;
    let done = app.worker("w1").claim_and_run_one().await.unwrap().expect("claimed");
    assert_eq!(done.status, "succeeded", "error: {:?}", done.error);
    let evs = events(&app, &job).await;
    let epochs: Vec<&Value> = evs.iter().filter(|e| e["kind"] == "epoch").collect();
    assert_eq!(epochs.len(), 3, "one event per epoch");
    assert!(epochs[2]["data"]["metrics"]["val_jaccard"].as_f64().is_some(), "{:?}", epochs[2]);
    let r = app.admin_get(&format!("/v1/jobs/{job}")).await;
    let model = r.body["model_id"].as_str().expect("a version").to_string();
    let r = app.admin_get(&format!("/v1/models/{model}")).await;
    assert_eq!(r.body["kind"], "micron");
    let dir = app.models_dir.join(r.body["artifact_path"].as_str().unwrap());
    let device = medchange::ml::backend::BackendChoice::default().device();
    let art = medchange::ml::micron::MicronArtifact::load(&dir, &device).expect("the artifact loads as a MICRON model");
    assert_eq!(art.vocab.med.len() as u64, r.body["vocab"]["medications"].as_u64().unwrap());
    assert!(r.body["metrics"]["test"]["rows"][0][1]["jaccard"].as_f64().is_some(), "{}", r.body["metrics"]);
    let r = app.admin_post(&format!("/v1/models/{model}/activate"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // The evaluate job measures it on its recorded test split: the same
    // MICRON numbers as the training job's own test table.
    let eval = create(&app, json!({"kind": "evaluate", "params": {"model_id": model, "split": "test"}})).await;
    let done = app.worker("w1").claim_and_run_one().await.unwrap().expect("claimed");
    assert_eq!(done.status, "succeeded", "error: {:?}", done.error);
    let r = app.admin_get(&format!("/v1/jobs/{eval}")).await;
    let measured = &r.body["result"]["metrics"];
    let trained = app.admin_get(&format!("/v1/models/{model}")).await.body["metrics"]["test"]["rows"][0][1].clone();
    let (a, b) = (measured["jaccard"].as_f64().unwrap(), trained["jaccard"].as_f64().unwrap());
    assert!((a - b).abs() < 1e-9, "{measured} vs {trained}");
    assert_eq!(measured["visits"], trained["visits"], "{measured} vs {trained}");
}

#[sqlx::test]
async fn a_gru_training_job_registers_a_version_that_evaluates(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.seed_visits(40, 3).await;
    let job = create(&app, json!({"kind": "train_gru", "params": {"epochs": 2}})).await;
    let done = app.worker("w1").claim_and_run_one().await.unwrap().expect("claimed");
    assert_eq!(done.status, "succeeded", "error: {:?}", done.error);
    let evs = events(&app, &job).await;
    assert_eq!(evs.iter().filter(|e| e["kind"] == "epoch").count(), 2, "one event per epoch");
    assert!(evs.iter().any(|e| e["kind"] == "step"), "step events too");
    let r = app.admin_get(&format!("/v1/jobs/{job}")).await;
    let model = r.body["model_id"].as_str().expect("a version").to_string();
    let r = app.admin_get(&format!("/v1/models/{model}")).await;
    assert_eq!(r.body["kind"], "gru");
    assert!(r.body["val_score"].as_f64().is_some(), "{}", r.body);
    let files: Vec<&str> = r.body["files"].as_object().unwrap().keys().map(|k| k.as_str()).collect();
    for f in ["weights.bpk", "config.json", "vocab.json", "threshold.json", "metrics.json", "split.json"] {
        assert!(files.contains(&f), "{f} in {files:?}");
    }
    let dir = app.models_dir.join(r.body["artifact_path"].as_str().unwrap());
    let device = medchange::ml::backend::BackendChoice::default().device();
    medchange::ml::baselines::GruArtifact::load(&dir, &device).expect("the artifact loads as a GRU model");

    let eval = create(&app, json!({"kind": "evaluate", "params": {"model_id": model, "split": "val"}})).await;
    let done = app.worker("w1").claim_and_run_one().await.unwrap().expect("claimed");
    assert_eq!(done.status, "succeeded", "error: {:?}", done.error);
    let r = app.admin_get(&format!("/v1/jobs/{eval}")).await;
    assert_eq!(r.body["result"]["kind"], "gru");
    let j = r.body["result"]["metrics"]["jaccard"].as_f64().expect("a Jaccard");
    assert!((0.0..=1.0).contains(&j), "{}", r.body);
    let v = r.body["result"]["metrics"]["visits"].as_u64().unwrap_or(0);
    assert!(v > 0, "scored visits: {}", r.body);
}

/// Records every run of every job.
#[derive(Clone, Default)]
struct Counting(Arc<Mutex<HashMap<Uuid, usize>>>);

#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
struct NoParams {}

impl JobKind for Counting {
    type Params = NoParams;
    fn name(&self) -> &'static str {
        "count"
    }
    fn description(&self) -> &'static str {
        "counts its runs"
    }
    fn model_kind(&self) -> Option<ModelKind> {
        None
    }
    fn run(&self, _: NoParams, ctx: &JobContext) -> anyhow::Result<Outcome> {
        *self.0.lock().unwrap().entry(ctx.job_id()).or_default() += 1;
        ctx.progress(Progress::step(1, 1));
        Ok(Outcome::Result(json!({"ran": true})))
    }
}

#[sqlx::test]
async fn several_workers_never_run_the_same_job(pool: PgPool) {
    let counting = Counting::default();
    let app = TestApp::with_jobs(pool, test_jobs_args(), JobKinds::builtin().with(counting.clone())).await;
    let mut ids = vec![];
    for _ in 0..60 {
        ids.push(create(&app, json!({"kind": "count"})).await);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..5 {
        let w = app.worker(&format!("w{i}"));
        tasks.spawn(async move {
            let mut n = 0;
            while let Some(job) = w.claim_and_run_one().await.unwrap() {
                assert_eq!(job.status, "succeeded");
                n += 1;
            }
            n
        });
    }
    let per_worker = tasks.join_all().await;
    assert_eq!(per_worker.iter().sum::<usize>(), 60, "{per_worker:?}");
    let runs = counting.0.lock().unwrap().clone();
    assert_eq!(runs.len(), 60);
    assert!(runs.values().all(|&n| n == 1), "each job ran exactly once: {runs:?}");
    let succeeded: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'succeeded' AND attempts = 1")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(succeeded, 60);
}

async fn stale(app: &TestApp, job: &str) {
    sqlx::query("UPDATE jobs SET heartbeat_at = now() - interval '1 hour' WHERE id = $1::uuid")
        .bind(job)
        .execute(&app.pool)
        .await
        .unwrap();
}

#[sqlx::test]
async fn a_crashed_workers_job_is_requeued_then_completes(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.seed_visits(12, 3).await;
    let job = create(&app, json!({"kind": "train_copy_previous"})).await;
    let (a, b) = (app.worker("crashes"), app.worker("survives"));
    let claimed = a.claim().await.unwrap().unwrap(); // ...and a never runs it: it "crashed"
    assert_eq!(claimed.attempts, 1);
    // A live lease is not reaped.
    assert!(medchange::jobs::worker::reap(&app.pool, &app.state.jobs).await.unwrap().is_empty());
    stale(&app, &job).await;
    let reaped = medchange::jobs::worker::reap(&app.pool, &app.state.jobs).await.unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].status, "queued");
    let r = app.admin_get(&format!("/v1/jobs/{job}")).await;
    assert_eq!(r.body["status"], "queued");
    assert!(r.body["error"].as_str().unwrap().contains("stopped heartbeating"), "{}", r.text);

    // Visits stored after the first start are not part of the job's data.
    app.seed_visits(5, 2).await;
    // B takes it over; the crashed worker's late writes are refused.
    let taken = b.claim().await.unwrap().unwrap();
    assert_eq!(taken.attempts, 2);
    let stale_run = a.run_claimed(claimed).await.unwrap();
    assert_eq!(stale_run.status, "running", "the stale worker could not end the job");
    assert_eq!(stale_run.lease_owner.as_deref(), Some("survives"));
    let done = b.run_claimed(taken).await.unwrap();
    assert_eq!(done.status, "succeeded", "{:?}", done.error);
    assert_eq!(done.attempts, 2);
    assert_eq!(app.count("models").await, 1, "exactly one version");
    assert_eq!(done.data_snapshot.as_ref().unwrap()["visits"], 36, "the retry used the first start's snapshot");
    let model = app.admin_get(&format!("/v1/models/{}", done.model_id.unwrap())).await;
    let split: Value = serde_json::from_slice(
        &std::fs::read(app.models_dir.join(model.body["artifact_path"].as_str().unwrap()).join("split.json")).unwrap(),
    )
    .unwrap();
    let n: usize = ["train", "val", "test"].iter().map(|p| split[p].as_array().unwrap().len()).sum();
    assert_eq!(n, 12, "trained on the 12 patients of the snapshot, not 17");
    let evs = events(&app, &job).await;
    assert!(evs.iter().any(|e| e["data"]["reason"] == "worker stopped heartbeating"));
}

#[sqlx::test]
async fn a_job_that_keeps_crashing_fails_at_the_retry_limit(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let job = create(&app, json!({"kind": "train_copy_previous", "max_attempts": 2})).await;
    let w = app.worker("crashy");
    for attempt in 1..=2 {
        let c = w.claim().await.unwrap().expect("claimable");
        assert_eq!(c.attempts, attempt);
        stale(&app, &job).await;
        medchange::jobs::worker::reap(&app.pool, &app.state.jobs).await.unwrap();
    }
    let r = app.admin_get(&format!("/v1/jobs/{job}")).await;
    assert_eq!(r.body["status"], "failed");
    assert!(r.body["error"].as_str().unwrap().contains("attempt 2 of 2"), "{}", r.text);
    assert!(w.claim().await.unwrap().is_none());
}

#[sqlx::test]
async fn a_failing_job_records_its_error(pool: PgPool) {
    let app = TestApp::new(pool).await; // no visits: the trainer refuses
    let job = create(&app, json!({"kind": "train_copy_previous"})).await;
    let done = app.worker("w").claim_and_run_one().await.unwrap().unwrap();
    assert_eq!(done.status, "failed");
    assert!(done.error.as_deref().unwrap().contains("at least 3 are needed"), "{:?}", done.error);
    assert_eq!(app.count("models").await, 0);
    assert!(!app.models_dir.join(".staging").join(format!("{job}-1")).exists());
}

#[sqlx::test]
async fn cancelling_a_queued_job(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let job = create(&app, json!({"kind": "train_copy_previous"})).await;
    let r = app.admin_post(&format!("/v1/jobs/{job}/cancel"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "cancelled");
    assert!(app.worker("w").claim_and_run_one().await.unwrap().is_none(), "a cancelled job is never claimed");
    app.admin_post(&format!("/v1/jobs/{job}/cancel"), None).await.assert_problem(409, "/problems/conflict");
    app.admin_post(&format!("/v1/jobs/{}/cancel", Uuid::now_v7()), None)
        .await
        .assert_problem(404, "/problems/not-found");
}

#[sqlx::test]
async fn cancelling_a_running_training_stops_it_without_artifacts(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.seed_visits(12, 3).await;
    let job = create(&app, json!({"kind": "train_copy_previous"})).await;
    let w = app.worker("w");
    let claimed = w.claim().await.unwrap().unwrap();
    let r = app.admin_post(&format!("/v1/jobs/{job}/cancel"), None).await;
    assert_eq!(r.body["status"], "running");
    assert_eq!(r.body["cancel_requested"], true);
    let done = w.run_claimed(claimed).await.unwrap();
    assert_eq!(done.status, "cancelled");
    assert_eq!(app.count("models").await, 0);
    assert!(!app.models_dir.join("copy_previous").exists(), "no version folder");
    assert!(!app.models_dir.join(".staging").join(format!("{job}-1")).exists(), "no partial artifacts");
}

/// A trainer that writes a partial artifact, then waits for the test.
struct Blocking {
    started: Mutex<mpsc::Sender<()>>,
    go: Mutex<mpsc::Receiver<()>>,
}

impl JobKind for Blocking {
    type Params = NoParams;
    fn name(&self) -> &'static str {
        "block"
    }
    fn description(&self) -> &'static str {
        "waits for the test"
    }
    fn model_kind(&self) -> Option<ModelKind> {
        Some(ModelKind::CopyPrevious)
    }
    fn run(&self, _: NoParams, ctx: &JobContext) -> anyhow::Result<Outcome> {
        std::fs::write(ctx.artifact_dir().join("weights.partial"), b"half an epoch")?;
        ctx.write_json("config.json", &json!({"partial": true}))?;
        self.started.lock().unwrap().send(()).unwrap();
        self.go.lock().unwrap().recv().unwrap();
        for step in 0..1000 {
            ctx.progress(Progress::step(1, step).loss(1.0 / (step + 1) as f64));
            ctx.checkpoint()?; // every batch
        }
        Ok(Outcome::Version(NewVersion {
            kind: ModelKind::CopyPrevious,
            config: json!({}),
            metrics: json!({}),
            val_score: None,
            vocab: json!({}),
            parent: None,
        }))
    }
}

fn blocking_app_kinds() -> (JobKinds, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let (started_tx, started_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let kinds = JobKinds::builtin().with(Blocking { started: Mutex::new(started_tx), go: Mutex::new(go_rx) });
    (kinds, started_rx, go_tx)
}

#[sqlx::test]
async fn a_running_job_stops_at_the_next_batch_when_cancelled(pool: PgPool) {
    let (kinds, started, go) = blocking_app_kinds();
    let app = TestApp::with_jobs(pool, test_jobs_args(), kinds).await;
    let job = create(&app, json!({"kind": "block"})).await;
    let w = app.worker("w");
    let running = tokio::spawn(async move { w.claim_and_run_one().await.unwrap().unwrap() });
    let started = tokio::task::spawn_blocking(move || started.recv().unwrap());
    started.await.unwrap();
    assert!(app.models_dir.join(".staging").join(format!("{job}-1")).join("weights.partial").exists());
    let r = app.admin_post(&format!("/v1/jobs/{job}/cancel"), None).await;
    assert_eq!(r.body["cancel_requested"], true);
    go.send(()).unwrap();
    let done = running.await.unwrap();
    assert_eq!(done.status, "cancelled");
    assert_eq!(done.error.as_deref(), Some("cancelled by an admin"));
    let steps = events(&app, &job).await.iter().filter(|e| e["kind"] == "step").count();
    assert_eq!(steps, 1, "stopped at the first batch after the request");
    assert!(!app.models_dir.join(".staging").join(format!("{job}-1")).exists(), "partial artifacts removed");
    assert_eq!(app.count("models").await, 0);
}

#[sqlx::test]
async fn a_job_interrupted_by_shutdown_goes_back_to_the_queue(pool: PgPool) {
    let (kinds, started, go) = blocking_app_kinds();
    let app = TestApp::with_jobs(pool, test_jobs_args(), kinds).await;
    let job = create(&app, json!({"kind": "block"})).await;
    let w = app.worker("w");
    let flag = w.shutdown_flag();
    let running = tokio::spawn(async move { w.claim_and_run_one().await.unwrap().unwrap() });
    tokio::task::spawn_blocking(move || started.recv().unwrap()).await.unwrap();
    flag.store(true, std::sync::atomic::Ordering::SeqCst);
    go.send(()).unwrap();
    let done = running.await.unwrap();
    assert_eq!(done.status, "queued", "{:?}", done.error);
    assert_eq!(done.attempts, 0, "an interrupted attempt does not count");
    assert!(!app.models_dir.join(".staging").join(format!("{job}-1")).exists());
}

/// The SSE frames of a finished stream: (id, event, data).
fn frames(text: &str) -> Vec<(i64, String, Value)> {
    text.split("\n\n")
        .filter(|f| f.contains("data:"))
        .map(|f| {
            let field = |name: &str| {
                f.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim_start().to_string()).unwrap_or_default()
            };
            (field("id:").parse().unwrap(), field("event:"), serde_json::from_str(&field("data:")).unwrap())
        })
        .collect()
}

async fn stream(app: &TestApp, job: &str, last_event_id: Option<&str>) -> (StatusCode, String) {
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(format!("/v1/jobs/{job}/events/stream"))
        .header(header::AUTHORIZATION, format!("Bearer {}", app.admin));
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let res = app.router.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = res.status();
    if status == StatusCode::OK {
        assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
    }
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[sqlx::test]
async fn the_event_stream_is_live_ordered_and_resumable(pool: PgPool) {
    let app = Arc::new(TestApp::new(pool).await);
    app.seed_visits(200, 2).await;
    let job = create(&app, json!({"kind": "train_copy_previous"})).await;

    // Opened before the job runs: it follows the job live to its end.
    let live = {
        let (app, job) = (app.clone(), job.clone());
        tokio::spawn(async move { stream(&app, &job, None).await })
    };
    let done = app.worker("w").claim_and_run_one().await.unwrap().unwrap();
    assert_eq!(done.status, "succeeded");
    let (status, text) = live.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let all = frames(&text);
    let ids: Vec<i64> = all.iter().map(|f| f.0).collect();
    assert_eq!(ids, (1..=done.last_event_id).collect::<Vec<_>>(), "every event, in order, once");
    assert_eq!(all.last().unwrap().1, "status");
    assert_eq!(all.last().unwrap().2["data"]["status"], "succeeded");
    assert!(all.iter().any(|f| f.1 == "step"));
    for (id, kind, data) in &all {
        assert_eq!(data["id"], *id);
        assert_eq!(data["kind"], kind.as_str());
    }

    // Reconnecting with Last-Event-ID resumes after it.
    let (_, text) = stream(&app, &job, Some("3")).await;
    let resumed = frames(&text);
    assert_eq!(resumed.iter().map(|f| f.0).collect::<Vec<_>>(), ids[3..].to_vec());
    let (_, text) = stream(&app, &job, Some(&done.last_event_id.to_string())).await;
    assert!(frames(&text).is_empty(), "nothing after the last event");
    let (status, _) = stream(&app, &job, Some("abc")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = stream(&app, &Uuid::now_v7().to_string(), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[sqlx::test]
async fn automatic_promotion_activates_a_better_version(pool: PgPool) {
    let jobs = medchange::config::JobsArgs { auto_promote_margin: Some(0.0), ..test_jobs_args() };
    let app = TestApp::with_jobs(pool, jobs, JobKinds::builtin()).await;
    app.seed_visits(30, 3).await;
    create(&app, json!({"kind": "train_copy_previous"})).await;
    let first = app.worker("w").claim_and_run_one().await.unwrap().unwrap().model_id.unwrap();
    assert_eq!(app.state.registry.active("copy_previous").unwrap().id, first, "no active version: promoted");
    // Same data and seed: same score, margin 0 -> promoted again.
    create(&app, json!({"kind": "train_copy_previous"})).await;
    let second = app.worker("w").claim_and_run_one().await.unwrap().unwrap().model_id.unwrap();
    assert_eq!(store::models::active(&app.pool, "copy_previous").await.unwrap().unwrap().id, second);
    assert_eq!(app.state.registry.active("copy_previous").unwrap().id, second);
}

#[sqlx::test]
async fn the_worker_loop_runs_queued_jobs_and_stops_on_shutdown(pool: PgPool) {
    let jobs = medchange::config::JobsArgs { poll_secs: 3600.0, ..test_jobs_args() };
    let counting = Counting::default();
    let app = TestApp::with_jobs(pool, jobs, JobKinds::builtin().with(counting.clone())).await;
    let job = create(&app, json!({"kind": "count"})).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(app.worker("loop").run(stop_rx));
    // The loop claims what is queued at once; wait on the job's own events.
    let (status, text) = stream(&app, &job, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(frames(&text).last().unwrap().2["data"]["status"], "succeeded");
    // Shutdown ends the loop without waiting for the (hour-long) poll.
    stop_tx.send(true).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(30), worker).await.expect("the loop stopped").unwrap();
    assert_eq!(counting.0.lock().unwrap().len(), 1);
}

#[sqlx::test]
async fn open_event_streams_end_when_the_server_shuts_down(pool: PgPool) {
    let app = Arc::new(TestApp::new(pool).await);
    let job = create(&app, json!({"kind": "train_copy_previous"})).await; // stays queued: no worker
    let open = {
        let (app, job) = (app.clone(), job.clone());
        tokio::spawn(async move { stream(&app, &job, None).await })
    };
    app.state.shutdown.send_replace(true);
    let (status, text) =
        tokio::time::timeout(std::time::Duration::from_secs(30), open).await.expect("the stream ended").unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(frames(&text).iter().map(|f| f.0).collect::<Vec<_>>(), [1], "what existed was delivered first");
}
