//! Reading an exchange answer's body with a cap, so that an answer of gigabytes (or one that
//! never ends) costs at most the cap in memory.
//!
//! In: a [`reqwest::Response`], the most bytes its body may hold and the answer's name (for the
//! metric). Out: the whole body, or a [`BodyError`]: [`BodyError::TooLarge`] when the
//! `Content-Length` announces more than the cap (nothing is read) or the streamed body passes it
//! (reading stops there and the connection is dropped), [`BodyError::Read`] when the transfer
//! fails (the error carries no URL). Every cap hit is counted in
//! `spot_canvas_rest_body_too_large_total{answer}`. A body that never ends is cut by the
//! request's own timeout, which covers the body too.

use bytes::{Bytes, BytesMut};

/// The most a products list may hold: Coinbase's is about 1 MB (about 800 products); the
/// parser also refuses more than `MAX_PRODUCTS` elements.
pub const PRODUCTS_MAX_BYTES: usize = 16 * 1024 * 1024;
/// The most a candles page (at most 300 buckets, ~100 bytes each) may hold.
pub const CANDLES_MAX_BYTES: usize = 2 * 1024 * 1024;
/// The most a `/time` answer (under 100 bytes at Coinbase) may hold.
pub const TIME_MAX_BYTES: usize = 4 * 1024;

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body holds (or announced) more than `limit` bytes.
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The transfer failed (or timed out); the error names no URL.
    #[error("body unreadable: {0}")]
    Read(reqwest::Error),
}

/// Reads `response`'s body, at most `limit` bytes; `answer` names it in the metric
/// (`products`, `candles`, `time`).
pub async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
    answer: &'static str,
) -> Result<Bytes, BodyError> {
    let too_large = || {
        metrics::counter!("spot_canvas_rest_body_too_large_total", "answer" => answer).increment(1);
        BodyError::TooLarge { limit }
    };
    let announced = response.content_length();
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    // Chunks are kept as they come and joined once at the end: no doubling buffer whose
    // copies would cost twice the cap on the way.
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Read(e.without_url()))?
    {
        total = total.saturating_add(chunk.len());
        if total > limit {
            // Dropping the response closes the connection: the rest is never read.
            return Err(too_large());
        }
        chunks.push(chunk);
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut body = BytesMut::with_capacity(total);
            for chunk in chunks {
                body.extend_from_slice(&chunk);
            }
            body.freeze()
        }
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Serves one HTTP answer: `head` (status line and headers), then `body_chunks` chunks of
    /// `chunk` bytes each (chunked when `head` says so). Returns the URL.
    async fn serve(head: &'static str, chunk: usize, body_chunks: usize, chunked: bool) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut request = [0u8; 1024];
            let _read = socket.read(&mut request).await;
            if socket.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let data = vec![b'x'; chunk];
            for _ in 0..body_chunks {
                let sent = if chunked {
                    let mut framed = format!("{chunk:x}\r\n").into_bytes();
                    framed.extend_from_slice(&data);
                    framed.extend_from_slice(b"\r\n");
                    socket.write_all(&framed).await
                } else {
                    socket.write_all(&data).await
                };
                if sent.is_err() {
                    return;
                }
            }
            if chunked {
                let _end = socket.write_all(b"0\r\n\r\n").await;
            }
        });
        format!("http://{addr}/")
    }

    async fn get(url: &str) -> reqwest::Response {
        reqwest::get(url).await.expect("answers")
    }

    #[tokio::test]
    async fn a_body_within_the_cap_is_read_whole() {
        let url = serve(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            1000,
            5,
            true,
        )
        .await;
        let body = read_capped(get(&url).await, 5000, "test")
            .await
            .expect("read");
        assert_eq!(body.len(), 5000);
    }

    #[tokio::test]
    async fn a_streamed_body_past_the_cap_stops_there() {
        // 1 GiB announced by nothing but its chunks: the read stops after the cap.
        let url = serve(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            64 * 1024,
            16 * 1024,
            true,
        )
        .await;
        let started = std::time::Instant::now();
        let error = read_capped(get(&url).await, 1024 * 1024, "test")
            .await
            .expect_err("too large");
        assert!(matches!(error, BodyError::TooLarge { limit: 1_048_576 }));
        assert_eq!(error.to_string(), "body larger than 1048576 bytes");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_content_length_past_the_cap_is_refused_unread() {
        let url = serve(
            "HTTP/1.1 200 OK\r\ncontent-length: 2147483648\r\n\r\n",
            1,
            1,
            false,
        )
        .await;
        let error = read_capped(get(&url).await, 1024, "test")
            .await
            .expect_err("too large");
        assert!(matches!(error, BodyError::TooLarge { limit: 1024 }));
    }

    #[tokio::test]
    async fn exactly_the_cap_is_allowed() {
        let url = serve(
            "HTTP/1.1 200 OK\r\ncontent-length: 1024\r\n\r\n",
            512,
            2,
            false,
        )
        .await;
        let body = read_capped(get(&url).await, 1024, "test")
            .await
            .expect("read");
        assert_eq!(body.len(), 1024);
    }
}
