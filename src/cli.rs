//! The `medchange` command line.
use std::io::{IsTerminal, Write};

use anyhow::Context;
use clap::Parser;
use sqlx::PgPool;

use crate::{
    app::{AppState, app},
    config::{
        BenchCommand, Cli, Command, GlobalArgs, ImportCommand, JobsArgs, KeysCommand, ServeArgs,
    },
    db,
    pgcluster::LocalCluster,
    store, telemetry,
};

pub fn main() -> std::process::ExitCode {
    let mut cli = Cli::parse();
    if cli.command.is_none() {
        // `serve` is the default: parse again so its flags and environment apply.
        cli = Cli::parse_from(std::env::args_os().chain([std::ffi::OsString::from("serve")]));
    }
    telemetry::init(cli.global.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("medchange: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.expect("a subcommand") {
        Command::Openapi { out } => {
            let json = crate::http::openapi_json();
            if out.as_os_str() == "-" {
                std::io::stdout().write_all(json.as_bytes())?;
            } else {
                if let Some(dir) = out.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::write(&out, json)?;
                eprintln!("wrote {}", out.display());
            }
            Ok(())
        }
        Command::Migrate => {
            let (pool, mut cluster) = database(&cli.global).await?;
            db::migrate(&pool).await?;
            pool.close().await;
            eprintln!("migrations applied");
            stop(&mut cluster);
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Create { role, name },
        } => {
            let (pool, mut cluster) = database(&cli.global).await?;
            db::migrate(&pool).await?;
            let secret = store::keys::generate();
            let key = store::keys::insert(&pool, name.trim(), role, &secret).await?;
            pool.close().await;
            stop(&mut cluster);
            eprintln!(
                "created {} key {} ({}); the secret is shown once:",
                role.as_str(),
                key.id,
                key.name
            );
            println!("{secret}");
            Ok(())
        }
        Command::Import { what } => {
            let (pool, mut cluster) = database(&cli.global).await?;
            db::migrate(&pool).await?;
            let show = std::io::stderr().is_terminal();
            let result = match what {
                ImportCommand::Native { file, source } => {
                    crate::import::native(&pool, &file, &source, show)
                        .await
                        .map(|s| s.to_string())
                }
                ImportCommand::Micron { dir, source } => {
                    crate::import::micron(&pool, &dir, &source, show)
                        .await
                        .map(|s| s.to_string())
                }
                ImportCommand::Ddi { file, source } => {
                    crate::import::ddi(&pool, &file, &source, show)
                        .await
                        .map(|s| s.to_string())
                }
                ImportCommand::Fhir {
                    path,
                    source,
                    identifier_system,
                } => {
                    let opts = crate::fhir::ingest::ImportOptions {
                        source,
                        identifier_system,
                        medications: Default::default(),
                    };
                    crate::import::fhir(&pool, &path, &opts)
                        .await
                        .map(|s| s.to_string())
                }
            };
            pool.close().await;
            stop(&mut cluster);
            eprintln!("{}", result?);
            Ok(())
        }
        Command::Synth(args) => {
            let cfg = crate::ml::synth::SynthConfig {
                seed: args.seed,
                patients: args.patients,
                ..Default::default()
            };
            let cohort =
                crate::ml::synth::generate(&cfg).map_err(|e| anyhow::anyhow!("{}", e.0))?;
            let files = crate::ml::synth::write_cohort(&cohort, &args.out)?;
            let visits: usize = cohort.patients.iter().map(|p| p.visits.len()).sum();
            eprintln!(
                "generated {} patients, {visits} visits, {} interacting pairs (seed {})",
                cohort.patients.len(),
                cohort.ddi_pairs.len(),
                args.seed
            );
            for f in files {
                eprintln!("  wrote {}", f.display());
            }
            Ok(())
        }
        Command::Train(args) => train_cmd(&cli.global, args).await,
        Command::Eval(args) => eval_cmd(&cli.global, args).await,
        Command::ImportWeights(args) => import_weights_cmd(&cli.global, args).await,
        Command::Serve(args) => serve(&cli.global, args).await,
        Command::Worker(args) => {
            let (pool, mut cluster) = database(&cli.global).await?;
            let result = worker_with(pool, args.jobs).await;
            stop(&mut cluster);
            result
        }
        Command::Bench {
            command: BenchCommand::Density(args),
        } => tokio::task::spawn_blocking(move || crate::ml::iresnet::bench::run(&args)).await?,
        Command::Bench {
            command: BenchCommand::Queue(args),
        } => {
            let (pool, mut cluster) = database(&cli.global).await?;
            let result = crate::jobs::bench::run(pool, &args).await;
            stop(&mut cluster);
            result
        }
        Command::Bench {
            command: BenchCommand::Serve(args),
        } => {
            let (pool, mut cluster) = database(&cli.global).await?;
            let result = crate::serving::bench::run(pool, &args).await;
            stop(&mut cluster);
            result
        }
        Command::Bench {
            command: BenchCommand::Fhir(args),
        } => {
            let (pool, mut cluster) = database(&cli.global).await?;
            let result = crate::fhir::bench::run(pool, &args).await;
            stop(&mut cluster);
            result
        }
    }
}

/// Loads a cohort from files or the database, with the split to use.
async fn load_cohort(
    global: &GlobalArgs,
    args: &crate::config::DataArgs,
) -> anyhow::Result<(
    Vec<crate::ml::data::RawPatient>,
    Vec<(String, String)>,
    Option<crate::ml::data::Split>,
)> {
    let (patients, pairs) = match &args.data {
        Some(path) => crate::ml::pipeline::load_path(path)?,
        None => {
            let (pool, mut cluster) = database(global).await?;
            db::migrate(&pool).await?;
            let patients = crate::import::load_patients(&pool, args.source.as_deref()).await?;
            let pairs: Vec<(String, String)> =
                sqlx::query_as("SELECT code_a, code_b FROM ddi_pairs")
                    .fetch_all(&pool)
                    .await?;
            pool.close().await;
            stop(&mut cluster);
            (patients, pairs)
        }
    };
    anyhow::ensure!(
        !patients.is_empty(),
        "the cohort is empty: import visits first (`medchange import`) or pass --data"
    );
    let split = match &args.split {
        Some(p) => Some(crate::ml::formats::read_split(p, patients.len())?),
        None => None,
    };
    Ok((patients, pairs, split))
}

async fn train_cmd(global: &GlobalArgs, args: crate::config::TrainArgs) -> anyhow::Result<()> {
    use crate::ml::{micron::TrainEvent, pipeline};
    let (patients, pairs, split) = load_cohort(global, &args.data).await?;
    let out = args.out.clone().unwrap_or_else(|| {
        let kind = match args.model {
            pipeline::ModelKind::Micron => "micron",
            pipeline::ModelKind::Gru => "gru",
        };
        std::path::PathBuf::from("models")
            .join(kind)
            .join(chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string())
    });
    let req = pipeline::TrainRequest {
        model: args.model,
        epochs: args.epochs,
        recipe: args.recipe,
        backend: args.backend,
        out: out.clone(),
    };
    let visits: usize = patients.iter().map(|p| p.visits.len()).sum();
    eprintln!(
        "training {:?} on {} patients ({visits} visits), {} epochs, backend {}",
        req.model,
        patients.len(),
        req.epochs,
        req.backend
    );
    let result = tokio::task::spawn_blocking(move || {
        let prep = pipeline::Prepared::new(&patients, &pairs, split, None)?;
        let (nd, np, nm) = prep.data.vocab.sizes();
        eprintln!("vocabularies from {} training patients: {nd} diagnoses, {np} procedures, {nm} medications", prep.split.train.len());
        let show = std::io::stderr().is_terminal();
        let pb = if show { indicatif::ProgressBar::new(0) } else { indicatif::ProgressBar::hidden() };
        pb.set_style(indicatif::ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} loss {msg} ETA {eta}").expect("template").progress_chars("=> "));
        let mut on_event = |e: &TrainEvent| match e {
            TrainEvent::Step { epoch, step, steps, loss } => {
                pb.set_length(*steps as u64);
                pb.set_position(*step as u64 + 1);
                pb.set_prefix(format!("{}", epoch + 1));
                pb.set_message(format!("{loss:.4}"));
            }
            TrainEvent::Epoch { report, best_epoch } => {
                pb.suspend(|| {
                    eprintln!(
                        "epoch {:>3}: loss {:.4}  val jaccard {:.4}  ({:.1}s train, {:.1}s val){}",
                        report.epoch + 1,
                        report.train_loss,
                        report.val_jaccard,
                        report.train_seconds,
                        report.val_seconds,
                        if *best_epoch == Some(report.epoch) { "  best" } else { "" }
                    )
                });
            }
        };
        let eval = pipeline::train_and_save(&req, &prep, &mut on_event, &|| false)?;
        pb.finish_and_clear();
        anyhow::Ok(eval)
    })
    .await??;
    eprintln!("saved {}", out.display());
    if let Some(trained) = result {
        println!("{}", trained.test.table());
    }
    Ok(())
}

async fn eval_cmd(global: &GlobalArgs, args: crate::config::EvalArgs) -> anyhow::Result<()> {
    use crate::ml::{baselines::gru::GruArtifact, micron::MicronArtifact, pipeline};
    let device = crate::ml::backend::BackendChoice::default().device();
    let micron = MicronArtifact::load(&args.model, &device)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let gru = match &args.gru {
        Some(dir) => Some(
            GruArtifact::load(dir, &device)
                .with_context(|| format!("loading {}", dir.display()))?,
        ),
        None => None,
    };
    let (patients, pairs, mut split) = load_cohort(global, &args.data).await?;
    // The model's own split, when it recorded one and none was given.
    let recorded = args.model.join(crate::ml::micron::SPLIT_FILE);
    if split.is_none() && recorded.exists() {
        let s: crate::ml::data::Split = serde_json::from_str(&std::fs::read_to_string(&recorded)?)?;
        if s.validate(patients.len()).is_ok() {
            split = Some(s);
        }
    }
    let prep = pipeline::Prepared::new(&patients, &pairs, split, Some(micron.vocab.clone()))?;
    let eval = pipeline::evaluate(
        Some(&micron),
        gru.as_ref().map(|g| &g.predictor),
        &prep,
        &args.part,
        args.calibrate,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&eval)?);
    } else {
        println!("{}", eval.table());
        if !prep.unknown.is_empty() {
            eprintln!(
                "note: {} codes unknown to the model's vocabularies were ignored",
                prep.unknown.total()
            );
        }
    }
    Ok(())
}

