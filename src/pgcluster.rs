//! The project-local PostgreSQL cluster used when no `DATABASE_URL` is set:
//! initdb / pg_ctl from the installed server binaries, a data folder under
//! the project's home folder, a free port on 127.0.0.1 and no Unix socket.
//! PostgreSQL refuses to run as root, so as root the cluster runs as the
//! `postgres` system user.
use std::{
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

pub const INSTALL_HINT: &str = "PostgreSQL server binaries (initdb, pg_ctl) were not found. Install them \
    (Debian/Ubuntu: `apt-get install postgresql`; Fedora: `dnf install postgresql-server`; \
    macOS: `brew install postgresql`), or set DATABASE_URL to use an existing server.";

#[derive(Debug)]
pub struct LocalCluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    started_by_us: bool,
    stopped: bool,
}

/// Finds the directory holding `initdb` and `pg_ctl`.
pub fn find_bindir() -> Option<PathBuf> {
    let has_both = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if has_both(&d) {
                return Some(d);
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_both(&d) {
            return Some(d);
        }
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .filter(|(_, d)| has_both(d))
        .collect();
    debian.sort();
    debian.pop().map(|(_, d)| d)
}

/// uid/gid of a system user, read from /etc/passwd.
fn system_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?))).flatten()
    })
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

impl LocalCluster {
    /// Starts (initialising on first use) the cluster under `home`, or
    /// attaches to it if it is already running.
    pub fn start(home: &Path) -> anyhow::Result<Self> {
        let bin = find_bindir().context(INSTALL_HINT)?;
        std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
        let home = home.canonicalize()?;
        let run_as = if is_root() {
            Some(system_user("postgres").context(
                "running as root: PostgreSQL must run as another user, and no `postgres` system user exists; \
                 create one or set DATABASE_URL",
            )?)
        } else {
            None
        };
        let mut data = home.join("pgdata");
        if let Some((uid, gid)) = run_as {
            // The postgres user must be able to reach the data folder; a home
            // under /root is not reachable, so fall back to a private folder.
            if !Self::reachable_by(&home, uid, gid) {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::hash::Hash::hash(&home, &mut h);
                data = std::env::temp_dir().join(format!("medchange-pgdata-{:016x}", std::hash::Hasher::finish(&h)));
                tracing::warn!(data = %data.display(), "project folder not reachable by the postgres user; cluster data goes to a temporary folder");
            }
        }
        let mut c = LocalCluster { bin, data, port: 0, run_as, started_by_us: false, stopped: false };
        c.init()?;
        c.start_or_attach()?;
        Ok(c)
    }

    fn reachable_by(dir: &Path, uid: u32, gid: u32) -> bool {
        Command::new("test").arg("-x").arg(dir).uid(uid).gid(gid).status().map(|s| s.success()).unwrap_or(false)
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid);
        }
        c.env_remove("PGDATA").env("LC_ALL", "C").stdin(Stdio::null());
        c
    }

    fn run(&self, mut cmd: Command, what: &str) -> anyhow::Result<()> {
        let out = cmd.output().with_context(|| format!("running {what}"))?;
        if !out.status.success() {
            bail!("{what} failed: {}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
        }
        Ok(())
    }

    fn init(&self) -> anyhow::Result<()> {
        if self.data.join("PG_VERSION").exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.data)?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&self.data, Some(uid), Some(gid))?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.data, std::fs::Permissions::from_mode(0o700))?;
        tracing::info!(data = %self.data.display(), "initialising a project-local PostgreSQL cluster");
        let mut c = self.cmd("initdb");
        c.arg("-D").arg(&self.data).args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-instructions"]);
        self.run(c, "initdb")
    }

    fn running_port(&self) -> Option<u16> {
        let status = self.cmd("pg_ctl").arg("status").arg("-D").arg(&self.data).stdout(Stdio::null()).status().ok()?;
        if !status.success() {
            return None;
        }
        // postmaster.pid: line 4 is the port.
        std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?.lines().nth(3)?.trim().parse().ok()
    }

    fn start_or_attach(&mut self) -> anyhow::Result<()> {
        if let Some(port) = self.running_port() {
            tracing::info!(port, "attaching to the already running project-local PostgreSQL cluster");
            self.port = port;
            return Ok(());
        }
        self.port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut c = self.cmd("pg_ctl");
        c.arg("start").arg("-D").arg(&self.data).args(["-w", "-t", "60", "-l"]).arg(self.data.join("server.log")).arg("-o").arg(
            format!("-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=200", self.port),
        );
        self.run(c, "pg_ctl start").with_context(|| format!("see {}", self.data.join("server.log").display()))?;
        self.started_by_us = true;
        tracing::info!(port = self.port, "project-local PostgreSQL cluster started");
        Ok(())
    }

    /// URL of the cluster's `postgres` database.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// URL of the service's database (`medchange`), created when missing.
    pub async fn ensure_database(&self) -> anyhow::Result<String> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.admin_url()).await?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'medchange')")
            .fetch_one(&mut conn)
            .await?;
        if !exists {
            sqlx::query("CREATE DATABASE medchange").execute(&mut conn).await?;
        }
        conn.close().await?;
        Ok(format!("postgres://postgres@127.0.0.1:{}/medchange", self.port))
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Stops the cluster if this process started it.
    pub fn stop(&mut self) {
        if self.stopped || !self.started_by_us {
            return;
        }
        self.stopped = true;
        let mut c = self.cmd("pg_ctl");
        c.arg("stop").arg("-D").arg(&self.data).args(["-m", "fast", "-w", "-t", "60"]);
        match self.run(c, "pg_ctl stop") {
            Ok(()) => tracing::info!("project-local PostgreSQL cluster stopped"),
            Err(e) => tracing::error!(error = format!("{e:#}"), "could not stop the project-local PostgreSQL cluster"),
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
