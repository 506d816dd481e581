//! Authenticated subscriptions: an accepted key, a wrong signature, a refused key, and no secret in
//! the logs.

use super::*;

fn ec_credentials() -> (CoinbaseCredentials, String) {
    use p256::pkcs8::LineEnding;
    let pem = p256::SecretKey::from_slice(&[0x42; 32])
        .expect("key")
        .to_sec1_pem(LineEnding::LF)
        .expect("pem")
        .to_string();
    (
        CoinbaseCredentials {
            api_key: "organizations/o/apiKeys/k".into(),
            private_key: SecretString::from(pem.clone()),
        },
        pem,
    )
}

/// Collects every log line written while it is the thread's default subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the simulator does with the feed's tokens.
#[derive(Clone, Copy)]
enum SimAuth {
    /// Verifies them with the public half of the feed's key.
    VerifyWithTheKey,
    /// Verifies them with the public half of another key.
    VerifyWithAnotherKey,
    /// Refuses every token.
    RejectAll,
}

fn public_pem(byte: u8) -> String {
    use p256::pkcs8::{EncodePublicKey, LineEnding};
    p256::SecretKey::from_slice(&[byte; 32])
        .expect("key")
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("pem")
}

async fn authenticated_run(auth: SimAuth) -> (FeedReport, String, String, Simulator) {
    let (credentials, pem) = ec_credentials();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let public_key = match auth {
        SimAuth::VerifyWithTheKey => Some(public_pem(0x42)),
        SimAuth::VerifyWithAnotherKey => Some(public_pem(0x43)),
        SimAuth::RejectAll => None,
    };
    let sim = Simulator::start(SimConfig {
        products: 1,
        trades_per_second: 10.0,
        history_minutes: 5,
        reject_jwt: matches!(auth, SimAuth::RejectAll),
        jwt_key_name: public_key.as_ref().map(|_| credentials.api_key.clone()),
        jwt_public_key: public_key,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let mut s = settings(&sim, Some(&["BTC-USD"]));
    s.credentials = Some(credentials.clone());
    tracing::info!(settings = ?s, "feed settings");
    let mut feed = Running::start(s);
    feed.until(Duration::from_secs(10), is_snapshot).await;
    feed.until(Duration::from_secs(10), is_update).await;
    let report = feed.health.report();
    feed.stop().await;
    let logs = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf8");
    (report, logs, pem, sim)
}

fn assert_no_secret(logs: &str, pem: &str) {
    assert!(!logs.is_empty(), "logs were captured");
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!logs.contains(line), "the private key leaked into the logs");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_accepted_key_authenticates_subscribes_and_never_reaches_the_logs() {
    let (report, logs, pem, sim) = authenticated_run(SimAuth::VerifyWithTheKey).await;
    assert_eq!(
        report.auth,
        AuthState::Authenticated {
            algorithm: "ES256".into()
        }
    );
    // The simulator checked every subscribe's signature and claims with the public key.
    let stats = &sim.state.stats;
    assert!(
        stats.jwt_accepted.get() >= 3,
        "{}",
        stats.jwt_accepted.get()
    );
    assert_eq!(stats.jwt_rejected.get(), 0);
    assert_no_secret(&logs, &pem);
    sim.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_token_signed_with_the_wrong_key_is_refused_and_the_feed_goes_on_unauthenticated() {
    let (report, logs, pem, sim) = authenticated_run(SimAuth::VerifyWithAnotherKey).await;
    match &report.auth {
        AuthState::Failed { reason } => assert!(reason.contains("unauthenticated"), "{reason}"),
        other => panic!("expected a failed auth state, got {other:?}"),
    }
    let stats = &sim.state.stats;
    assert!(stats.jwt_rejected.get() >= 1);
    assert_eq!(stats.jwt_accepted.get(), 0);
    assert_no_secret(&logs, &pem);
    sim.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_refused_key_falls_back_to_unauthenticated_and_says_so() {
    let (report, logs, pem, sim) = authenticated_run(SimAuth::RejectAll).await;
    match &report.auth {
        AuthState::Failed { reason } => assert!(reason.contains("unauthenticated"), "{reason}"),
        other => panic!("expected a failed auth state, got {other:?}"),
    }
    assert!(logs.contains("continuing unauthenticated"));
    assert_no_secret(&logs, &pem);
    sim.stop().await;
}
