//! The stream's wire format: a candle update as a `<spot-candle>` element inside one Datastar
//! `datastar-patch-elements` server-sent event (design.md, "SSE API").
//!
//! In: a [`CandleUpdate`] and the event id. Out: the event text, rendered once per update and
//! shared by every client that receives it. Attributes come in a fixed order: `id`
//! (`<product>-<granularity>`), `data-product`, `data-granularity`, `data-timestamp` (bucket
//! start, Unix seconds), `data-open/high/low/close/volume` (10 decimals, more when the value
//! has more: never rounded), `data-complete`, then `data-trades`, `data-buy-volume` (empty when
//! unknown: a candle from Coinbase's REST candles), `data-revision`, `data-version` (hex; string
//! order is version order), `data-last-trade-id` and `data-last-trade-time` (the exchange time
//! of the newest trade, RFC 3339), so a client can match an element to the trade behind it, and
//! `data-received` (when the service received that trade: a client measures its own latency).

use std::fmt::Write as _;

use bytes::Bytes;
use chrono::SecondsFormat;
use datastar::prelude::PatchElements;
use rust_decimal::Decimal;

use crate::bus::message::hex;
use crate::model::CandleUpdate;

/// Decimals an amount shows at least.
const MIN_DECIMALS: u32 = 10;

/// An amount with at least [`MIN_DECIMALS`] decimals, and all of its own when it has more.
pub fn amount(value: Decimal) -> String {
    let mut text = value.to_string();
    let scale = value.scale();
    if scale < MIN_DECIMALS {
        if scale == 0 {
            text.push('.');
        }
        text.extend(std::iter::repeat_n('0', (MIN_DECIMALS - scale) as usize));
    }
    text
}

/// Which element an update patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementId {
    /// `<product>-<granularity>`: the series' newest bucket.
    Series,
    /// `<product>-<granularity>-<start>`: an older bucket (its completion, a revision).
    Bucket,
}

/// The `<spot-candle>` element of an update, on one line.
pub fn candle_element(update: &CandleUpdate, id: ElementId) -> String {
    let c = &update.candle;
    let product = escape(&c.product_id);
    let granularity = c.granularity.as_str();
    let mut html = String::with_capacity(512);
    let bucket = match id {
        ElementId::Series => String::new(),
        ElementId::Bucket => format!("-{}", c.start.timestamp()),
    };
    // Writing into a String cannot fail.
    let _infallible = write!(
        html,
        "<spot-candle id=\"{product}-{granularity}{bucket}\" data-product=\"{product}\" \
         data-granularity=\"{granularity}\" data-timestamp=\"{}\" data-open=\"{}\" \
         data-high=\"{}\" data-low=\"{}\" data-close=\"{}\" data-volume=\"{}\" \
         data-complete=\"{}\" data-trades=\"{}\" data-buy-volume=\"{}\" data-revision=\"{}\" \
         data-version=\"{}\" data-last-trade-id=\"{}\" data-last-trade-time=\"{}\" \
         data-received=\"{}\"></spot-candle>",
        c.start.timestamp(),
        amount(c.open),
        amount(c.high),
        amount(c.low),
        amount(c.close),
        amount(c.volume),
        update.complete,
        c.trade_count.map(|n| n.to_string()).unwrap_or_default(),
        c.buy_volume.map(amount).unwrap_or_default(),
        update.revision,
        hex(&update.version().to_bytes()),
        update.last_trade_id.0,
        update
            .last_trade_time
            .to_rfc3339_opts(SecondsFormat::AutoSi, true),
        update
            .last_received
            .to_rfc3339_opts(SecondsFormat::AutoSi, true),
    );
    html
}

/// The whole server-sent event of an update, with `id: <id>`.
pub fn candle_event(update: &CandleUpdate, id: u64, element: ElementId) -> Bytes {
    let event = PatchElements::new(candle_element(update, element))
        .id(id.to_string())
        .into_datastar_event();
    crate::sse::render(event)
}

