//! What a board row and a market header show: a candle, the product's last day and its price
//! increment, turned into display text.
//!
//! In: a [`CandleUpdate`] (or none yet), a [`DaySummary`], the product. Out: a [`Row`] the
//! templates render. Prices are never rounded: they show the product's increment's decimals, or
//! all of the value's own when it has more. Percentages are rounded to two decimals and volumes
//! shortened for reading; the exact values stay in the `<spot-candle>` element's attributes
//! and in `title` tooltips. Every computation on exchange amounts is checked: what overflows
//! shows as "—".

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use crate::live::day::{DaySummary, WINDOW_SECS, percent};
use crate::live::element::{ElementId, candle_element};
use crate::model::{CandleUpdate, Currency, Granularity, ProductId};

/// A product with no trade for this long is marked stale on the board.
pub const STALE_SECS: i64 = 300;

pub use crate::web::catalog::ProductInfo;

/// Direction of a change, for colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
    Flat,
}

impl Direction {
    fn of(change: Option<Decimal>) -> Direction {
        match change {
            Some(c) if c.is_sign_positive() && !c.is_zero() => Direction::Up,
            Some(c) if c.is_sign_negative() && !c.is_zero() => Direction::Down,
            _ => Direction::Flat,
        }
    }

    /// The class the stylesheet colours.
    pub fn class(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
            Direction::Flat => "flat",
        }
    }
}

/// The candle part of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandleView {
    pub last: String,
    pub change: String,
    pub direction: Direction,
    pub open: String,
    pub high: String,
    pub low: String,
    pub close: String,
    pub volume: String,
    pub volume_exact: String,
    pub trades: String,
    pub complete: bool,
    /// Bucket end, Unix seconds: the countdown's target.
    pub closes_at: i64,
    /// When the bucket started, for a tooltip (RFC 3339).
    pub started: String,
    /// Sort keys (plain numbers for the board's sorting, and the close for its flash).
    pub sort_close: String,
    pub sort_change: String,
    pub sort_volume: String,
}

/// The last-day part of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayView {
    pub change: String,
    pub direction: Direction,
    pub volume: String,
    pub volume_exact: String,
    /// "24h", or how much of the day the window holds ("2h 10m") while it fills.
    pub span: String,
    pub full: bool,
    pub sort_change: String,
    pub sort_volume: String,
}

/// One product's row of the board (and the header of its market page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub product: ProductId,
    pub base: Currency,
    pub quote: Currency,
    pub granularity: Granularity,
    pub candle: Option<CandleView>,
    pub day: Option<DayView>,
    /// No trade for [`STALE_SECS`].
    pub stale: bool,
    /// The `<spot-candle>` element of the row's series (empty when there is no candle yet).
    pub element: String,
}

impl Row {
    pub fn new(
        product: &ProductInfo,
        granularity: Granularity,
        update: Option<&CandleUpdate>,
        day: Option<&DaySummary>,
        now: DateTime<Utc>,
    ) -> Row {
        let increment = product.price_increment;
        let candle = update.map(|u| candle_view(u, increment));
        let day = day.map(|d| day_view(d, now));
        let stale = update.is_some_and(|u| (now - u.last_received).num_seconds() > STALE_SECS);
        Row {
            product: product.id.clone(),
            base: product.base.clone(),
            quote: product.quote.clone(),
            granularity,
            candle,
            day,
            stale,
            element: update
                .map(|u| candle_element(u, ElementId::Series))
                .unwrap_or_default(),
        }
    }

    /// The element id of the row.
    pub fn id(&self) -> String {
        row_id(&self.product)
    }
}

/// The element id of a product's row.
pub fn row_id(product: &str) -> String {
    format!("row-{product}")
}

fn candle_view(update: &CandleUpdate, increment: Option<Decimal>) -> CandleView {
    let c = &update.candle;
    let change = c.close.checked_sub(c.open);
    let change_pct = change.and_then(|ch| percent(c.open, ch, 2));
    let notional = c.volume.checked_mul(c.close);
    CandleView {
        last: price(c.close, increment),
        change: signed_percent(change_pct),
        direction: Direction::of(change),
        open: price(c.open, increment),
        high: price(c.high, increment),
        low: price(c.low, increment),
        close: price(c.close, increment),
        volume: short(c.volume),
        volume_exact: c.volume.normalize().to_string(),
        trades: c.trade_count.map(|n| n.to_string()).unwrap_or_default(),
        complete: update.complete,
        closes_at: c.start.timestamp() + c.granularity.seconds(),
        started: c.start.to_rfc3339(),
        sort_close: sort_key(Some(c.close)),
        sort_change: sort_key(change_pct),
        sort_volume: sort_key(notional),
    }
}

