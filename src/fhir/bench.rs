//! `medchange bench fhir`: FHIR import and CDS Hooks costs, through the
//! whole HTTP stack in process, in a scratch database (created and dropped
//! here) with the shipped MICRON model. Prints tables:
//!
//! - import: each bundle of a folder (Synthea's, by default) posted under a
//!   fresh source per round (everything new), then posted again (all
//!   already imported); milliseconds per bundle and resources per second;
//! - CDS Hooks: `patient-view` answered from the stored history and from a
//!   prefetch, and `order-select` with a draft order; milliseconds per call.
use std::{path::Path, time::Instant};

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode},
};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

use crate::{
    app::{AppState, app},
    config::{FhirBenchArgs, HttpArgs, JobsArgs},
    domain::Role,
    store,
};

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() { f64::NAN } else { sorted[((sorted.len() - 1) as f64 * p).round() as usize] }
}

async fn post(router: &Router, uri: &str, key: &str, ct: &str, body: Vec<u8>) -> anyhow::Result<(f64, Value)> {
    let req = Request::post(uri)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", ct)
        .body(Body::from(body))?;
    let t = Instant::now();
    let res = router.clone().oneshot(req).await?;
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(status == StatusCode::OK, "{uri}: {status}: {}", String::from_utf8_lossy(&bytes));
    Ok((ms, serde_json::from_slice(&bytes)?))
}

fn row(name: &str, n: usize, mut v: Vec<f64>, extra: String) {
    v.sort_by(f64::total_cmp);
    println!(
        "| {name} | {n} | {:.2} | {:.2} | {:.2} |{extra}",
        pct(&v, 0.5),
        pct(&v, 0.95),
        v.last().copied().unwrap_or(f64::NAN)
    );
}

/// Searchset bundles of one patient's resources, as CDS Hooks prefetch.
fn prefetch(bundle: &Value) -> Value {
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    let search = |t: &str| {
        let e: Vec<Value> = entries.iter().filter(|e| e["resource"]["resourceType"] == t).cloned().collect();
        json!({"resourceType": "Bundle", "type": "searchset", "entry": e})
    };
    json!({"encounters": search("Encounter"), "conditions": search("Condition"), "procedures": search("Procedure"),
        "medications": search("MedicationRequest")})
}

pub async fn run(admin: PgPool, args: &FhirBenchArgs) -> anyhow::Result<()> {
    let name = format!("medchange_bench_fhir_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).execute(&admin).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await?;
    let opts = admin.connect_options().as_ref().clone().database(&name);
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(8).connect_with(opts).await?;
    let models = std::env::temp_dir().join(format!("medchange-bench-fhir-{}", std::process::id()));
    let result = async {
        crate::db::migrate(&pool).await?;
        measure(&pool, args, &models).await
    }
    .await;
    pool.close().await;
    let _ = std::fs::remove_dir_all(&models);
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).execute(&admin).await?;
    result
}

