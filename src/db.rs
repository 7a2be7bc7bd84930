//! Database connection and migrations.
use std::time::Duration;

use sqlx::{
    ConnectOptions, PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// The embedded migrations of `migrations/`.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// Opens a pool. Statement logging is off: statements are fine, but slow
/// statement warnings would print bound values, which can be patient data.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let opts: PgConnectOptions = url.parse()?;
    let opts = opts.disable_statement_logging().application_name("medchange");
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await?;
    Ok(pool)
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}
