//! `medchange bench serve`: end-to-end HTTP latency and throughput of
//! "append a visit and predict" on loopback, driven by `wrk` (an external
//! load generator, `apt-get install wrk`) against this binary's server, in a
//! scratch database on the configured PostgreSQL server (created and
//! dropped here).
//!
//! For every history length L and mode (incremental: one step from the
//! stored state; replay: `?replay=true`, the whole history re-read and
//! replayed on every request) a fresh group of patients with L stored visits
//! and warm states gets appended to by `wrk`: once at a fixed arrival rate
//! (latency percentiles) and once as fast as it goes (throughput). The
//! server's own timing fields (model, SQL before commit) say where the time
//! goes; serialization is measured in process.
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::Context;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    app::{AppState, app},
    config::{HttpArgs, JobsArgs, ServeBenchArgs},
    domain::Role,
    ml::formats::{NativePatient, NativeVisit, write_native_jsonl},
    serving::{self, PredictOptions},
    store,
};

/// The wrk script (request generation, arrival rate, result line).
const WRK_SCRIPT: &str = include_str!("../../benches/serve/append.lua");

struct Codes {
    diag: Vec<String>,
    proc: Vec<String>,
    med: Vec<String>,
}

fn random_visit(rng: &mut StdRng, c: &Codes, with_time: bool) -> NativeVisit {
    let pick = |rng: &mut StdRng, from: &[String], k: usize| -> Vec<String> {
        let mut v: Vec<String> = from.choose_multiple(rng, k.min(from.len())).cloned().collect();
        v.sort();
        v
    };
    let (nd, np, nm) = (rng.random_range(8..20), rng.random_range(1..8), rng.random_range(10..28));
    NativeVisit {
        occurred_at: with_time.then(|| "2020-01-01T00:00:00Z".to_string()),
        diagnoses: pick(rng, &c.diag, nd),
        procedures: pick(rng, &c.proc, np),
        // One visit in five has no recorded medications (the previous
        // prediction is then the previous set).
        medications: (rng.random_range(0..5) != 0).then(|| pick(rng, &c.med, nm)),
    }
}

async fn scratch(admin: &PgPool) -> anyhow::Result<(PgPool, String)> {
    let name = format!("medchange_bench_serve_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).execute(admin).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(admin).await?;
    let opts = admin.connect_options().as_ref().clone().database(&name);
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(32).connect_with(opts).await?;
    crate::db::migrate(&pool).await?;
    Ok((pool, name))
}

pub async fn run(admin: PgPool, args: &ServeBenchArgs) -> anyhow::Result<()> {
    let wrk = Command::new(&args.wrk).arg("--version").output();
    anyhow::ensure!(wrk.is_ok(), "`{}` not found: install wrk (apt-get install wrk) or pass --wrk PATH", args.wrk);
    let (pool, name) = scratch(&admin).await?;
    let work = std::env::temp_dir().join(format!("medchange-bench-serve-{}", std::process::id()));
    let result = measure(&pool, args, &work).await;
    pool.close().await;
    let _ = std::fs::remove_dir_all(&work);
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).execute(&admin).await?;
    result
}

/// One wrk run's result line.
#[derive(Debug, Default)]
struct WrkResult {
    requests: f64,
    errors: f64,
    non201: f64,
    rps: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    model_us: f64,
    db_us: f64,
    server_us: f64,
}

fn parse_result(out: &str) -> anyhow::Result<WrkResult> {
    let line = out.lines().find(|l| l.starts_with("RESULT ")).context("wrk printed no RESULT line")?;
    let mut r = WrkResult::default();
    for kv in line["RESULT ".len()..].split_whitespace() {
        let (k, v) = kv.split_once('=').context("malformed RESULT field")?;
        let v: f64 = v.parse().with_context(|| format!("RESULT field {k}"))?;
        match k {
            "requests" => r.requests = v,
            "errors" => r.errors = v,
            "non201" => r.non201 = v,
            "rps" => r.rps = v,
            "p50_ms" => r.p50 = v,
            "p90_ms" => r.p90 = v,
            "p99_ms" => r.p99 = v,
            "max_ms" => r.max = v,
            "model_us" => r.model_us = v,
            "db_us" => r.db_us = v,
            "server_us" => r.server_us = v,
            _ => {}
        }
    }
    Ok(r)
}

struct Group {
    ids: PathBuf,
}

