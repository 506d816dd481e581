//! `spot-canvas migrate up|down|status` against a real PostgreSQL.

use crate::common;

use std::process::Command;

use common::TestDb;
use secrecy::ExposeSecret;

fn migrate(db: &TestDb, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_spot-canvas"))
        .arg("migrate")
        .args(args)
        .env_clear()
        .env("DATABASE_URL", db.url.expose_secret())
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn migrate_status_up_and_down_work_from_the_command_line() {
    let db = TestDb::new().await;
    assert!(migrate(&db, &["status"]).contains("pending"));
    assert!(migrate(&db, &["up"]).contains("plain"));
    let status = migrate(&db, &["status"]);
    assert!(
        status.contains("applied") && !status.contains("pending"),
        "{status}"
    );
    migrate(&db, &["down"]);
    assert!(migrate(&db, &["status"]).contains("pending"));
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('live_candles') IS NOT NULL")
        .fetch_one(&db.pool)
        .await
        .expect("query");
    assert!(!exists, "down dropped the tables");
}
