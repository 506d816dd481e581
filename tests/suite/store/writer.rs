//! The writer: coalescing, retries while the database is down or hung, and large flushes.

use super::*;

#[tokio::test]
async fn the_writer_coalesces_per_key_and_flushes_everything_when_its_input_closes() {
    let db = TestDb::migrated().await;
    let repo = Repository::new(db.pool.clone());
    let (tx, rx) = mpsc::channel(16);
    let writer = BatchWriter::new(repo.clone(), WriterSettings::default(), rx);
    let stats = writer.stats();
    let task = tokio::spawn(writer.run());
    // 20 keys, each updated 30 times with growing trade counts.
    for round in 1..=30u64 {
        let batch: Vec<CandleUpdate> = (0..20)
            .map(|k| update("SOL-USD", T0 + 60 * k, 0, round, &round.to_string()))
            .collect();
        tx.send(batch).await.expect("send");
    }
    drop(tx);
    task.await.expect("join").expect("writer");
    let stored = repo
        .candles(
            &spot_canvas::model::ProductId::from_static("SOL-USD"),
            Granularity::OneMinute,
            at(T0),
            at(T0 + 3600),
            100,
        )
        .await
        .expect("query");
    assert_eq!(stored.len(), 20);
    assert!(
        stored.iter().all(|s| s.candle.trade_count == Some(30)),
        "final state"
    );
    let report = stats.report();
    assert_eq!(report.received, 600);
    assert!(report.written_rows < 600, "coalesced: {report:?}");
    assert_eq!(report.pending, 0);
}

#[tokio::test]
async fn the_writer_keeps_receiving_and_retries_while_the_database_is_down() {
    let db = TestDb::migrated().await;
    let repo = Repository::new(db.pool.clone());
    let (tx, rx) = mpsc::channel(4);
    let writer = BatchWriter::new(
        repo.clone(),
        WriterSettings {
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_millis(500),
            ..WriterSettings::default()
        },
        rx,
    );
    let stats = writer.stats();
    let task = tokio::spawn(writer.run());
    tx.send(vec![update("ADA-USD", T0, 0, 1, "1")])
        .await
        .expect("send");
    wait_for("the first row written", Duration::from_secs(20), || async {
        stats.report().written_rows == 1
    })
    .await;
    db.pg.stop_with("immediate").await.expect("stop");
    // The channel holds 4 batches: sending 200 in quick succession only works if the writer
    // keeps taking them while every write fails.
    let sending = async {
        for round in 2..=200u64 {
            tx.send(vec![update(
                "ADA-USD",
                T0 + 60 * (round % 10) as i64,
                0,
                round,
                "2",
            )])
            .await
            .expect("send");
        }
    };
    tokio::time::timeout(Duration::from_secs(5), sending)
        .await
        .expect("the writer never blocks its sender");
    wait_for(
        "writes failing while down",
        Duration::from_secs(15),
        || async { stats.report().failures > 0 },
    )
    .await;
    db.pg.restart().await.expect("start again");
    drop(tx);
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("flushes once the database is back")
        .expect("join")
        .expect("writer");
    let stored = repo
        .candles(
            &spot_canvas::model::ProductId::from_static("ADA-USD"),
            Granularity::OneMinute,
            at(T0),
            at(T0 + 600),
            100,
        )
        .await
        .expect("query");
    assert_eq!(stored.len(), 10);
    for s in &stored {
        let k = (s.candle.start.timestamp() - T0) / 60;
        let last_round = (191..=200u64).find(|r| r % 10 == k as u64).expect("round");
        assert_eq!(s.candle.trade_count, Some(last_round), "key {k}");
    }
}

/// The PostgreSQL server processes of a test cluster (the postmaster and its children),
/// stopped with SIGSTOP: a database that hangs without closing anything. Continued on drop,
/// so a failing test never leaves a frozen cluster behind (nor a `TestDb` drop that waits
/// on it).
struct Frozen {
    pids: Vec<String>,
}

impl Frozen {
    fn stop(db: &TestDb) -> Frozen {
        let pidfile = db.pg.cluster_dir().join("postmaster.pid");
        let postmaster = std::fs::read_to_string(&pidfile).expect("postmaster.pid");
        let postmaster = postmaster
            .lines()
            .next()
            .expect("a pid line")
            .trim()
            .to_owned();
        // The postmaster first: once it is stopped it forks no new children.
        signal("-STOP", std::slice::from_ref(&postmaster));
        let mut pids = vec![postmaster.clone()];
        pids.extend(children_of(&postmaster));
        signal("-STOP", &pids);
        Frozen { pids }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", &self.pids);
    }
}

fn children_of(parent: &str) -> Vec<String> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: the command may hold spaces, so read after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if ppid == Some(parent) {
            children.push(name);
        }
    }
    children
}

fn signal(which: &str, pids: &[String]) {
    let status = std::process::Command::new("kill")
        .arg(which)
        .args(pids)
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {which} {pids:?}");
}

