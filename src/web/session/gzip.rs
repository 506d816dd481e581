//! A page stream's gzip encoding: one encoder per stream, flushed after every chunk so that
//! each event reaches the page at once.
//!
//! In: the request's `Accept-Encoding`, the stream's chunks as the driver writes them. Out:
//! whether the stream is encoded ([`Budget::negotiate`]: gzip accepted and a place among the
//! [`Budget`]'s encoded streams free; otherwise it goes plain), and each chunk encoded
//! ([`Gzip::encode`], a sync flush: the bytes so far decode completely), then the gzip trailer
//! when the stream ends. tower-http's compression layer leaves event streams alone (it would
//! hold events back); this one pays on the page streams, whose rows repeat the same markup.
//!
//! An encoder's window is [`WINDOW_BITS`] (4 KiB: two rows; a longer one finds little more
//! in a page stream, whose rows change between flushes) and holds about 150 KiB with zlib's
//! tables; the budget bounds them all.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::{HeaderMap, header};
use bytes::Bytes;
use flate2::{Compress, CompressError, Compression, FlushCompress, Status};

/// The encoder's window: 2^12 bytes.
pub const WINDOW_BITS: u8 = 12;
/// zlib's default level. On a board stream (300 markets, 10 s) with this window: 12.3 times
/// smaller at about 90 MB/s; level 1, 7.1 times; a 32 KiB window, 12.4 times.
pub const LEVEL: u32 = 6;
/// Most page streams encoded at once (about 150 KiB each).
pub const MAX_ENCODED: usize = 512;

/// The places among the encoded streams.
#[derive(Debug)]
pub struct Budget {
    max: usize,
    used: AtomicUsize,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget::new(MAX_ENCODED)
    }
}

impl Budget {
    pub fn new(max: usize) -> Budget {
        Budget {
            max,
            used: AtomicUsize::new(0),
        }
    }

    /// Streams encoded now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// An encoder when `headers` accept gzip and a place is free; `None`: the stream goes
    /// plain.
    pub fn negotiate(self: &Arc<Budget>, headers: &HeaderMap) -> Option<Gzip> {
        if !accepts_gzip(headers) {
            return None;
        }
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < self.max).then_some(used + 1)
            });
        taken.ok()?;
        Some(Gzip {
            compress: Compress::new_gzip(Compression::new(LEVEL), WINDOW_BITS),
            _place: Place(self.clone()),
        })
    }
}

/// A place taken in the budget, given back when the stream ends.
#[derive(Debug)]
struct Place(Arc<Budget>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One stream's encoder.
#[derive(Debug)]
pub struct Gzip {
    compress: Compress,
    _place: Place,
}

impl Gzip {
    /// `chunk` encoded and flushed: the client decodes every byte of it on receipt.
    pub fn encode(&mut self, chunk: &[u8]) -> Result<Bytes, CompressError> {
        self.run(chunk, FlushCompress::Sync)
    }

    /// The end of the gzip stream (its trailer).
    pub fn finish(&mut self) -> Result<Bytes, CompressError> {
        self.run(&[], FlushCompress::Finish)
    }

    fn run(&mut self, mut input: &[u8], flush: FlushCompress) -> Result<Bytes, CompressError> {
        let mut out = Vec::with_capacity(input.len() / 4 + 64);
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(1024));
            }
            let before = self.compress.total_in();
            let status = self.compress.compress_vec(input, &mut out, flush)?;
            // At most `input.len()`: it fits.
            let taken = usize::try_from(self.compress.total_in() - before).unwrap_or(input.len());
            input = &input[taken.min(input.len())..];
            // zlib's rule: a flush is complete when it left room in the output.
            let complete = match flush {
                FlushCompress::Finish => status == Status::StreamEnd,
                _ => out.len() < out.capacity(),
            };
            if input.is_empty() && complete {
                return Ok(Bytes::from(out));
            }
        }
    }
}

/// Whether `Accept-Encoding` takes gzip (`gzip`, `x-gzip` or `*`, with a nonzero `q`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut star = false;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                return q > 0.0;
            }
            star |= coding == "*" && q > 0.0;
        }
    }
    star
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use axum::http::HeaderValue;

    use super::*;

    fn accepting(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn gzip_is_taken_when_the_client_accepts_it() {
        for yes in ["gzip", "gzip, deflate, br, zstd", "br;q=1, GZIP;q=0.5", "*"] {
            assert!(accepts_gzip(&accepting(yes)), "{yes}");
        }
        for no in [
            "",
            "br",
            "gzip;q=0",
            "identity",
            "*, gzip;q=0",
            "gzip;q=0.000",
        ] {
            assert!(!accepts_gzip(&accepting(no)), "{no}");
        }
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn each_chunk_decodes_at_once_and_the_whole_is_one_gzip_stream() {
        let budget = Arc::new(Budget::new(1));
        let mut gzip = budget.negotiate(&accepting("gzip")).expect("an encoder");
        assert!(
            budget.negotiate(&accepting("gzip")).is_none(),
            "over the budget: plain"
        );
        let row = "<div id=\"row-BTC-USD\" class=\"board-row\"><span>42,000.50</span></div>\n";
        let chunks: Vec<String> = (0..50).map(|i| format!("{i}{}", row.repeat(40))).collect();
        let mut wire = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            wire.extend_from_slice(&gzip.encode(chunk.as_bytes()).expect("encoded"));
            // What has arrived so far decodes to every chunk so far.
            let mut decoded = Vec::new();
            let mut decoder = flate2::read::GzDecoder::new(&wire[..]);
            // Unfinished: the end is an error, after every byte so far.
            let _unfinished = decoder.read_to_end(&mut decoded);
            assert_eq!(decoded, chunks[..=i].concat().as_bytes(), "after chunk {i}");
        }
        wire.extend_from_slice(&gzip.finish().expect("the trailer"));
        let mut decoded = String::new();
        flate2::read::GzDecoder::new(&wire[..])
            .read_to_string(&mut decoded)
            .expect("a whole gzip stream");
        assert_eq!(decoded, chunks.concat());
        assert!(wire.len() * 10 < decoded.len(), "{} bytes", wire.len());
        drop(gzip);
        assert_eq!(budget.used(), 0, "the place is given back");
    }
}