async fn measure(pool: &PgPool, args: &FhirBenchArgs, models: &Path) -> anyhow::Result<()> {
    let jobs =
        JobsArgs { models_dir: models.to_path_buf(), shipped_models: args.shipped.clone(), ..JobsArgs::default() };
    let state = AppState::with_jobs(pool.clone(), HttpArgs::default(), jobs, crate::jobs::JobKinds::builtin());
    state.registry.register_shipped(&args.shipped).await?;
    anyhow::ensure!(state.registry.active("micron").is_some(), "no shipped MICRON model in {}", args.shipped.display());
    let key = store::keys::generate();
    store::keys::insert(pool, "bench", Role::Clinical, &key).await?;
    let router = app(state.clone());

    let mut files: Vec<_> = std::fs::read_dir(&args.dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no .json bundle in {}", args.dir.display());
    let bundles: Vec<Vec<u8>> = files.iter().map(std::fs::read).collect::<Result<_, _>>()?;
    let resources: usize = bundles
        .iter()
        .map(|b| serde_json::from_slice::<Value>(b).map(|v| v["entry"].as_array().map_or(0, Vec::len)))
        .sum::<Result<usize, _>>()?;
    let bytes: usize = bundles.iter().map(Vec::len).sum();
    println!(
        "FHIR import: {} bundles from {} ({resources} resources, {:.1} MB), {} rounds",
        bundles.len(),
        args.dir.display(),
        bytes as f64 / 1e6,
        args.rounds
    );
    println!();
    println!("| what | bundles | p50 ms | p95 ms | max ms | resources/s |");
    println!("|---|---|---|---|---|---|");
    let (mut fresh, mut again) = (vec![], vec![]);
    let (mut fresh_total, mut again_total) = (0.0, 0.0);
    for round in 0..args.rounds {
        let uri = format!("/v1/fhir/import?source=bench-{round}");
        for b in &bundles {
            let (ms, _) = post(&router, &uri, &key, "application/fhir+json", b.clone()).await?;
            fresh.push(ms);
            fresh_total += ms;
        }
        for b in &bundles {
            let (ms, rep) = post(&router, &uri, &key, "application/fhir+json", b.clone()).await?;
            anyhow::ensure!(rep["visits_added"] == 0, "a re-post added visits");
            again.push(ms);
            again_total += ms;
        }
    }
    let per_s = |total_ms: f64| format!(" {:.0} |", (resources * args.rounds) as f64 / (total_ms / 1e3));
    row("new bundle (all resources new)", fresh.len(), fresh, per_s(fresh_total));
    row("same bundle again (nothing new)", again.len(), again, per_s(again_total));

    // CDS Hooks on the largest bundle's patient (imported as `fhir`, the
    // default CDS source).
    let (i, _) = bundles.iter().enumerate().max_by_key(|(_, b)| b.len()).expect("a bundle");
    let (_, rep) =
        post(&router, "/v1/fhir/import?source=fhir", &key, "application/fhir+json", bundles[i].clone()).await?;
    let parsed: Value = serde_json::from_slice(&bundles[i])?;
    let patient =
        rep["patients"][0]["resource"].as_str().unwrap_or_default().trim_start_matches("Patient/").to_string();
    let visits = rep["visits_added"].as_u64().unwrap_or(0);
    let hook = |hook: &str, pre: bool| {
        let mut b = json!({"hook": hook, "hookInstance": uuid::Uuid::new_v4().to_string(),
            "context": {"userId": "Practitioner/bench", "patientId": patient}});
        if pre {
            b["prefetch"] = prefetch(&parsed);
        }
        if hook == "order-select" {
            b["context"]["selections"] = json!(["MedicationRequest/draft-1"]);
            b["context"]["draftOrders"] = json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {
                "resourceType": "MedicationRequest", "id": "draft-1", "status": "draft", "intent": "order",
                "medicationCodeableConcept": {"coding": [{"system": "http://www.whocc.no/atc", "code": "N02BE01"}]}}}]});
        }
        serde_json::to_vec(&b)
    };
    println!();
    println!("CDS Hooks: patient {patient} ({visits} visits), {} calls each", args.calls);
    println!();
    println!("| call | calls | p50 ms | p95 ms | max ms |");
    println!("|---|---|---|---|---|");
    for (label, service, h, pre) in [
        ("patient-view, stored history", "medchange-patient-view", "patient-view", false),
        ("patient-view, prefetch", "medchange-patient-view", "patient-view", true),
        ("order-select, stored history", "medchange-order-select", "order-select", false),
    ] {
        let mut v = vec![];
        for _ in 0..args.calls {
            let (ms, r) =
                post(&router, &format!("/cds-services/{service}"), &key, "application/json", hook(h, pre)?).await?;
            anyhow::ensure!(r["cards"].as_array().is_some_and(|c| c.len() == 1), "{label}: no card: {r}");
            v.push(ms);
        }
        row(label, v.len(), v, String::new());
    }
    Ok(())
}