async fn import_weights_cmd(
    global: &GlobalArgs,
    args: crate::config::ImportWeightsArgs,
) -> anyhow::Result<()> {
    use crate::ml::micron::MicronArtifact;
    let device = crate::ml::backend::BackendChoice::default().device();
    let art = MicronArtifact::import_reference(&args.state_dict, &args.voc, &device).with_context(
        || {
            format!(
                "importing {} with {}",
                args.state_dict.display(),
                args.voc.display()
            )
        },
    )?;
    art.save(&args.out, &device)
        .with_context(|| format!("saving to {}", args.out.display()))?;
    let c = &art.config;
    eprintln!(
        "wrote {}: MICRON D = {}, vocabularies {} diagnoses, {} procedures, {} medications",
        args.out.display(),
        c.dim,
        c.n_diag,
        c.n_proc,
        c.n_med
    );
    if args.register {
        let (pool, mut cluster) = database(global).await?;
        let registry = crate::registry::Registry::new(pool.clone(), args.models_dir.clone());
        let result = match db::migrate(&pool).await {
            Ok(()) => registry
                .register_folder(&args.out, crate::registry::ModelKind::Micron, "import")
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        pool.close().await;
        stop(&mut cluster);
        let row = result?;
        println!("{}", row.id);
        eprintln!(
            "registered MICRON version {} (id {}, status {}); activate it with POST /v1/models/{}/activate",
            row.version, row.id, row.status, row.id
        );
    }
    Ok(())
}

fn stop(cluster: &mut Option<LocalCluster>) {
    if let Some(c) = cluster {
        c.stop();
    }
}

/// Connects to DATABASE_URL, or starts the project-local cluster.
async fn database(global: &GlobalArgs) -> anyhow::Result<(PgPool, Option<LocalCluster>)> {
    match &global.database_url {
        Some(url) => Ok((
            db::connect(url.expose(), global.db_pool)
                .await
                .context("connecting to DATABASE_URL")?,
            None,
        )),
        None => {
            let home = global.home.clone();
            let cluster = tokio::task::spawn_blocking(move || LocalCluster::start(&home)).await??;
            let url = cluster.ensure_database().await?;
            let pool = db::connect(&url, global.db_pool).await?;
            Ok((pool, Some(cluster)))
        }
    }
}

/// Makes sure an admin can get in: installs MEDCHANGE_ADMIN_KEY if given,
/// else creates and prints one key when no active admin key exists.
async fn bootstrap_admin(pool: &PgPool, given: Option<&str>) -> anyhow::Result<()> {
    if let Some(key) = given {
        anyhow::ensure!(
            key.len() >= 32,
            "MEDCHANGE_ADMIN_KEY must be at least 32 characters"
        );
        if !store::keys::exists(pool, key).await? {
            store::keys::insert(
                pool,
                "bootstrap admin (MEDCHANGE_ADMIN_KEY)",
                crate::domain::Role::Admin,
                key,
            )
            .await?;
            tracing::info!("installed the admin key from MEDCHANGE_ADMIN_KEY");
        }
        return Ok(());
    }
    if !store::keys::has_active_admin(pool).await? {
        let secret = store::keys::generate();
        store::keys::insert(pool, "first admin", crate::domain::Role::Admin, &secret).await?;
        let mut out = std::io::stdout();
        writeln!(
            out,
            "\nmedchange: created the first admin API key. It is shown once; store it now:\n\n    MEDCHANGE_ADMIN_KEY={secret}\n"
        )?;
        out.flush()?;
    }
    Ok(())
}

async fn serve(global: &GlobalArgs, args: ServeArgs) -> anyhow::Result<()> {
    let (pool, mut cluster) = database(global).await?;
    let result = serve_with(pool, &args).await;
    stop(&mut cluster);
    result
}

async fn serve_with(pool: PgPool, args: &ServeArgs) -> anyhow::Result<()> {
    db::migrate(&pool).await.context("applying migrations")?;
    bootstrap_admin(&pool, args.admin_key.as_ref().map(|s| s.expose())).await?;
    let cds = crate::cds::jwt::CdsAuth::from_args(&args.cds).context("CDS Hooks settings")?;
    let state = AppState::with_jobs(
        pool.clone(),
        args.http.clone(),
        args.jobs.clone(),
        crate::jobs::JobKinds::builtin(),
    )
    .with_cds(cds);
    // A fresh install serves the shipped default models at once.
    let shipped = state
        .registry
        .register_shipped(&args.jobs.shipped_models)
        .await
        .context("registering the shipped models")?;
    for m in &shipped {
        tracing::info!(kind = %m.kind, version = %m.version, "shipped model registered and activated");
    }
    state
        .registry
        .refresh()
        .await
        .context("loading the active models")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let refresher = tokio::spawn(refresh_models(state.clone(), stop_rx.clone()));
    let workers = spawn_workers(&state, args.jobs.workers, &stop_rx);
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("binding {}", args.bind))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    println!("medchange: listening on http://{addr} (API docs at http://{addr}/docs)");
    let dashboard = &args.http.dashboard_dir;
    if crate::http::dashboard::is_built(dashboard) {
        println!(
            "medchange: dashboard at http://{addr}/ (from {})",
            dashboard.display()
        );
    } else {
        tracing::warn!(dir = %dashboard.display(), "the dashboard is not built; serving the API only");
        println!(
            "medchange: the dashboard is not built ({} has no index.html): the API runs without it; \
             scripts/serve builds it when Node.js is installed (or run `npm ci && npm run build` in frontend/)",
            dashboard.display()
        );
    }
    let _ = std::io::stdout().flush();
    let closing = state.shutdown.clone();
    let served = axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            closing.send_replace(true); // ends open event streams
        })
        .await;
    tracing::info!("shutting down: stopping the workers (a running job is requeued)");
    let _ = stop_tx.send(true);
    for w in workers {
        let _ = w.await;
    }
    refresher.abort();
    pool.close().await;
    served?;
    Ok(())
}

