//! Property fuzzing of every parser that takes outside input: exchange frames (built from a
//! grammar of Coinbase's own fields with hostile values, then mutated), granularities, product
//! ids, and the query strings of the API stream and the pages. None may panic; what they accept
//! must make sense (a trade's price and size positive and exact, a granularity that round-trips,
//! a product id safe to put in a page).
//!
//! `cargo test --test suite -- fuzz::` runs a few hundred cases per property (`task test`);
//! `task fuzz` runs them at `PROPTEST_CASES=100000` in release mode. Inputs a run found are pinned at the
//! bottom as regression tests.

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;
use spot_canvas::coinbase::{FrameBody, parse_frame};
use spot_canvas::model::{Granularity, ProductId};
use spot_canvas::web::pages::query;
use spot_canvas::web::stream::params;

fn received() -> DateTime<Utc> {
    DateTime::from_timestamp(1_796_090_400, 0).expect("a time")
}

/// A JSON value of one of the kinds a field may be sent as, hostile ones included.
fn field_value() -> impl Strategy<Value = String> {
    prop_oneof![
        // Numbers as strings, as Coinbase sends them, at and past the limits of `Decimal`.
        "-?[0-9]{1,30}(\\.[0-9]{0,30})?".prop_map(|s| format!("\"{s}\"")),
        Just("\"79228162514264337593543950335\"".to_owned()),
        Just("\"79228162514264337593543950336\"".to_owned()),
        Just("\"0.0000000000000000000000000001\"".to_owned()),
        Just("\"1e5\"".to_owned()),
        Just("\"NaN\"".to_owned()),
        Just("\"\"".to_owned()),
        // Bare numbers, huge and tiny.
        any::<f64>().prop_map(|f| serde_json::to_string(&f).unwrap_or_else(|_| "0".into())),
        any::<i64>().prop_map(|i| i.to_string()),
        Just("18446744073709551616".to_owned()),
        // Times, plausible and absurd.
        Just("\"2026-09-30T02:39:59.123456Z\"".to_owned()),
        Just("\"2026-09-30T02:39:59.123456789123Z\"".to_owned()),
        Just("\"9999-12-31T23:59:59Z\"".to_owned()),
        Just("\"0000-01-01T00:00:00Z\"".to_owned()),
        Just("\"2026-02-30T25:61:61Z\"".to_owned()),
        Just("\"2026-09-30 02:39:59.123 +0000 UTC m=+1.5\"".to_owned()),
        // Words, sides, ids, other types.
        "[A-Za-z0-9_ -]{0,12}".prop_map(|s| format!("\"{s}\"")),
        Just("\"BUY\"".to_owned()),
        Just("\"SELL\"".to_owned()),
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
    ]
}

/// A good value of a trade's field, as Coinbase sends it.
fn good_value(name: &'static str) -> BoxedStrategy<String> {
    match name {
        "trade_id" => "[0-9]{1,12}".prop_map(|s| format!("\"{s}\"")).boxed(),
        "product_id" => prop_oneof![Just("BTC-USD"), Just("ETH-EUR"), Just("SHIB-USDC")]
            .prop_map(|s| format!("\"{s}\""))
            .boxed(),
        "price" | "size" => "[1-9][0-9]{0,6}(\\.[0-9]{1,18})?"
            .prop_map(|s| format!("\"{s}\""))
            .boxed(),
        "side" => prop_oneof![Just("\"BUY\""), Just("\"SELL\"")]
            .prop_map(str::to_owned)
            .boxed(),
        _ => Just("\"2026-09-30T02:39:59.123456Z\"".to_owned()).boxed(),
    }
}

/// A trade object: Coinbase's fields, each mostly good, sometimes missing or hostile.
fn trade() -> impl Strategy<Value = String> {
    let names = ["trade_id", "product_id", "price", "size", "side", "time"];
    let fields: Vec<BoxedStrategy<Option<String>>> = names
        .iter()
        .map(|name| {
            prop_oneof![
                8 => good_value(name).prop_map(Some),
                1 => field_value().prop_map(Some),
                1 => Just(None),
            ]
            .boxed()
        })
        .collect();
    fields.prop_map(move |values| {
        let body: Vec<String> = names
            .iter()
            .zip(values)
            .filter_map(|(name, value)| value.map(|v| format!("\"{name}\":{v}")))
            .collect();
        format!("{{{}}}", body.join(","))
    })
}