fn day_view(day: &DaySummary, now: DateTime<Utc>) -> DayView {
    let change_pct = day.change_percent(2);
    // The window's span: from its oldest minute to now.
    let covered = (now.timestamp() - day.since).clamp(0, WINDOW_SECS);
    let full = covered >= WINDOW_SECS - 60;
    let notional = day.volume.and_then(|v| v.checked_mul(day.last));
    DayView {
        change: signed_percent(change_pct),
        direction: Direction::of(day.change),
        volume: day.volume.map(short).unwrap_or_else(|| "—".to_owned()),
        volume_exact: day
            .volume
            .map(|v| v.normalize().to_string())
            .unwrap_or_else(|| "the sum overflows".to_owned()),
        span: if full {
            "24h".to_owned()
        } else {
            duration(covered)
        },
        full,
        sort_change: sort_key(change_pct),
        sort_volume: sort_key(notional),
    }
}

/// A price with the increment's decimals, or all of its own when it has more; thousands
/// grouped.
pub fn price(value: Decimal, increment: Option<Decimal>) -> String {
    let own = value.normalize().scale();
    let wanted = increment.map_or(2, |i| i.normalize().scale()).max(own);
    let mut v = value;
    // Only adds zeros: `wanted` is at least the value's own scale.
    v.rescale(wanted);
    group(&v.to_string())
}

/// `12345.678` → `12,345.678`.
fn group(text: &str) -> String {
    let (sign, rest) = match text.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", text),
    };
    let (int, frac) = match rest.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (rest, None),
    };
    let mut out = String::with_capacity(text.len() + int.len() / 3);
    out.push_str(sign);
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if let Some(frac) = frac {
        out.push('.');
        out.push_str(frac);
    }
    out
}

/// A volume for reading: `1.23M`, `45.6K`, `0.0123`.
pub fn short(value: Decimal) -> String {
    let Some(v) = value.to_f64() else {
        return "—".to_owned();
    };
    let a = v.abs();
    if a >= 1e12 {
        format!("{:.2}T", v / 1e12)
    } else if a >= 1e9 {
        format!("{:.2}B", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}K", v / 1e3)
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a == 0.0 {
        "0".to_owned()
    } else {
        // Small amounts: four significant digits.
        let digits = (-a.log10()).floor() as usize + 4;
        format!("{v:.digits$}")
    }
}

/// `+1.23%`, `−0.45%`, `0.00%`, or `—`.
pub fn signed_percent(value: Option<Decimal>) -> String {
    match value {
        None => "—".to_owned(),
        Some(v) if v.is_zero() => format!("{:.2}%", Decimal::ZERO),
        Some(v) if v.is_sign_positive() => format!("+{v:.2}%"),
        Some(v) => format!("−{:.2}%", v.abs()),
    }
}

/// A number for sorting (empty when unknown: sorted last).
fn sort_key(value: Option<Decimal>) -> String {
    value
        .and_then(|v| v.to_f64())
        .map(|v| format!("{v}"))
        .unwrap_or_default()
}

/// `2h 10m`, `45m`.
pub fn duration(secs: i64) -> String {
    let minutes = secs / 60;
    match (minutes / 60, minutes % 60) {
        (0, m) => format!("{m}m"),
        (h, 0) => format!("{h}h"),
        (h, m) => format!("{h}h {m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(text: &str) -> Decimal {
        text.parse().expect("decimal")
    }

    #[test]
    fn prices_show_the_increment_and_are_never_rounded() {
        assert_eq!(price(dec("42000.5"), Some(dec("0.01"))), "42,000.50");
        assert_eq!(price(dec("42000.5"), Some(dec("0.010000"))), "42,000.50");
        assert_eq!(
            price(dec("0.000012345"), Some(dec("0.00000001"))),
            "0.000012345"
        );
        assert_eq!(price(dec("1234567"), Some(dec("1"))), "1,234,567");
        assert_eq!(price(dec("-1234.5"), None), "-1,234.50");
        assert_eq!(price(dec("999"), Some(dec("0.1"))), "999.0");
        let max = price(Decimal::MAX, Some(dec("0.01")));
        assert!(
            max.starts_with("79,228,162,514,264,337,593,543,950,335"),
            "{max}"
        );
    }

    #[test]
    fn percentages_and_volumes_for_reading() {
        assert_eq!(signed_percent(Some(dec("1.234"))), "+1.23%");
        assert_eq!(signed_percent(Some(dec("-0.5"))), "−0.50%");
        assert_eq!(signed_percent(Some(Decimal::ZERO)), "0.00%");
        assert_eq!(signed_percent(None), "—");
        assert_eq!(short(dec("1234567.89")), "1.23M");
        assert_eq!(short(dec("45678")), "45.7K");
        assert_eq!(short(dec("12.345")), "12.35");
        assert_eq!(short(dec("0.00012341")), "0.0001234");
        assert_eq!(short(Decimal::ZERO), "0");
        assert_eq!(duration(7800), "2h 10m");
        assert_eq!(duration(3600), "1h");
        assert_eq!(duration(59), "0m");
    }
}