/// Escapes text for a double-quoted HTML attribute (product ids come from NATS, where any
/// producer may write). Control characters become character references: a raw CR or LF would
/// end the SSE line and let the text write fields of its own.
pub(crate) fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(['&', '"', '<', '>', '\'']) && !text.contains(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&#39;"),
            control if control.is_control() => {
                let _infallible = write!(out, "&#x{:x};", u32::from(control));
            }
            other => out.push(other),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use chrono::{DateTime, Utc};

    use super::*;
    use crate::model::{Candle, Granularity, TradeId};

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).expect("decimal")
    }

    #[test]
    fn amounts_have_ten_decimals_or_all_of_their_own() {
        assert_eq!(amount(d("42000.5")), "42000.5000000000");
        assert_eq!(amount(d("42000")), "42000.0000000000");
        assert_eq!(amount(d("0")), "0.0000000000");
        assert_eq!(amount(d("0.000000000012")), "0.000000000012");
        assert_eq!(amount(d("1.12345678901")), "1.12345678901");
        // The largest Decimal cannot be rescaled to 10 decimals; the text still can.
        assert_eq!(
            amount(Decimal::MAX),
            "79228162514264337593543950335.0000000000"
        );
    }

    #[test]
    fn an_update_renders_as_the_designed_event() {
        let at = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .expect("time")
                .with_timezone(&Utc)
        };
        let update = CandleUpdate {
            candle: Candle {
                product_id: crate::model::ProductId::from_static("BTC-USD"),
                granularity: Granularity::OneMinute,
                start: at("2024-01-06T19:00:00Z"),
                open: d("42000.5"),
                high: d("42500"),
                low: d("41800"),
                close: d("42200"),
                volume: d("123.45"),
                buy_volume: Some(d("100.000000000001")),
                trade_count: Some(7),
            },
            complete: false,
            revision: 0,
            counted_trades: 7,
            last_trade_id: TradeId(987),
            last_trade_time: at("2024-01-06T19:00:59.123456Z"),
            last_received: at("2024-01-06T19:00:59.2Z"),
        };
        let text = String::from_utf8(candle_event(&update, 41, ElementId::Series).to_vec())
            .expect("utf-8");
        let older = String::from_utf8(candle_event(&update, 42, ElementId::Bucket).to_vec())
            .expect("utf-8");
        assert!(
            older.contains("id=\"BTC-USD-ONE_MINUTE-1704567600\" data-product=\"BTC-USD\""),
            "{older}"
        );
        let version = hex(&update.version().to_bytes());
        assert_eq!(
            text,
            format!(
                "event: datastar-patch-elements\nid: 41\ndata: elements <spot-candle \
                 id=\"BTC-USD-ONE_MINUTE\" data-product=\"BTC-USD\" data-granularity=\"ONE_MINUTE\" \
                 data-timestamp=\"1704567600\" data-open=\"42000.5000000000\" \
                 data-high=\"42500.0000000000\" data-low=\"41800.0000000000\" \
                 data-close=\"42200.0000000000\" data-volume=\"123.4500000000\" \
                 data-complete=\"false\" data-trades=\"7\" data-buy-volume=\"100.000000000001\" \
                 data-revision=\"0\" data-version=\"{version}\" data-last-trade-id=\"987\" \
                 data-last-trade-time=\"2024-01-06T19:00:59.123456Z\" \
                 data-received=\"2024-01-06T19:00:59.200Z\"></spot-candle>\n\n"
            )
        );
    }

    #[test]
    fn attribute_text_is_escaped() {
        assert_eq!(escape("BTC-USD"), "BTC-USD");
        assert_eq!(
            escape("A\"><script>&'"),
            "A&quot;&gt;&lt;script&gt;&amp;&#39;"
        );
        assert_eq!(escape("X\rretry: 1\nid: 9"), "X&#xd;retry: 1&#xa;id: 9");
    }
}
