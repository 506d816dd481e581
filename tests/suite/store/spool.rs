//! Rows not written at a stop: spooled to disk or to JetStream and written by the next start.

use super::*;

/// Runs `writer` (fed by `tx`): one row of `product` written, then PostgreSQL stopped, 20
/// more rows sent and a flush failed, then the stop (its input closed) in the middle of a
/// backoff. Returns the writer's stats and how long the stop took.
async fn stop_while_the_database_is_away(
    db: &TestDb,
    writer: BatchWriter,
    tx: mpsc::Sender<Vec<CandleUpdate>>,
    product: &str,
) -> (std::sync::Arc<spot_canvas::store::WriterStats>, Duration) {
    let stats = writer.stats();
    let task = tokio::spawn(writer.run());
    tx.send(vec![update(product, T0, 0, 1, "1")])
        .await
        .expect("send");
    wait_for("the first row written", Duration::from_secs(20), || async {
        stats.report().written_rows == 1
    })
    .await;
    db.pg.stop_with("immediate").await.expect("stop");
    tx.send(
        (0..20)
            .map(|k| update(product, T0 + 60 * k, 0, 5, "5"))
            .collect(),
    )
    .await
    .expect("send");
    wait_for("a failed flush", Duration::from_secs(20), || async {
        stats.report().failures > 0
    })
    .await;
    let stopping = std::time::Instant::now();
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the stop is bounded")
        .expect("join")
        .expect("writer");
    (stats, stopping.elapsed())
}

#[tokio::test]
async fn rows_not_written_by_the_stop_are_spooled_and_written_after_the_next_start() {
    let db = TestDb::migrated().await;
    let data = tempfile::tempdir().expect("dir");
    let spool = spot_canvas::store::Spool::in_dir(data.path());
    let settings = WriterSettings {
        retry_base: Duration::from_secs(30),
        retry_cap: Duration::from_secs(30),
        ..WriterSettings::default()
    };
    let (tx, rx) = mpsc::channel(4);
    let writer =
        BatchWriter::new(Repository::new(db.pool.clone()), settings, rx).with_spool(spool.clone());
    // The stop, in the middle of a 15-30 s backoff: no wait for it.
    let (stats, took) = stop_while_the_database_is_away(&db, writer, tx, "XRP-USD").await;
    assert!(took < Duration::from_secs(5), "{took:?}");
    let report = stats.report();
    assert_eq!((report.kept_at_stop, report.pending), (20, 0), "{report:?}");
    assert!(spool.path().exists());

    // The next start: the database is back; the writer writes the spool and removes it.
    db.pg.restart().await.expect("restart");
    let (tx, rx) = mpsc::channel(4);
    let writer = BatchWriter::new(Repository::new(db.pool.clone()), settings, rx)
        .with_spool(spot_canvas::store::Spool::in_dir(data.path()));
    let stats = writer.stats();
    let task = tokio::spawn(writer.run());
    wait_for("the spool written", Duration::from_secs(60), || async {
        stats.report().recovered == 20
    })
    .await;
    wait_for("the spool removed", Duration::from_secs(5), || async {
        !spool.path().exists()
    })
    .await;
    drop(tx);
    task.await.expect("join").expect("writer");
    let stored = counts(&db.pool).await;
    assert_eq!(stored.len(), 20);
    assert!(stored.values().all(|n| *n == 5), "{stored:?}");
}

/// A real `nats-server` with JetStream (stopped on drop) and a client of it.
struct TestNats {
    server: spot_canvas::bus::EmbeddedNats,
    _dir: tempfile::TempDir,
}

impl TestNats {
    async fn start() -> TestNats {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = spot_canvas::bus::EmbeddedNats::start(None, dir.path())
            .await
            .expect("nats-server starts");
        TestNats { server, _dir: dir }
    }

    /// A new connection, as a new process would have.
    async fn client(&self) -> async_nats::Client {
        spot_canvas::bus::connect(&self.server.client_url(), "test", |_| async {})
            .await
            .expect("connects")
    }
}

/// Messages in the writer's JetStream spool.
async fn spooled_messages(client: &async_nats::Client) -> u64 {
    let js = async_nats::jetstream::new(client.clone());
    let stream = js
        .get_stream(spot_canvas::store::stream_spool::STREAM)
        .await
        .expect("the stream");
    stream.get_info().await.expect("info").state.messages
}

