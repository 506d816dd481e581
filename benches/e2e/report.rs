//! What the bench prints: the machine it runs on and the tables of the scenarios' figures.

use super::*;

pub(crate) fn print_machine(open_files: (u64, u64)) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "machine: {cores} cores ({cpu}), Linux {}, open files limit {} (hard {}); the \
         simulator, the clients, the service, PostgreSQL and nats-server share them",
        kernel.trim(),
        open_files.0,
        open_files.1
    );
}

pub(crate) fn print_tables(s: &Settings, rows: &[Row]) {
    println!(
        "\n{} products, granularity {}, {} s measured per scenario after {} s of warm-up; \
         a frame not delivered within {} s is lost\n",
        s.products, s.granularity, s.secs, s.warmup_secs, s.loss_window_secs
    );
    println!(
        "| scenario | deliveries | p50 | p90 | p99 | p99.9 | max | floor p50 | floor p90 | floor p99 | floor p99.9 | floor max | p50 / floor | p99 / floor |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let l = &r.outcome.latencies;
        let f = &r.outcome.floor;
        let q = |v: &[u32], p: f64| format!("{:.2} ms", quantile_ms(v, p));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1}× | {:.1}× |",
            label(r),
            l.len(),
            q(l, 0.5),
            q(l, 0.9),
            q(l, 0.99),
            q(l, 0.999),
            q(l, 1.0),
            q(f, 0.5),
            q(f, 0.9),
            q(f, 0.99),
            q(f, 0.999),
            q(f, 1.0),
            quantile_ms(l, 0.5) / quantile_ms(f, 0.5),
            quantile_ms(l, 0.99) / quantile_ms(f, 0.99),
        );
    }
    println!(
        "\n| scenario | trades/s | product frames/s | updates delivered/s | judged | lost | duplicated | miscounted (of checked; without a count) | service resyncs | service cut-offs | client errors | service CPU (% of one core) | peak RSS | bench process CPU | machine busy (all cores) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let o = &r.outcome;
        let errors = r.connect_errors.len() + o.client_errors.len();
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} (of {}; {}) | {} | {} | {} | {:.0} % | {:.0} MiB | {:.0} % | {:.0} % |",
            label(r),
            r.trades as f64 / r.secs,
            o.frames_in_window as f64 / r.secs,
            o.events_in_window as f64 / r.secs,
            o.judged,
            o.lost,
            o.duplicates,
            r.counted.miscounted,
            r.counted.checked,
            r.counted.unknown,
            r.resyncs,
            r.cut_off,
            errors,
            100.0 * r.cpu_seconds / r.secs,
            r.peak_rss_mib,
            100.0 * r.own_cpu_seconds / r.secs,
            100.0 * r.machine_busy,
        );
    }
    println!(
        "\nThe service's own histograms over the same windows (frame received by its feed →; \
         bucket upper bounds):\n"
    );
    println!("| scenario | → engine output p50 | p99 | → written to a stream client p50 | p99 |");
    println!("|---|---|---|---|---|");
    for r in rows {
        // NaN: a reading failed or the window had no observations; infinite: past the
        // largest bucket.
        let ms = |s: f64| {
            if s.is_nan() {
                "n/a".to_owned()
            } else if s.is_infinite() {
                "past the largest bucket".to_owned()
            } else {
                format!("≤ {} ms", s * 1000.0)
            }
        };
        let [(e50, c50), (e99, c99)] = r.inside;
        println!(
            "| {} | {} | {} | {} | {} |",
            label(r),
            ms(e50),
            ms(e99),
            ms(c50),
            ms(c99)
        );
    }
    for r in rows {
        let mut errors: Vec<&String> = r
            .connect_errors
            .iter()
            .chain(r.outcome.client_errors.iter())
            .collect();
        if errors.is_empty() {
            continue;
        }
        errors.sort();
        errors.dedup();
        println!("\n{} client errors (distinct):", r.name);
        for e in errors.iter().take(10) {
            println!("  {e}");
        }
    }
}

fn label(r: &Row) -> String {
    format!(
        "{} ({} clients, {} trades/s/product)",
        r.name, r.clients, r.rate
    )
}
