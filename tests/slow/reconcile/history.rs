//! A fresh database: a full history served right after the start.

use super::*;

async fn get_json(url: &str) -> Value {
    reqwest::get(url)
        .await
        .expect("request")
        .json()
        .await
        .expect("json")
}

/// Simulator history of the fresh-database test, in minutes: more than a day and an hour
/// (the reconciler begins a product without recent history at the start of the UTC day, up to
/// 24 h 6 min back, and the stale product's minute is an hour before that) at any time of day.
const FRESH_HISTORY_MINUTES: u32 = 1_700;

/// HISTORY_BUCKETS of the fresh-database test: one-minute history back past the stale minute
/// (at most 25 h 7 min back) at any time of day, and starting inside the simulator's history,
/// so where it starts is checked. Coarser granularities reach past the simulator's first trade.
const FRESH_HISTORY_BUCKETS: i64 = 1_600;

/// Where the stored history of `g` may begin: `HISTORY_BUCKETS` buckets back from the bucket
/// of the moment history was filled, some time in `[filled_after, filled_before]`.
fn history_starts(g: Granularity, filled_after: i64, filled_before: i64) -> Vec<i64> {
    let w = width(g);
    let bucket = |t: i64| t - t.rem_euclid(w);
    (bucket(filled_after)..=bucket(filled_before))
        .step_by(w as usize)
        .map(|b| b - (FRESH_HISTORY_BUCKETS - 1) * w)
        .collect()
}

/// How the stored candles of `product` at `g` differ from the exchange's: they must be every
/// bucket the exchange has from where the history begins (one of `starts`) on, with its
/// OHLCV; a known trade count exact, an unknown one only on a candle from REST.
fn history_difference(
    rows: &BTreeMap<(String, Granularity, i64), StoredRow>,
    expected: &BTreeMap<(String, Granularity, i64), common::Ohlcv>,
    product: &str,
    g: Granularity,
    starts: &[i64],
) -> Option<String> {
    let of = |k: &(String, Granularity, i64)| k.0 == product && k.1 == g;
    let stored: Vec<i64> = rows.keys().filter(|k| of(k)).map(|k| k.2).collect();
    let wanted_from = |start: i64| -> Vec<i64> {
        expected
            .keys()
            .filter(|k| of(k) && k.2 >= start)
            .map(|k| k.2)
            .collect()
    };
    let Some(start) = starts.iter().find(|&&start| wanted_from(start) == stored) else {
        let wanted = wanted_from(starts[0]);
        return Some(format!(
            "{product} {g}: {} stored buckets, {:?}..{:?}; the exchange has {} from {:?} \
             (history may start at {starts:?})",
            stored.len(),
            stored.first(),
            stored.last(),
            wanted.len(),
            wanted.first(),
        ));
    };
    for (key, e) in expected.range((product.to_owned(), g, *start)..) {
        if !of(key) {
            break;
        }
        let StoredRow {
            ohlcv: got,
            trade_count,
            backfilled,
        } = &rows[key];
        if (&got.open, &got.high, &got.low, &got.close, &got.volume)
            != (&e.open, &e.high, &e.low, &e.close, &e.volume)
        {
            return Some(format!("{key:?}: stored {got:?}, the exchange {e:?}"));
        }
        match trade_count {
            Some(count) if *count != e.count => {
                return Some(format!("{key:?}: count {count}, the exchange {}", e.count));
            }
            None if !backfilled => {
                return Some(format!("{key:?}: no count but not marked backfilled"));
            }
            _ => {}
        }
    }
    None
}