/// Starts `n` job workers; they stop when `stop` turns true.
fn spawn_workers(
    state: &AppState,
    n: usize,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            tokio::spawn(
                state
                    .worker(crate::jobs::worker::owner_name(i))
                    .run(stop.clone()),
            )
        })
        .collect()
}

/// Follows activations made by other replicas (and automatic promotions by
/// workers elsewhere).
async fn refresh_models(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(state.jobs.model_refresh()) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = state.registry.refresh().await {
            tracing::warn!(error = %e, "refreshing the active models failed");
        }
    }
}

/// `medchange worker`: job workers only, until SIGINT/SIGTERM.
async fn worker_with(pool: PgPool, jobs: JobsArgs) -> anyhow::Result<()> {
    db::migrate(&pool).await.context("applying migrations")?;
    let n = jobs.workers.max(1);
    let state = AppState::with_jobs(
        pool.clone(),
        Default::default(),
        jobs,
        crate::jobs::JobKinds::builtin(),
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let workers = spawn_workers(&state, n, &stop_rx);
    eprintln!(
        "medchange: {n} worker(s) running (kinds: {}); Ctrl-C stops them",
        state.kinds.names().join(", ")
    );
    shutdown_signal().await;
    tracing::info!("stopping the workers (a running job is requeued)");
    let _ = stop_tx.send(true);
    for w in workers {
        let _ = w.await;
    }
    pool.close().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