/// A frame of any channel with events of trades, candles or heartbeats.
fn frame() -> impl Strategy<Value = String> {
    let channel = prop_oneof![
        6 => Just("market_trades"),
        1 => Just("candles"),
        1 => Just("heartbeats"),
        1 => Just("subscriptions"),
        1 => Just("l2_data"),
        1 => Just(""),
    ];
    let timestamp = prop_oneof![
        3 => Just("\"2026-09-30T02:40:00.000001Z\"".to_owned()),
        1 => field_value(),
    ];
    let sequence = prop_oneof![
        3 => (0u64..1_000_000).prop_map(|n| n.to_string()),
        1 => field_value(),
    ];
    let event_type = prop_oneof![Just("snapshot"), Just("update"), Just("")];
    (
        channel,
        timestamp,
        sequence,
        prop::collection::vec((event_type, prop::collection::vec(trade(), 0..4)), 0..3),
    )
        .prop_map(|(channel, timestamp, sequence, events)| {
            let events: Vec<String> = events
                .into_iter()
                .map(|(kind, trades)| {
                    let list = trades.join(",");
                    format!(
                        "{{\"type\":\"{kind}\",\"trades\":[{list}],\"candles\":[{list}],\
                         \"current_time\":\"2026-09-30 02:40:00.1 +0000 UTC\",\
                         \"heartbeat_counter\":{}}}",
                        trades.len()
                    )
                })
                .collect();
            format!(
                "{{\"channel\":\"{channel}\",\"client_id\":\"\",\"timestamp\":{timestamp},\
                 \"sequence_num\":{sequence},\"events\":[{}]}}",
                events.join(",")
            )
        })
}

/// What an accepted frame must hold: positive, exact prices and sizes, named products.
fn check_accepted(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(frame) = parse_frame(bytes, received())
        && let FrameBody::MarketTrades { trades, .. } = frame.body
    {
        for trade in trades {
            prop_assert!(trade.price > Decimal::ZERO, "price {}", trade.price);
            prop_assert!(trade.size > Decimal::ZERO, "size {}", trade.size);
            prop_assert!(!trade.product_id.is_empty());
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn frames_built_from_coinbase_fields_never_panic_and_accept_only_sane_trades(frame in frame()) {
        check_accepted(frame.as_bytes())?;
    }

    #[test]
    fn mutated_frames_never_panic(
        frame in frame(),
        cuts in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut_at in any::<prop::sample::Index>(),
    ) {
        let mut bytes = frame.into_bytes();
        for (at, byte) in cuts {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        check_accepted(&bytes)?;
        let end = cut_at.index(bytes.len() + 1);
        check_accepted(&bytes[..end])?;
    }

    #[test]
    fn granularity_parsing_never_panics_and_accepted_names_round_trip(s in "\\PC{0,24}") {
        if let Ok(g) = s.parse::<Granularity>() {
            prop_assert_eq!(g.as_str().parse::<Granularity>(), Ok(g));
            prop_assert_eq!(g.to_string().parse::<Granularity>(), Ok(g));
        }
    }

    #[test]
    fn granularity_spellings_with_any_case_and_padding_parse(
        index in 0usize..8,
        lower in any::<bool>(),
        pad in "[ \t]{0,3}",
    ) {
        let g = Granularity::ALL[index];
        let name = if lower { g.as_str().to_lowercase() } else { g.as_str().to_owned() };
        prop_assert_eq!(format!("{pad}{name}{pad}").parse::<Granularity>(), Ok(g));
    }

    #[test]
    fn product_ids_that_parse_are_of_the_grammar(id in "\\PC{0,80}|[A-Za-z0-9/#?. \\x00\\r\\n-]{0,40}") {
        if let Ok(parsed) = ProductId::parse(&id) {
            prop_assert!(parsed.len() <= 33 && parsed.as_str() == id);
            let (base, quote) = id.split_once('-').expect("one dash");
            for code in [base, quote] {
                prop_assert!((1..=16).contains(&code.len()));
                prop_assert!(code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()));
            }
        }
        // A client's spelling is the same id upper-cased, or refused.
        if let Ok(parsed) = ProductId::from_client(&id) {
            prop_assert_eq!(parsed.as_str(), id.trim().to_ascii_uppercase());
        }
    }

    #[test]
    fn stream_queries_never_panic_and_stay_within_the_series_cap(
        query in stream_query(),
        cap in 1usize..20,
    ) {
        if let Ok(request) = params::parse(Some(&query), cap) {
            prop_assert!(!request.granularities.is_empty());
            if !request.products.is_empty() {
                prop_assert!(request.products.len() * request.granularities.len() <= cap);
            }
            for product in &request.products {
                prop_assert!(!product.is_empty() && product.len() <= 33, "{product:?}");
                prop_assert!(!product.contains(['<', '>', '"', '&', '\'', ' ']), "{product:?}");
            }
        }
    }

    #[test]
    fn page_queries_never_panic(query in page_query()) {
        if let Ok(parsed) = query::parse(Some(&query)) {
            prop_assert!(parsed.build.as_ref().is_none_or(|b| b.len() <= 64));
        }
    }
}

/// A query string of the stream's parameters with any values, percent-encoded or raw.
fn stream_query() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("products"),
        Just("product"),
        Just("granularities"),
        Just("granularity"),
        Just("datastar"),
        Just("x"),
    ];
    let value = prop_oneof![
        "[A-Za-z0-9,_-]{0,30}",
        "\\PC{0,20}",
        Just("BTC-USD,ETH-USD,,SOL-USD".to_owned()),
        Just("ONE_MINUTE,5m,1h,ONE_DAY".to_owned()),
        Just("%00%ff%c3%28".to_owned()),
        Just("%".to_owned()),
    ];
    prop::collection::vec((key, value, any::<bool>()), 0..6).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v, encode)| {
                let v = if encode {
                    form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
                } else {
                    v
                };
                format!("{k}={v}")
            })
            .collect::<Vec<_>>()
            .join("&")
    })
}