#[tokio::test]
async fn rows_kept_at_a_stop_go_to_jetstream_and_the_next_writer_writes_and_acks_them() {
    use spot_canvas::store::{Spool, StreamSpool};
    let db = TestDb::migrated().await;
    let nats = TestNats::start().await;
    let data = tempfile::tempdir().expect("dir");
    let spool = Spool::in_dir(data.path());
    let settings = WriterSettings {
        retry_base: Duration::from_secs(30),
        retry_cap: Duration::from_secs(30),
        ..WriterSettings::default()
    };
    let (tx, rx) = mpsc::channel(4);
    let writer = BatchWriter::new(Repository::new(db.pool.clone()), settings, rx)
        .with_spool(spool.clone())
        .with_stream_spool(StreamSpool::new(nats.client().await, 1));
    let (stats, took) = stop_while_the_database_is_away(&db, writer, tx, "SOL-USD").await;
    assert!(took < Duration::from_secs(5));
    let report = stats.report();
    assert_eq!((report.kept_at_stop, report.pending), (20, 0), "{report:?}");
    assert!(!spool.path().exists(), "JetStream took them: no file");
    let observer = nats.client().await;
    assert!(spooled_messages(&observer).await >= 1);

    // The next start, another process: PostgreSQL still away at first.
    let (tx, rx) = mpsc::channel(4);
    let writer = BatchWriter::new(
        Repository::new(db.pool.clone()),
        WriterSettings {
            retry_base: Duration::from_millis(200),
            retry_cap: Duration::from_millis(500),
            ..WriterSettings::default()
        },
        rx,
    )
    .with_spool(Spool::in_dir(data.path()))
    .with_stream_spool(StreamSpool::new(nats.client().await, 1));
    let stats = writer.stats();
    let task = tokio::spawn(writer.run());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stats.report().recovered, 0);
    assert!(
        spooled_messages(&observer).await >= 1,
        "not acked while unwritten"
    );
    db.pg.restart().await.expect("restart");
    wait_for("the kept rows written", Duration::from_secs(60), || async {
        stats.report().recovered == 20
    })
    .await;
    wait_for("the stream empty", Duration::from_secs(10), || async {
        spooled_messages(&observer).await == 0
    })
    .await;
    drop(tx);
    task.await.expect("join").expect("writer");
    let stored = counts(&db.pool).await;
    assert_eq!(stored.len(), 20);
    assert!(stored.values().all(|n| *n == 5), "{stored:?}");
    assert!(!spool.path().exists());
}

#[tokio::test]
async fn a_message_of_the_jetstream_spool_that_cannot_be_read_is_lost_alone() {
    use spot_canvas::store::StreamSpool;
    use spot_canvas::store::stream_spool::{ROWS_HEADER, SUBJECT};
    let db = TestDb::migrated().await;
    let nats = TestNats::start().await;
    let client = nats.client().await;
    let stream = StreamSpool::new(client.clone(), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    // Good rows, then two messages that cannot be read, then good rows again.
    let first = stream
        .keep(
            (0..3)
                .map(|k| update("DOT-USD", T0 + 60 * k, 0, 2, "2"))
                .collect(),
            deadline,
        )
        .await;
    assert_eq!((first.acked, first.unacked.len()), (3, 0));
    let js = async_nats::jetstream::new(client.clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(ROWS_HEADER, "3");
    js.publish_with_headers(
        SUBJECT,
        headers,
        "{\"spot_canvas_spool\":1,\"rows\":[{".into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");
    js.publish(SUBJECT, "\u{0}\r\u{1b}[31m not json".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    let last = stream
        .keep(
            (3..5)
                .map(|k| update("DOT-USD", T0 + 60 * k, 0, 2, "2"))
                .collect(),
            deadline,
        )
        .await;
    assert_eq!(last.acked, 2);
    assert_eq!(spooled_messages(&client).await, 4);

    let (tx, rx) = mpsc::channel(4);
    let data = tempfile::tempdir().expect("dir");
    let writer = BatchWriter::new(
        Repository::new(db.pool.clone()),
        WriterSettings::default(),
        rx,
    )
    .with_spool(spot_canvas::store::Spool::in_dir(data.path()))
    .with_stream_spool(StreamSpool::new(nats.client().await, 1));
    let stats = writer.stats();
    let task = tokio::spawn(writer.run());
    wait_for("the good rows written", Duration::from_secs(30), || async {
        stats.report().recovered == 5
    })
    .await;
    wait_for("the stream empty", Duration::from_secs(10), || async {
        spooled_messages(&client).await == 0
    })
    .await;
    assert_eq!(
        stats.report().recovery_lost,
        4,
        "3 named in the header, 1 without"
    );
    drop(tx);
    task.await.expect("join").expect("writer");
    assert_eq!(counts(&db.pool).await.len(), 5);
}
