//! The zero-configuration start: the built binary with no DATABASE_URL, in
//! an empty folder, starts its own PostgreSQL cluster, serves, and stops
//! everything on SIGTERM.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

#[tokio::test]
async fn binary_starts_with_nothing_configured() {
    let dir = std::env::temp_dir().join(format!("medchange-zero-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_medchange"))
        .current_dir(&dir)
        .env_remove("DATABASE_URL")
        .env_remove("MEDCHANGE_HOME")
        .env_remove("MEDCHANGE_ADMIN_KEY")
        .env("MEDCHANGE_BIND", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    // The first admin key and the address are printed on stdout.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut key, mut addr) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(120);
    while key.is_none() || addr.is_none() {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("server did not start in time");
        if let Some(k) = line.trim().strip_prefix("MEDCHANGE_ADMIN_KEY=") {
            key = Some(k.to_string());
        }
        if let Some(rest) = line.split("listening on ").nth(1) {
            addr = Some(rest.split_whitespace().next().unwrap().to_string());
        }
    }
    let (key, addr) = (key.unwrap(), addr.unwrap());
    assert!(dir.join(".medchange/pgdata/PG_VERSION").exists(), "cluster lives inside the project folder");

    let http = reqwest::Client::new();
    let ready = http.get(format!("{addr}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let r = http
        .post(format!("{addr}/v1/patients"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"external_id": "ZERO-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "server did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "clean exit: {status:?}");
    assert!(!dir.join(".medchange/pgdata/postmaster.pid").exists(), "the cluster was stopped");
    let _ = std::fs::remove_dir_all(&dir);
}