/// A page query: the granularity plain or inside Datastar's JSON signals, and a build.
fn page_query() -> impl Strategy<Value = String> {
    let signals = prop_oneof![
        "\\PC{0,40}",
        Just("{\"granularity\":\"1h\"}".to_owned()),
        Just("{\"granularity\":7}".to_owned()),
        Just("{\"granularity\":null,\"_link\":true}".to_owned()),
        Just("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]".to_owned()),
        "[0-9]{300,400}",
    ];
    (
        prop::option::of("\\PC{0,16}"),
        prop::option::of(signals),
        prop::option::of("\\PC{0,80}"),
    )
        .prop_map(|(granularity, signals, build)| {
            let mut parts = Vec::new();
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            if let Some(g) = granularity {
                parts.push(format!("granularity={}", enc(&g)));
            }
            if let Some(s) = signals {
                parts.push(format!("datastar={}", enc(&s)));
            }
            if let Some(b) = build {
                parts.push(format!("build={}", enc(&b)));
            }
            parts.join("&")
        })
}

#[test]
fn a_deeply_nested_datastar_parameter_is_refused_not_overflowed() {
    // serde_json refuses nesting past 128 levels with an error, not a stack overflow.
    let deep = format!("{}{}", "[".repeat(2000), "]".repeat(2000));
    let query = format!(
        "datastar={}",
        form_urlencoded::byte_serialize(deep.as_bytes()).collect::<String>()
    );
    assert!(query::parse(Some(&query)).is_err());
}

#[test]
fn the_frame_grammar_reaches_both_accepted_and_rejected_trades() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    // A fixed seed: the same frames every run.
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let strategy = frame();
    let (mut accepted, mut rejected) = (0usize, 0usize);
    for _ in 0..3000 {
        let frame = strategy.new_tree(&mut runner).expect("a frame").current();
        if let Ok(parsed) = parse_frame(frame.as_bytes(), received())
            && let FrameBody::MarketTrades {
                trades,
                rejected: bad,
                ..
            } = parsed.body
        {
            accepted += trades.len();
            rejected += bad.len();
        }
    }
    // Without this, the properties above could pass on frames that never reach a trade.
    assert!(accepted > 0, "no generated trade was accepted");
    assert!(rejected > 0, "no generated trade was rejected");
}