async fn measure(pool: &PgPool, args: &ServeBenchArgs, work: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(work)?;
    let models = work.join("models");
    let jobs = JobsArgs { models_dir: models.clone(), workers: 0, shipped_models: args.models.clone(), ..JobsArgs::default() };
    let state = AppState::with_jobs(pool.clone(), HttpArgs::default(), jobs, crate::jobs::JobKinds::builtin());
    // The MICRON version to serve: the folder given (default: the shipped one).
    state.registry.register_shipped(&args.models).await.context("registering the model")?;
    state.registry.refresh().await?;
    let (model, micron) = serving::served(&state).map_err(|e| anyhow::anyhow!("{e}"))?;
    let vocab = &micron.artifact.vocab;
    let codes = Codes { diag: vocab.diag.codes().to_vec(), proc: vocab.proc.codes().to_vec(), med: vocab.med.codes().to_vec() };
    if let Some(p) = args.ddi.as_ref() {
        crate::import::ddi(pool, p, "bench", false).await?;
    }
    let secret = store::keys::generate();
    store::keys::insert(pool, "bench", Role::Clinical, &secret).await?;
    let mut rng = StdRng::seed_from_u64(args.seed);

    // Request bodies: random visits with the model's codes.
    let bodies = work.join("bodies.jsonl");
    let mut f = std::fs::File::create(&bodies)?;
    for _ in 0..500 {
        writeln!(f, "{}", serde_json::to_string(&random_visit(&mut rng, &codes, false))?)?;
    }
    drop(f);

    // Serialization of one typical answer (all probabilities listed).
    let serialize_us = {
        let v = random_visit(&mut rng, &codes, false);
        let hist = vec![serving::VisitCodes::default(), serving::VisitCodes {
            diagnoses: v.diagnoses,
            procedures: v.procedures,
            medications: v.medications,
        }];
        let answers = serving::predict_histories(&state, (&model, &micron), vec![hist], false, &PredictOptions::default())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let a = &answers[0][0];
        let n = 2000;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(serde_json::to_vec(a)?);
        }
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    };

    // The server, on a free loopback port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(axum::serve(listener, app(state.clone())).into_future());

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let pg: String = sqlx::query_scalar("SHOW server_version").fetch_one(pool).await?;
    println!(
        "serving benchmark: append a visit and predict (MICRON {}, {} medications), {cores} CPU cores visible, PostgreSQL {pg}",
        model.version,
        codes.med.len()
    );
    println!(
        "wrk {} threads / {} connections, {} s per run; fixed-rate runs at {} requests/s; {} fresh patients per run",
        args.threads, args.connections, args.duration, args.rate, args.patients
    );
    println!("serializing one answer (every probability listed): {serialize_us:.1} µs (in process)");
    println!();
    println!(
        "{:>4} {:>12} {:>10} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>11} {:>8}",
        "L", "mode", "load", "req/s", "p50 ms", "p90 ms", "p99 ms", "model µs", "SQL µs", "server µs", "errors"
    );
    // Warm-up (connections, plans, caches), not reported.
    {
        let group = prepare_group(pool, &state, &codes, &mut rng, 5, args.patients.min(500), work).await?;
        let warm = ServeBenchArgs { duration: 3, ..args.clone() };
        run_wrk(&warm, addr, &group, &bodies, &secret, "", 0.0)?;
    }
    let mut summary: Vec<(usize, String, f64, f64, f64)> = vec![];
    for &len in &args.lengths {
        for mode in &args.modes {
            let query = match mode.as_str() {
                "incremental" => "",
                "replay" => "?replay=true",
                other => anyhow::bail!("unknown mode {other} (incremental, replay)"),
            };
            let mut rates = vec![];
            for (load, rate) in [("fixed", args.rate), ("max", 0.0)] {
                let group = prepare_group(pool, &state, &codes, &mut rng, len, args.patients, work).await?;
                let out = run_wrk(args, addr, &group, &bodies, &secret, query, rate)?;
                let r = parse_result(&out).with_context(|| format!("wrk output:\n{out}"))?;
                println!(
                    "{len:>4} {mode:>12} {:>10} {:>9.0} {:>9.2} {:>9.2} {:>9.2} {:>10.0} {:>10.0} {:>11.0} {:>8}",
                    if rate > 0.0 { format!("{rate:.0}/s") } else { load.to_string() },
                    r.rps,
                    r.p50,
                    r.p90,
                    r.p99,
                    r.model_us,
                    r.db_us,
                    r.server_us,
                    r.errors + r.non201
                );
                rates.push(r.rps);
                if load == "fixed" {
                    summary.push((len, mode.clone(), r.p50, r.p99, 0.0));
                } else if let Some(last) = summary.last_mut() {
                    last.4 = r.rps;
                }
            }
        }
    }
    println!();
    println!("incremental vs replay (same run):");
    for &len in &args.lengths {
        let get = |m: &str| summary.iter().find(|s| s.0 == len && s.1 == m);
        if let (Some(i), Some(r)) = (get("incremental"), get("replay")) {
            println!(
                "  L = {len:>3}: p50 {:.2} vs {:.2} ms ({:.1}x), max throughput {:.0} vs {:.0} req/s ({:.1}x)",
                i.2,
                r.2,
                r.2 / i.2,
                i.4,
                r.4,
                i.4 / r.4
            );
        }
    }
    server.abort();
    let _ = models;
    Ok(())
}

