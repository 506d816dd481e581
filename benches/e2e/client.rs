//! One cheap SSE client of `/stream`: a raw TCP socket from a chosen loopback source address,
//! an HTTP/1.1 request, the chunked body undone by hand, and each event scanned for five
//! attributes of its `<spot-candle>`, nothing parsed beyond them.
//!
//! In: the service's address, a source address, the products (none: every product). Out: a
//! [`ClientLog`]: per candle event its product's index, `data-last-trade-id`, a hash of
//! `data-version`, its bucket and trade count, and when it arrived (µs since the bench's base instant, one clock reading
//! per socket read), and why the stream ended early, if it did.

use std::collections::HashMap;
use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// Product id → its index (the order of the simulator's products).
pub(crate) type ProductIndex = HashMap<String, u16>;

/// One candle event as a client received it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Event {
    pub product: u16,
    pub at_us: u32,
    pub trade_id: u64,
    /// FxHash of `data-version` (a duplicate is the same product and version twice).
    pub version: u64,
    /// `data-timestamp`: the bucket's start, Unix seconds.
    pub bucket: i64,
    /// `data-trades`: the trades in the candle (`None`: unknown, a candle from REST).
    pub trades: Option<u32>,
}

/// What one client saw.
#[derive(Debug)]
pub(crate) struct ClientLog {
    /// Product indexes it subscribed to; `None`: every product.
    pub products: Option<Vec<u16>>,
    pub events: Vec<Event>,
    /// Why its stream ended before the stop (or could not start).
    pub error: Option<String>,
}

/// A stream whose response head said 200, and the body bytes read with the head.
#[derive(Debug)]
pub(crate) struct Connected {
    stream: TcpStream,
    leftover: Vec<u8>,
}

/// Opens `/stream` of one granularity for `products` (none: every product).
pub(crate) async fn connect(
    service: SocketAddr,
    source: IpAddr,
    products: &[&str],
    granularity: &str,
) -> Result<Connected, String> {
    let attempt = async {
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| format!("bind {source}: {e}"))?;
        let mut stream = socket
            .connect(service)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let query = if products.is_empty() {
            format!("granularity={granularity}")
        } else {
            format!("granularity={granularity}&products={}", products.join(","))
        };
        let request = format!(
            "GET /stream?{query} HTTP/1.1\r\nHost: {service}\r\nAccept: text/event-stream\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 2048];
        loop {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("read head: {e}"))?;
            if n == 0 {
                return Err("closed before the response head".to_owned());
            }
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = find(&head, b"\r\n\r\n") {
                let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
                if !text.starts_with("http/1.1 200") {
                    let status = text.lines().next().unwrap_or("").to_owned();
                    return Err(format!("status {status}"));
                }
                if !text.contains("transfer-encoding: chunked") {
                    return Err("the body is not chunked".to_owned());
                }
                let leftover = head.split_off(end + 4);
                return Ok(Connected { stream, leftover });
            }
            if head.len() > 16 * 1024 {
                return Err("response head over 16 KiB".to_owned());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), attempt)
        .await
        .unwrap_or_else(|_| Err("no response head within 30 s".to_owned()))
}

/// Reads events until `stop`; the log of what arrived.
pub(crate) async fn run(
    connected: Connected,
    products: Option<Vec<u16>>,
    index: &ProductIndex,
    base: Instant,
    stop: CancellationToken,
) -> ClientLog {
    let Connected {
        mut stream,
        leftover,
    } = connected;
    let mut log = ClientLog {
        products,
        events: Vec::with_capacity(1024),
        error: None,
    };
    let mut dechunk = Dechunk::default();
    let mut body = Vec::with_capacity(4096);
    let mut buf = [0u8; 4096];
    let at = base.elapsed().as_micros() as u32;
    if let Err(e) = dechunk.feed(&leftover, &mut body) {
        log.error = Some(e.to_owned());
        return log;
    }
    scan(&mut body, index, at, &mut log.events);
    loop {
        let read = tokio::select! {
            () = stop.cancelled() => break,
            read = stream.read(&mut buf) => read,
        };
        let at = base.elapsed().as_micros() as u32;
        match read {
            Ok(0) => {
                log.error = Some("the service closed the stream".to_owned());
                break;
            }
            Ok(n) => {
                if let Err(e) = dechunk.feed(&buf[..n], &mut body) {
                    log.error = Some(e.to_owned());
                    break;
                }
                scan(&mut body, index, at, &mut log.events);
            }
            Err(e) => {
                log.error = Some(format!("read: {e}"));
                break;
            }
        }
    }
    log
}

