//! `medchange bench`: the job queue's overhead with a job kind that does
//! nothing, in a scratch database on the configured server (created and
//! dropped here). Prints a table:
//!
//! - throughput: N queued jobs drained by K workers (claim, snapshot,
//!   events, finish: the whole per-job bookkeeping), jobs per second;
//! - latency: jobs created one at a time while idle workers wait (woken by
//!   the queue notification), creation to start (p50, p95, max).
use std::{sync::Arc, time::Instant};

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;

use super::{JobContext, JobKind, JobKinds, Outcome};
use crate::{
    app::AppState,
    config::{BenchArgs, HttpArgs, JobsArgs},
    registry::ModelKind,
};

/// Parameters of the `noop` kind (none).
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoopParams {}

/// Does nothing: measures the queue, not the work.
pub struct Noop;

impl JobKind for Noop {
    type Params = NoopParams;
    fn name(&self) -> &'static str {
        "noop"
    }
    fn description(&self) -> &'static str {
        "does nothing (queue benchmark)"
    }
    fn model_kind(&self) -> Option<ModelKind> {
        None
    }
    fn run(&self, _: NoopParams, _: &JobContext) -> anyhow::Result<Outcome> {
        Ok(Outcome::Result(serde_json::json!({})))
    }
}

async fn scratch(admin: &PgPool) -> anyhow::Result<(PgPool, String)> {
    let name = format!("medchange_bench_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).execute(admin).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(admin).await?;
    let opts = admin.connect_options().as_ref().clone().database(&name);
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(40).connect_with(opts).await?;
    crate::db::migrate(&pool).await?;
    Ok((pool, name))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub async fn run(admin: PgPool, args: &BenchArgs) -> anyhow::Result<()> {
    let (pool, name) = scratch(&admin).await?;
    let result = measure(&pool, args).await;
    pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).execute(&admin).await?;
    result
}

async fn measure(pool: &PgPool, args: &BenchArgs) -> anyhow::Result<()> {
    let models = std::env::temp_dir().join(format!("medchange-bench-{}", std::process::id()));
    let jobs =
        JobsArgs { models_dir: models.clone(), poll_secs: 1.0, step_event_interval_secs: 0.0, ..JobsArgs::default() };
    let state = AppState::with_jobs(pool.clone(), HttpArgs::default(), jobs, JobKinds::default().with(Noop));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("queue benchmark: noop jobs, {cores} CPU cores visible, PostgreSQL {}", server_version(pool).await?);
    println!();
    println!("{:>8} {:>8} {:>10} {:>12} {:>14}", "workers", "jobs", "seconds", "jobs/s", "per job (ms)");
    for &k in &args.workers {
        sqlx::query("TRUNCATE jobs CASCADE").execute(pool).await?;
        sqlx::query(
            "INSERT INTO jobs (id, kind, params, max_attempts)
             SELECT uuidv7_like.id, 'noop', '{}', 3 FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, $1)) uuidv7_like",
        )
        .bind(args.jobs as i64)
        .execute(pool)
        .await?;
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..k {
            let w = Arc::new(state.worker(format!("bench/{i}")));
            tasks.spawn(async move {
                let mut n = 0usize;
                while w.claim_and_run_one().await.expect("job runs").is_some() {
                    n += 1;
                }
                n
            });
        }
        let done: usize = tasks.join_all().await.into_iter().sum();
        let secs = started.elapsed().as_secs_f64();
        anyhow::ensure!(done == args.jobs, "ran {done} of {} jobs", args.jobs);
        println!(
            "{k:>8} {done:>8} {secs:>10.2} {:>12.0} {:>14.2}",
            done as f64 / secs,
            secs * 1000.0 / done as f64 * k as f64
        );
    }

    // Latency: idle workers in their loop; jobs created one by one.
    sqlx::query("TRUNCATE jobs CASCADE").execute(pool).await?;
    let k = args.workers.iter().copied().max().unwrap_or(1).min(4);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let workers: Vec<_> =
        (0..k).map(|i| tokio::spawn(state.worker(format!("bench-loop/{i}")).run(stop_rx.clone()))).collect();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await; // let the workers subscribe
    for _ in 0..args.latency_jobs {
        let mut tx = pool.begin().await?;
        crate::store::jobs::insert(&mut tx, "noop", &serde_json::json!({}), 3, None).await?;
        tx.commit().await?;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    loop {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status <> 'succeeded'").fetch_one(pool).await?;
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    for w in workers {
        let _ = w.await;
    }
    let mut lat: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM started_at - created_at)::float8 * 1000 FROM jobs WHERE started_at IS NOT NULL",
    )
    .fetch_all(pool)
    .await?;
    lat.sort_by(f64::total_cmp);
    println!();
    println!("creation to start, {} jobs created one by one, {k} idle workers woken by NOTIFY:", lat.len());
    println!(
        "  p50 {:.2} ms   p95 {:.2} ms   max {:.2} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.95),
        percentile(&lat, 1.0)
    );
    let _ = std::fs::remove_dir_all(models);
    Ok(())
}

async fn server_version(pool: &PgPool) -> anyhow::Result<String> {
    Ok(sqlx::query_scalar("SHOW server_version").fetch_one(pool).await?)
}