#[tokio::test]
async fn a_hung_database_hangs_neither_the_writer_nor_its_stop_and_loses_nothing() {
    let db = TestDb::migrated().await;
    // The writer's own pool, as in the service (the test's pool stays free for checks).
    let pool = spot_canvas::store::connect(&db.url)
        .await
        .expect("connects");
    let (tx, rx) = mpsc::channel(4);
    let writer = BatchWriter::new(
        Repository::new(pool),
        WriterSettings {
            flush_timeout: Duration::from_secs(1),
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_millis(500),
            ..WriterSettings::default()
        },
        rx,
    );
    let stats = writer.stats();
    let task = tokio::spawn(writer.run());
    tx.send(vec![update("DOT-USD", T0, 0, 1, "1")])
        .await
        .expect("send");
    wait_for("the first row written", Duration::from_secs(20), || async {
        stats.report().written_rows == 1
    })
    .await;
    // A statement in flight when the server hangs: another transaction holds the table, so
    // the writer's next upsert waits on the lock; then every server process is stopped.
    let mut locker = db.pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE live_candles IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .expect("lock");
    tx.send(vec![update("DOT-USD", T0, 0, 2, "2")])
        .await
        .expect("send");
    wait_for(
        "an upsert waiting on the lock",
        Duration::from_secs(20),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query LIKE '%INSERT INTO live_candles%'",
            )
            .fetch_one(&db.pool)
            .await
            .expect("activity");
            waiting > 0
        },
    )
    .await;
    let frozen = Frozen::stop(&db);
    // The writer keeps taking updates (the channel holds 4 batches) while nothing answers.
    let sending = async {
        for round in 3..=100u64 {
            let batch = (0..10)
                .map(|k| update("DOT-USD", T0 + 60 * k, 0, round, "3"))
                .collect();
            tx.send(batch).await.expect("send");
        }
    };
    tokio::time::timeout(Duration::from_secs(10), sending)
        .await
        .expect("the writer never blocks its sender");
    // Flushes are abandoned after their timeout and retried, not waited on forever.
    wait_for(
        "hung flushes abandoned",
        Duration::from_secs(30),
        || async { stats.report().timeouts >= 2 },
    )
    .await;
    // The stop: the input closes while the database still hangs. The writer keeps retrying
    // (each attempt bounded by its timeout) and holds every row.
    drop(tx);
    let before = stats.report().timeouts;
    wait_for(
        "retries after the input closed",
        Duration::from_secs(30),
        || async { stats.report().timeouts > before },
    )
    .await;
    assert!(
        !task.is_finished(),
        "nothing is dropped while the database hangs"
    );
    assert!(stats.report().pending > 0 || stats.report().failures > 0);
    drop(frozen);
    locker.rollback().await.expect("release the lock");
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the writer finishes once the database answers again")
        .expect("join")
        .expect("writer");
    let stored = counts(&db.pool).await;
    assert_eq!(stored.len(), 10, "{stored:?}");
    for k in 0..10 {
        assert_eq!(
            stored.get(&("DOT-USD".to_owned(), T0 + 60 * k)),
            Some(&100),
            "key {k}"
        );
    }
}

#[tokio::test]
async fn the_writer_stores_a_flush_of_over_5000_rows_in_several_statements() {
    let db = TestDb::migrated().await;
    // Counts the rows each INSERT statement on live_candles inserted.
    for ddl in [
        "CREATE TABLE statement_rows (n bigint NOT NULL)",
        "CREATE FUNCTION count_statement_rows() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN INSERT INTO statement_rows SELECT count(*) FROM new_rows; RETURN NULL; END $$",
        "CREATE TRIGGER count_statement_rows AFTER INSERT ON live_candles \
         REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT \
         EXECUTE FUNCTION count_statement_rows()",
    ] {
        sqlx::query(ddl).execute(&db.pool).await.expect(ddl);
    }
    let repo = Repository::new(db.pool.clone());
    let (tx, rx) = mpsc::channel(16);
    // Nothing is flushed before the input closes: then all 12,000 rows in one flush.
    let writer = BatchWriter::new(
        repo,
        WriterSettings {
            max_rows: 100_000,
            flush_interval: Duration::from_secs(3600),
            ..WriterSettings::default()
        },
        rx,
    );
    let stats = writer.stats();
    let task = tokio::spawn(writer.run());
    const ROWS: i64 = 12_000;
    for chunk in 0..12 {
        let batch = (chunk * 1_000..(chunk + 1) * 1_000)
            .map(|i| {
                update(
                    &format!("P{:03}-USD", i % 100),
                    T0 + 60 * (i / 100),
                    0,
                    7,
                    "7",
                )
            })
            .collect();
        tx.send(batch).await.expect("send");
    }
    drop(tx);
    tokio::time::timeout(Duration::from_secs(120), task)
        .await
        .expect("written in time")
        .expect("join")
        .expect("writer");
    let report = stats.report();
    assert_eq!(report.batches, 1, "one flush: {report:?}");
    assert_eq!(report.written_rows, ROWS as u64);
    let stored = counts(&db.pool).await;
    assert_eq!(stored.len(), ROWS as usize);
    assert!(stored.values().all(|n| *n == 7));
    let mut statements: Vec<i64> = sqlx::query_scalar("SELECT n FROM statement_rows")
        .fetch_all(&db.pool)
        .await
        .expect("statement counts");
    statements.sort_unstable();
    assert_eq!(statements, vec![2_000, 5_000, 5_000]);
}
