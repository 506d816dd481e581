//! The HTTP side for tests: an `AppState` around a repository with the rest idle, the router
//! served on a real socket by the service's own accept loop, and a server-sent events reader.

use std::time::Duration;

use spot_canvas::config::StreamConfig;
use spot_canvas::live::LiveState;
use spot_canvas::store::Repository;
use spot_canvas::web::AppState;
use spot_canvas::web::stream::Streams;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The service's HTTP state around `repository` and `live` (the pipeline idle).
pub fn app_state(repository: Repository, live: LiveState, streams: StreamConfig) -> AppState {
    AppState {
        live,
        streams: Streams::new(streams),
        ..AppState::idle(repository)
    }
}

/// The router of `state` on a free loopback port, until `stop` (then `grace` for the
/// connections).
pub struct Served {
    pub port: u16,
    pub stop: CancellationToken,
    pub task: JoinHandle<std::io::Result<()>>,
}

pub async fn serve(state: AppState, grace: Duration) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let port = listener.local_addr().expect("address").port();
    let stop = CancellationToken::new();
    let task = tokio::spawn(spot_canvas::web::serve::serve(
        listener,
        spot_canvas::web::router(state),
        stop.clone(),
        grace,
    ));
    Served { port, stop, task }
}

/// One server-sent event: its lines by field (comments dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The raw text of the event, with its final blank line.
    pub text: String,
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: Vec<String>,
}

impl SseEvent {
    /// The value of attribute `name` in the first `data: elements` line.
    pub fn attr(&self, name: &str) -> Option<String> {
        let line = self.data.iter().find(|d| d.starts_with("elements "))?;
        let needle = format!(" {name}=\"");
        let start = line.find(&needle)? + needle.len();
        let end = line[start..].find('"')? + start;
        Some(line[start..end].to_owned())
    }
}

/// Reads a `text/event-stream` response event by event.
pub struct SseReader {
    response: reqwest::Response,
    buffer: String,
    /// Comments seen so far (`: ...` lines).
    pub comments: Vec<String>,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> SseReader {
        SseReader {
            response,
            buffer: String::new(),
            comments: Vec::new(),
        }
    }

    /// The next event within `within`; `None` when the stream ended.
    pub async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = self.parse(&block) {
                    return Some(event);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .unwrap_or_else(|_| {
                    panic!("no event within {within:?}; buffered: {:?}", self.buffer)
                })
                .expect("the stream reads");
            match chunk {
                Some(bytes) => self
                    .buffer
                    .push_str(std::str::from_utf8(&bytes).expect("utf-8")),
                None => return None,
            }
        }
    }

    /// Whether the stream ends within `within` (events before the end are skipped).
    pub async fn ends_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => return false,
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) | Ok(Err(_)) => return true,
            }
        }
    }

    fn parse(&mut self, block: &str) -> Option<SseEvent> {
        let mut event = SseEvent {
            text: block.to_owned(),
            event: None,
            id: None,
            data: Vec::new(),
        };
        let mut fields = false;
        for line in block.lines().filter(|l| !l.is_empty()) {
            if let Some(comment) = line.strip_prefix(':') {
                self.comments.push(comment.trim().to_owned());
                continue;
            }
            let (field, value) = line.split_once(": ").unwrap_or((line, ""));
            fields = true;
            match field {
                "event" => event.event = Some(value.to_owned()),
                "id" => event.id = Some(value.to_owned()),
                "data" => event.data.push(value.to_owned()),
                _ => {}
            }
        }
        fields.then_some(event)
    }
}

/// An online spot product `BASE-QUOTE` with the given price increment.
pub fn product(id: &str, price_increment: Option<&str>) -> spot_canvas::model::Product {
    let (base, quote) = id.split_once('-').expect("BASE-QUOTE");
    spot_canvas::model::Product {
        product_id: id.parse().expect("a product id"),
        base: base.parse().expect("a currency code"),
        quote: quote.parse().expect("a currency code"),
        status: "online".into(),
        product_type: "SPOT".into(),
        trading_disabled: false,
        base_min_size: None,
        base_max_size: None,
        base_increment: None,
        price_increment: price_increment.map(|p| p.parse().expect("a decimal")),
        alias: None,
        alias_to: Vec::new(),
    }
}

/// `GET uri` through the router in process: status and JSON body.
pub async fn get_json(state: &AppState, uri: &str) -> (u16, serde_json::Value) {
    use tower::ServiceExt;
    let request = axum::http::Request::get(uri)
        .body(axum::body::Body::empty())
        .expect("request");
    let response = spot_canvas::web::router(state.clone())
        .oneshot(request)
        .await
        .expect("an answer");
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .expect("body");
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{uri}: {e}: {}", String::from_utf8_lossy(&body)));
    (status, body)
}

/// The `timestamp`s of a candles answer's candles.
pub fn timestamps(body: &serde_json::Value) -> Vec<i64> {
    body["candles"]
        .as_array()
        .expect("candles")
        .iter()
        .map(|c| c["timestamp"].as_i64().expect("timestamp"))
        .collect()
}