/// Takes every whole event out of `body`, logging the candle events.
fn scan(body: &mut Vec<u8>, index: &ProductIndex, at_us: u32, events: &mut Vec<Event>) {
    let valid = match std::str::from_utf8(body) {
        Ok(text) => text.len(),
        Err(e) => e.valid_up_to(),
    };
    let Ok(text) = std::str::from_utf8(&body[..valid]) else {
        return;
    };
    let mut used = 0;
    while let Some(end) = text[used..].find("\n\n") {
        let event = &text[used..used + end];
        used += end + 2;
        if let Some(e) = candle(event, index, at_us) {
            events.push(e);
        }
    }
    body.drain(..used);
}

/// The attributes of the `<spot-candle>` in one event (they come in a fixed order).
fn candle(event: &str, index: &ProductIndex, at_us: u32) -> Option<Event> {
    let (product, rest) = attr(event, "data-product=\"")?;
    let (bucket, rest) = attr(rest, "data-timestamp=\"")?;
    let (trades, rest) = attr(rest, "data-trades=\"")?;
    let (version, rest) = attr(rest, "data-version=\"")?;
    let (trade_id, _) = attr(rest, "data-last-trade-id=\"")?;
    let mut hasher = rustc_hash::FxHasher::default();
    hasher.write(version.as_bytes());
    Some(Event {
        product: *index.get(product)?,
        at_us,
        trade_id: trade_id.parse().ok()?,
        version: hasher.finish(),
        bucket: bucket.parse().ok()?,
        trades: trades.parse().ok(),
    })
}

/// The value of the attribute opened by `needle`, and the text after it.
fn attr<'a>(text: &'a str, needle: &str) -> Option<(&'a str, &'a str)> {
    let start = text.find(needle)? + needle.len();
    let len = text[start..].find('"')?;
    Some((&text[start..start + len], &text[start + len + 1..]))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Undoes HTTP/1.1 chunked transfer coding, a byte stream at a time.
#[derive(Debug, Default)]
struct Dechunk {
    state: ChunkState,
    size: usize,
}

#[derive(Debug, Default, Clone, Copy)]
enum ChunkState {
    /// Reading the hex size line (extensions ignored).
    #[default]
    Size,
    /// Inside a size line's extension, up to its LF.
    Extension,
    /// This many data bytes to go.
    Data(usize),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The last chunk came: the stream is over.
    Done,
}

impl Dechunk {
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
        while let Some(&byte) = input.first() {
            match self.state {
                ChunkState::Size | ChunkState::Extension => {
                    input = &input[1..];
                    match byte {
                        b'\n' => {
                            self.state = match std::mem::take(&mut self.size) {
                                0 => ChunkState::Done,
                                n => ChunkState::Data(n),
                            };
                        }
                        _ if matches!(self.state, ChunkState::Extension) => {}
                        b'\r' => {}
                        b';' => self.state = ChunkState::Extension,
                        _ => {
                            let digit = (byte as char).to_digit(16).ok_or("bad chunk size")?;
                            self.size = self
                                .size
                                .checked_mul(16)
                                .and_then(|s| s.checked_add(digit as usize))
                                .ok_or("chunk size overflows")?;
                        }
                    }
                }
                ChunkState::Data(left) => {
                    let take = left.min(input.len());
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.state = match left - take {
                        0 => ChunkState::DataEnd,
                        n => ChunkState::Data(n),
                    };
                }
                ChunkState::DataEnd => {
                    input = &input[1..];
                    if byte == b'\n' {
                        self.state = ChunkState::Size;
                    }
                }
                ChunkState::Done => return Err("the body ended"),
            }
        }
        Ok(())
    }
}
