//! The `medchange` command line.
use std::io::{IsTerminal, Write};

use anyhow::Context;
use clap::Parser;
use sqlx::PgPool;

use crate::{
    app::{AppState, app},
    config::{Cli, Command, GlobalArgs, ImportCommand, KeysCommand, ServeArgs},
    db, pgcluster::LocalCluster, store, telemetry,
};

pub fn main() -> std::process::ExitCode {
    let mut cli = Cli::parse();
    if cli.command.is_none() {
        // `serve` is the default: parse again so its flags and environment apply.
        cli = Cli::parse_from(std::env::args_os().chain([std::ffi::OsString::from("serve")]));
    }
    telemetry::init(cli.global.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
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
        Command::Keys { command: KeysCommand::Create { role, name } } => {
            let (pool, mut cluster) = database(&cli.global).await?;
            db::migrate(&pool).await?;
            let secret = store::keys::generate();
            let key = store::keys::insert(&pool, name.trim(), role, &secret).await?;
            pool.close().await;
            stop(&mut cluster);
            eprintln!("created {} key {} ({}); the secret is shown once:", role.as_str(), key.id, key.name);
            println!("{secret}");
            Ok(())
        }
        Command::Import { what } => {
            let (pool, mut cluster) = database(&cli.global).await?;
            db::migrate(&pool).await?;
            let show = std::io::stderr().is_terminal();
            let result = match what {
                ImportCommand::Native { file, source } => crate::import::native(&pool, &file, &source, show).await,
                ImportCommand::Micron { dir, source } => crate::import::micron(&pool, &dir, &source, show).await,
                ImportCommand::Ddi { file, source } => crate::import::ddi(&pool, &file, &source, show).await,
            };
            pool.close().await;
            stop(&mut cluster);
            eprintln!("{}", result?);
            Ok(())
        }
        Command::Synth(args) => {
            let cfg = crate::ml::synth::SynthConfig { seed: args.seed, patients: args.patients, ..Default::default() };
            let cohort = crate::ml::synth::generate(&cfg).map_err(|e| anyhow::anyhow!("{}", e.0))?;
            let files = crate::ml::synth::write_cohort(&cohort, &args.out)?;
            let visits: usize = cohort.patients.iter().map(|p| p.visits.len()).sum();
            eprintln!("generated {} patients, {visits} visits, {} interacting pairs (seed {})", cohort.patients.len(), cohort.ddi_pairs.len(), args.seed);
            for f in files {
                eprintln!("  wrote {}", f.display());
            }
            Ok(())
        }
        Command::Serve(args) => serve(&cli.global, args).await,
    }
}

fn stop(cluster: &mut Option<LocalCluster>) {
    if let Some(c) = cluster {
        c.stop();
    }
}

/// Connects to DATABASE_URL, or starts the project-local cluster.
async fn database(global: &GlobalArgs) -> anyhow::Result<(PgPool, Option<LocalCluster>)> {
    match &global.database_url {
        Some(url) => Ok((db::connect(url.expose(), global.db_pool).await.context("connecting to DATABASE_URL")?, None)),
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
        anyhow::ensure!(key.len() >= 32, "MEDCHANGE_ADMIN_KEY must be at least 32 characters");
        if !store::keys::exists(pool, key).await? {
            store::keys::insert(pool, "bootstrap admin (MEDCHANGE_ADMIN_KEY)", crate::domain::Role::Admin, key).await?;
            tracing::info!("installed the admin key from MEDCHANGE_ADMIN_KEY");
        }
        return Ok(());
    }
    if !store::keys::has_active_admin(pool).await? {
        let secret = store::keys::generate();
        store::keys::insert(pool, "first admin", crate::domain::Role::Admin, &secret).await?;
        let mut out = std::io::stdout();
        writeln!(out, "\nmedchange: created the first admin API key. It is shown once; store it now:\n\n    MEDCHANGE_ADMIN_KEY={secret}\n")?;
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
    let state = AppState::new(pool.clone(), args.http.clone());
    let listener = tokio::net::TcpListener::bind(args.bind).await.with_context(|| format!("binding {}", args.bind))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    println!("medchange: listening on http://{addr} (API docs at http://{addr}/docs)");
    let _ = std::io::stdout().flush();
    axum::serve(listener, app(state)).with_graceful_shutdown(shutdown_signal()).await?;
    tracing::info!("shutting down");
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

