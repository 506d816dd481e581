//! What a board page rendered, handed to the stream the page opens, so that the stream's first
//! event carries only what changed since the page was rendered instead of the whole board again.
//!
//! In: the board page's rendering (its granularity, its products, the hash of each row's HTML
//! and the health panel), kept under a random [`PageToken`] the page puts in its stream's URL.
//! Out: the rendering, once, to the first stream that names the token ([`Handoffs::take`]); a
//! reconnect, a granularity switch, another instance or a token older than [`KEEP`] finds
//! nothing and gets the whole board as before. Nothing is lost in between: the stream compares
//! each row as it renders it after subscribing with the page's hash, and sends every row whose
//! HTML differs.
//!
//! At most [`MAX_HANDOFFS`] renderings are kept (about 8 bytes a row each); past it the oldest
//! goes, and its page's stream simply gets the whole board.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::templates::HealthPartial;
use super::view::ProductInfo;
use crate::model::Granularity;

/// How long a page's rendering waits for its stream.
pub const KEEP: Duration = Duration::from_secs(60);
/// Most renderings kept at once.
pub const MAX_HANDOFFS: usize = 1024;

/// The name of one page's rendering: 16 hex digits in the stream's `page` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageToken(u64);

impl PageToken {
    /// A token from its 16 hex digits (lower or upper case); anything else is not one.
    pub fn parse(text: &str) -> Option<PageToken> {
        if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(text, 16).ok().map(PageToken)
    }
}

impl fmt::Display for PageToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What a board page showed.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub granularity: Granularity,
    /// The products, in the page's order.
    pub products: Arc<Vec<ProductInfo>>,
    /// The hash of each product's row, in the same order.
    pub rows: Vec<u64>,
    pub health: HealthPartial,
}

impl Rendered {
    /// Whether this rendering is of the board a stream is about to show: the same
    /// granularity and the same products in the same order.
    pub fn shows(&self, granularity: Granularity, products: &[ProductInfo]) -> bool {
        self.granularity == granularity
            && self.rows.len() == products.len()
            && self.products.len() == products.len()
            && self
                .products
                .iter()
                .zip(products)
                .all(|(a, b)| a.id == b.id)
    }
}

/// The renderings waiting for their streams, oldest first.
#[derive(Debug, Default)]
pub struct Handoffs {
    waiting: Mutex<VecDeque<(Instant, PageToken, Rendered)>>,
}

impl Handoffs {
    fn lock(&self) -> MutexGuard<'_, VecDeque<(Instant, PageToken, Rendered)>> {
        // Entries are pushed and removed whole: a panic elsewhere leaves none half-written.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `rendered` for its stream; the token names it.
    pub fn put(&self, rendered: Rendered) -> PageToken {
        let token = PageToken(rand::random());
        let now = Instant::now();
        let mut waiting = self.lock();
        while waiting
            .front()
            .is_some_and(|(at, _, _)| now.duration_since(*at) > KEEP)
            || waiting.len() >= MAX_HANDOFFS
        {
            waiting.pop_front();
        }
        waiting.push_back((now, token, rendered));
        token
    }

    /// The rendering `token` names, once; `None` when it is unknown, taken or too old.
    pub fn take(&self, token: PageToken) -> Option<Rendered> {
        let mut waiting = self.lock();
        let at = waiting.iter().position(|(_, t, _)| *t == token)?;
        let (put, _, rendered) = waiting.remove(at)?;
        (put.elapsed() <= KEEP).then_some(rendered)
    }

    /// How many renderings wait.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered() -> Rendered {
        Rendered {
            granularity: Granularity::OneMinute,
            products: Arc::new(Vec::new()),
            rows: Vec::new(),
            health: HealthPartial::default(),
        }
    }

    #[test]
    fn tokens_are_sixteen_hex_digits() {
        let token = PageToken(0x00ab_cdef_0123_4567);
        assert_eq!(token.to_string(), "00abcdef01234567");
        assert_eq!(PageToken::parse("00abcdef01234567"), Some(token));
        assert_eq!(PageToken::parse("00ABCDEF01234567"), Some(token));
        for bad in [
            "",
            "abc",
            "00abcdef0123456",
            "00abcdef012345678",
            "+0abcdef01234567",
        ] {
            assert_eq!(PageToken::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_rendering_is_taken_once() {
        let handoffs = Handoffs::default();
        let token = handoffs.put(rendered());
        assert!(handoffs.take(token).is_some());
        assert!(
            handoffs.take(token).is_none(),
            "a reconnect gets the whole board"
        );
        assert!(handoffs.take(PageToken(1)).is_none());
    }

    #[test]
    fn the_oldest_go_past_the_limit() {
        let handoffs = Handoffs::default();
        let first = handoffs.put(rendered());
        for _ in 0..MAX_HANDOFFS {
            handoffs.put(rendered());
        }
        assert_eq!(handoffs.len(), MAX_HANDOFFS);
        assert!(handoffs.take(first).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_old_rendering_is_not_used() {
        let handoffs = Handoffs::default();
        let token = handoffs.put(rendered());
        tokio::time::advance(KEEP + Duration::from_secs(1)).await;
        assert!(handoffs.take(token).is_none());
    }
}
