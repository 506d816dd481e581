//! The dashboard in headless Chromium: the `spot-canvas` binary fed by the simulator, its pages
//! driven by `tests/browser/dashboard.mjs` (playwright-core with Debian's `chromium`).
//!
//! The script checks that the board lists every product and its rows change as the simulator
//! trades, that the granularity switch, filter and sort work, that the chart's last bar equals
//! the newest `<spot-candle>` and its canvas changes, that both pages fit a phone in dark mode,
//! that a frozen service (SIGSTOP: sockets open, nothing sent) is noticed and the page comes
//! back live after it resumes, that no console error happens, and that stopping the service
//! shows the disconnected state.
//! Each check writes a screenshot under `target/screenshots/`. It needs what `task test` sets
//! up first: the built assets (`task assets`), `node_modules` and `/usr/bin/chromium`.

use crate::common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{AppEnv, Service};
use spot_canvas_sim::{SimConfig, Simulator};

const PRODUCTS: usize = 8;

#[tokio::test]
async fn the_dashboard_in_headless_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["app.css", "app.js", "datastar.js"] {
        assert!(
            root.join("static").join(file).is_file(),
            "static/{file} is missing: run `task assets` (task test does)"
        );
    }
    assert!(
        root.join("node_modules/playwright-core").is_dir(),
        "node_modules lacks playwright-core: run `npm ci` (task test does)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).is_file(),
        "{chromium} is missing: `apt-get install chromium` (task deps does)"
    );

    let logs = tempfile::tempdir().expect("tempdir");
    let sim = Simulator::start(SimConfig {
        products: PRODUCTS,
        trades_per_second: 3.0,
        history_minutes: 60,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let data_dir = common::data_dir();
    let env = AppEnv::for_sim(&sim, data_dir.path())
        .set("STATIC_DIR", root.join("static").display().to_string())
        .set("BACKFILL_HORIZON_HOURS", "2")
        // The pages presume a stream dead after three silent heartbeats: 6 s here.
        .set("STREAM_KEEPALIVE_SECS", "2");
    let mut service = Service::start(&env, &logs.path().join("serve.log")).await;
    let base = format!("http://127.0.0.1:{}", service.port);

    // Every product listed and live before the browser opens the board.
    let products: Vec<String> = common::eventually(
        "every product listed and live",
        Duration::from_secs(90),
        || async {
            let answer: serde_json::Value = reqwest::Client::new()
                .get(format!("{base}/api/v1/products"))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            // The board shows the markets the service ingests (not aliases, delisted or
            // disabled ones, which the simulator also lists).
            let ingested: Vec<&serde_json::Value> = answer["products"]
                .as_array()?
                .iter()
                .filter(|p| p["ingested"] == true)
                .collect();
            let live = ingested.iter().filter(|p| p["live"] == true).count();
            (ingested.len() == PRODUCTS && live == PRODUCTS).then(|| {
                ingested
                    .iter()
                    .filter_map(|p| p["id"].as_str().map(str::to_owned))
                    .collect()
            })
        },
    )
    .await;

    let screenshots = root.join("target/screenshots");
    let script = root.join("tests/browser/dashboard.mjs");
    let run = tokio::process::Command::new("node")
        .arg(&script)
        .current_dir(root)
        .env("BASE_URL", &base)
        .env("SERVICE_PID", service.pid().to_string())
        .env("PRODUCTS", serde_json::to_string(&products).expect("json"))
        .env("SCREENSHOTS", &screenshots)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the browser checks finish within 5 minutes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "browser checks failed (screenshots in {}):\n{stdout}\n{stderr}\nservice log:\n{}",
        screenshots.display(),
        service.log()
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    // The last check stopped the service with SIGTERM: it drains and exits cleanly.
    let status = service.wait_exit(Duration::from_secs(60)).await;
    assert!(
        status.success(),
        "the service exits 0 after SIGTERM: {status}"
    );
}