#[tokio::test]
async fn a_fresh_database_serves_a_full_history_right_after_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let products = ["BTC-USD", "ETH-USD"];
    let sim = sim(dir.path(), &products, FRESH_HISTORY_MINUTES, 0.5).await;
    let db = TestDb::migrated().await;
    // BTC-USD was last stored an hour before the day the reconciler starts from began, beyond
    // the 1-hour horizon, and the service stopped inside that minute and hour: their candles
    // are partial (here: wrong). The reconciler's day is the one of the subscribe less the
    // revision window and a minute; if the subscribe comes a day later than this (just after
    // midnight), the minute is 25 h back, still inside the history span.
    let before_start = Utc::now().timestamp();
    let reach = before_start - 6 * 60;
    let stale_minute = reach - reach.rem_euclid(86_400) - 3_600;
    let partial = |g: Granularity| {
        let candle = Candle {
            product_id: spot_canvas::model::ProductId::from_static("BTC-USD"),
            granularity: g,
            start: DateTime::from_timestamp(stale_minute, 0).expect("start"),
            open: Decimal::ONE,
            high: Decimal::ONE,
            low: Decimal::ONE,
            close: Decimal::ONE,
            volume: Decimal::ONE,
            buy_volume: Some(Decimal::ONE),
            trade_count: Some(1),
        };
        CandleUpdate {
            complete: true,
            revision: 0,
            counted_trades: 1,
            last_trade_id: TradeId(1),
            last_trade_time: candle.start,
            last_received: candle.start,
            candle,
        }
    };
    Repository::new(db.pool.clone())
        .upsert_candles(&[
            partial(Granularity::OneMinute),
            partial(Granularity::OneHour),
        ])
        .await
        .expect("stale rows");
    let data = tempfile::tempdir().expect("data dir");
    let started = std::time::Instant::now();
    let buckets = FRESH_HISTORY_BUCKETS.to_string();
    let app = start_app(
        &sim,
        &db,
        data.path(),
        &products,
        &[
            ("HISTORY_BUCKETS", &buckets),
            ("BACKFILL_HORIZON_HOURS", "1"),
        ],
        Duration::from_secs(10),
    )
    .await;
    // Each product's start window (with its history) and start-edge window.
    wait_for(&app, "the start windows", Duration::from_secs(180), |h| {
        reconcile(h, "windows_done") >= 4 && reconcile(h, "windows_pending") == 0
    })
    .await;
    let history_filled = Utc::now().timestamp();
    println!("history filled after {:?}", started.elapsed());
    let health = health_of(&app).await;
    assert_eq!(reconcile(&health, "windows_failed"), 0, "{health:#}");
    assert!(reconcile(&health, "history_candles") > 0, "{health:#}");

    // Trading stops: every candle is final, and what is in flight lands.
    sim.state.exchange.set_paused(true);
    // The simulator's ticks run on this (single-threaded) runtime: none is half done here, so
    // the log is final.
    let log = read_trade_log(&dir.path().join("trades.jsonl"));
    let all: Vec<&LoggedTrade> = log.iter().collect();
    let expected = aggregate(&all);
    let last_difference = std::sync::Mutex::new(String::new());
    common::wait_for(
        "every granularity's history stored",
        Duration::from_secs(60),
        || async {
            let rows = stored_rows(&db.pool).await;
            let difference = products.iter().find_map(|p| {
                Granularity::ALL.into_iter().find_map(|g| {
                    let starts = history_starts(g, before_start, history_filled);
                    history_difference(&rows, &expected, p, g, &starts)
                })
            });
            let mut last = last_difference.lock().expect("last difference");
            match difference {
                None => true,
                Some(d) => {
                    if *last != d {
                        // Shown when the test fails.
                        println!("not yet: {d}");
                        *last = d;
                    }
                    false
                }
            }
        },
    )
    .await;
    // The service's own answer is what is stored: the newest candles of each granularity. The
    // writer may still be flushing (a backfill at a minute's edge lands between two reads):
    // the answer and the table must agree once it is done.
    let mut disagreement = String::new();
    let agreed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match api_agrees_with_table(app.port, &db.pool).await {
                Ok(()) => return,
                Err(why) => disagreement = why,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    assert!(
        agreed.is_ok(),
        "the API and the table disagree: {disagreement}"
    );
    let rows = stored_rows(&db.pool).await;

    // The stale product's partial candles (and every bucket around its minute) were replaced
    // by REST's.
    for g in Granularity::ALL {
        let key = (
            "BTC-USD".to_owned(),
            g,
            stale_minute - stale_minute.rem_euclid(width(g)),
        );
        let row = rows.get(&key).unwrap_or_else(|| panic!("{key:?} stored"));
        assert!(
            row.backfilled && row.trade_count.is_none(),
            "{key:?} from REST: {row:?}"
        );
        assert_ne!(row.ohlcv.open, Decimal::ONE, "{key:?} replaced");
    }
    let bad = reqwest::get(format!(
        "http://127.0.0.1:{}/api/v1/candles?product=ETH-USD&granularity=7m",
        app.port
    ))
    .await
    .expect("request");
    assert_eq!(bad.status(), 400);
    let message: Value = bad.json().await.expect("json");
    assert!(
        message["error"]
            .as_str()
            .is_some_and(|m| m.contains("granularity")),
        "{message}"
    );
    stop(app).await;
    sim.stop().await;
}

/// Whether `/api/v1/candles` answers exactly the newest stored candles of ETH-USD in every
/// granularity; the first difference otherwise.
async fn api_agrees_with_table(port: u16, pool: &sqlx::PgPool) -> Result<(), String> {
    for g in Granularity::ALL {
        let body = get_json(&format!(
            "http://127.0.0.1:{port}/api/v1/candles?product=ETH-USD&granularity={}&limit=1000",
            g.short_name()
        ))
        .await;
        let rows = stored_rows(pool).await;
        let candles = body["candles"].as_array().ok_or("no candles")?;
        let stored: Vec<(&(String, Granularity, i64), &StoredRow)> = rows
            .iter()
            .filter(|(k, _)| k.0 == "ETH-USD" && k.1 == g)
            .collect();
        let newest = &stored[stored.len().saturating_sub(1000)..];
        if candles.len() != newest.len() {
            return Err(format!(
                "{g}: {} candles, {} stored",
                candles.len(),
                newest.len()
            ));
        }
        for (c, ((_, _, start), row)) in candles.iter().zip(newest) {
            let decimal = |f: &str| -> Option<Decimal> { c[f].as_str()?.parse().ok() };
            let answered = (
                c["timestamp"].as_i64(),
                decimal("open"),
                decimal("high"),
                decimal("low"),
                decimal("close"),
                decimal("volume"),
                c["trade_count"].as_u64(),
                c["backfilled"].as_bool(),
            );
            let expected = (
                Some(*start),
                Some(row.ohlcv.open),
                Some(row.ohlcv.high),
                Some(row.ohlcv.low),
                Some(row.ohlcv.close),
                Some(row.ohlcv.volume),
                row.trade_count,
                Some(row.backfilled),
            );
            if answered != expected {
                return Err(format!(
                    "{g} {start}: answered {answered:?}, stored {expected:?}"
                ));
            }
        }
    }
    Ok(())
}