/// `n` fresh patients with `len` stored visits each and a warm state for
/// the served version (one replay each, done here, not measured).
async fn prepare_group(
    pool: &PgPool,
    state: &AppState,
    codes: &Codes,
    rng: &mut StdRng,
    len: usize,
    n: usize,
    work: &Path,
) -> anyhow::Result<Group> {
    let tag = Uuid::new_v4().simple().to_string();
    let patients: Vec<NativePatient> = (0..n)
        .map(|i| NativePatient {
            external_id: format!("B{len}-{}-{i}", &tag[..8]),
            source: Some("bench".into()),
            visits: (0..len).map(|_| random_visit(rng, codes, false)).collect(),
        })
        .collect();
    let file = work.join(format!("patients-{tag}.jsonl"));
    std::fs::write(&file, write_native_jsonl(&patients))?;
    crate::import::native(pool, &file, "bench", false).await?;
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM patients WHERE external_id LIKE $1")
        .bind(format!("B{len}-{}-%", &tag[..8]))
        .fetch_all(pool)
        .await?;
    anyhow::ensure!(ids.len() == n, "imported {} of {n} patients", ids.len());
    // Warm states: what every patient already followed by the service has.
    let (model, micron) = serving::served(state).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in ids.chunks(n.div_ceil(8).max(1)) {
        let (chunk, pool, state, model, micron) =
            (chunk.to_vec(), pool.clone(), state.clone(), model.clone(), micron.clone());
        tasks.spawn(async move {
            for id in chunk {
                let mut tx = pool.begin().await?;
                let p = store::patients::lock(&mut *tx, id).await?.context("patient")?;
                let last = store::visits::latest(&mut *tx, id).await?.context("visit")?;
                serving::predict_stored_locked(
                    &mut tx,
                    &state,
                    (&model, &micron),
                    None,
                    &last,
                    p.visit_count,
                    &PredictOptions::default(),
                    None,
                )
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
                tx.commit().await?;
            }
            anyhow::Ok(())
        });
    }
    for r in tasks.join_all().await {
        r?;
    }
    let ids_file = work.join(format!("ids-{tag}.txt"));
    std::fs::write(&ids_file, ids.iter().map(|i| format!("{i}\n")).collect::<String>())?;
    sqlx::query("ANALYZE").execute(pool).await?;
    Ok(Group { ids: ids_file })
}

fn run_wrk(
    args: &ServeBenchArgs,
    addr: std::net::SocketAddr,
    group: &Group,
    bodies: &Path,
    key: &str,
    query: &str,
    rate: f64,
) -> anyhow::Result<String> {
    let script = group.ids.with_extension("lua");
    std::fs::write(&script, WRK_SCRIPT)?;
    let out = Command::new(&args.wrk)
        .args(["-t", &args.threads.to_string(), "-c", &args.connections.to_string()])
        .args(["-d", &format!("{}s", args.duration), "--timeout", "10s", "-s"])
        .arg(&script)
        .arg(format!("http://{addr}"))
        .env("BENCH_PATIENTS", &group.ids)
        .env("BENCH_BODIES", bodies)
        .env("BENCH_KEY", key)
        .env("BENCH_QUERY", query)
        .env("BENCH_RATE", format!("{rate}"))
        .env("BENCH_THREADS", args.threads.to_string())
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.success(), "wrk failed:\n{text}");
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_wrk_result_line() {
        let r = parse_result(
            "Running 1s test\nRESULT requests=10 errors=0 non201=1 rps=9.5 p50_ms=1.20 p90_ms=2.00 p99_ms=3.50 \
             max_ms=4.00 model_us=20 db_us=900 server_us=1000\n",
        )
        .unwrap();
        assert_eq!((r.requests, r.non201, r.p99, r.db_us), (10.0, 1.0, 3.5, 900.0));
        assert!(parse_result("no result").is_err());
    }
}
