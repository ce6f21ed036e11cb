//! The node's dashboard in a real browser: `pricefeed-sim` (small catalogue), a scheduler syncing
//! instruments from it and one node ingesting them, against real Postgres and Redis. Debian's
//! headless Chromium loads the node's `/` page, runs its JavaScript and dumps the rendered DOM;
//! the test checks what only the page's fetches can have rendered (node id, readiness, cluster
//! card, node table, a priced `BTCUSDT` row), and that a screenshot comes out as a real PNG.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pricefeed_tests::{
    SMALL_CATALOGUE, Sim, base_env, fresh_database, get_json, http_client, migrate, scratch_dir,
    start_nodes, start_schedulers, wait_for,
};
use regex::Regex;

const READY: Duration = Duration::from_secs(30);
/// How long one Chromium run may take on a loaded 2-core machine.
const BROWSER: Duration = Duration::from_secs(90);

/// The simulator's small catalogue, with trades flowing on BTCUSDT.
const SIM: [(&str, &str); 2] = [("UNDERLYINGS", "2"), ("HOT_SYMBOLS", "1")];

/// The Chromium binary: `PRICEFEED_CHROMIUM`, else Debian's `/usr/bin/chromium`; fails the test
/// when it is missing.
fn chromium() -> PathBuf {
    let p = PathBuf::from(
        std::env::var("PRICEFEED_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    assert!(
        p.exists(),
        "{} not found: install Debian's `chromium` package (apt-get install chromium; \
         ./dev test installs it) or set PRICEFEED_CHROMIUM",
        p.display()
    );
    p
}

/// Runs headless Chromium on `url` with `mode` (`--dump-dom` or `--screenshot=…`) and a fresh
/// profile, within [`BROWSER`]; returns its stdout.
async fn run_chromium(url: &str, mode: &str) -> String {
    let dir = scratch_dir("chromium");
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(mode)
        .arg(url)
        .env("HOME", &dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("spawn chromium");
    let until = Instant::now() + BROWSER;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium {mode} did not finish within {BROWSER:?}:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status.success(),
        "chromium {mode} exited with {status}:\n{}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    std::fs::read_to_string(&out).unwrap()
}

/// The first capture of `re` in `dom`, or a failure showing the DOM.
fn capture(dom: &str, what: &str, re: &str) -> String {
    let re = Regex::new(re).unwrap();
    match re.captures(dom) {
        Some(c) => c.get(1).map_or("", |m| m.as_str()).to_string(),
        None => panic!("rendered dashboard lacks {what} (`{re}`):\n{dom}"),
    }
}

#[tokio::test]
async fn dashboard_renders_node_cluster_and_prices_in_chromium() {
    let chromium_bin = chromium();
    let http = http_client(Duration::from_secs(5));
    let sim = Sim::start(&[&SMALL_CATALOGUE[..], &SIM].concat()).await;
    let db = fresh_database().await.unwrap();
    let mut env = base_env(&db);
    env.extend(sim.broker_env());
    for (k, v) in [
        ("PRICEFEED__SCHEDULER__SYNC_UNDERLYINGS_MS", "1000"),
        ("PRICEFEED__SCHEDULER__SYNC_DERIVATIVES_MS", "1000"),
    ] {
        env.push((k.into(), v.into()));
    }
    migrate(&env, READY).await;
    let _sched = start_schedulers(&["sched"], &env).await;
    let nodes = start_nodes(&["dash-node"], &env).await;
    let node = &nodes[0];

    // The node prices BTCUSDT (synced by the scheduler, ingested from the simulator) and shows
    // itself, alone, under a leader in its cluster view.
    let price_url = node.url("/api/v1/prices/BTCUSDT");
    wait_for(READY, || async {
        get_json(&http, &price_url)
            .await
            .is_ok_and(|v| v["price"].is_string())
    })
    .await
    .unwrap_or_else(|()| panic!("BTCUSDT never priced on the node:\n{}", node.log_tail()));
    let cluster_url = node.url("/api/v1/cluster");
    wait_for(READY, || async {
        get_json(&http, &cluster_url).await.is_ok_and(|v| {
            v["nodes"].as_array().is_some_and(|n| n.len() == 1) && v["leader"]["holder"].is_string()
        })
    })
    .await
    .unwrap_or_else(|()| panic!("cluster view never showed one node under a leader"));

    // The DOM after the page's scripts ran: each value below is written by `refresh()`.
    let dom = run_chromium(&node.url("/"), "--dump-dom").await;
    capture(&dom, "the node id", r#"<span id="node">(dash-node)</span>"#);
    capture(&dom, "readiness", r#"<div id="ready"[^>]*>(ready)\s"#);
    let leader = capture(
        &dom,
        "the cluster card with one node and a leader",
        r#"<div id="cluster"[^>]*>epoch \d+ · 1 nodes · \d+ instruments · leader ([^<(]+) \(term \d+\)</div>"#,
    );
    capture(
        &dom,
        "the node table row",
        r#"<table id="nodes"[^>]*>[\s\S]*?<tbody><tr><td><code>(dash-node)</code></td>"#,
    );
    let price = capture(
        &dom,
        "a priced BTCUSDT row",
        r#"<tr><td><code>BTCUSDT</code></td><td>[^<]*</td><td>(\d+(?:\.\d+)?)</td>"#,
    );
    println!(
        "dashboard rendered in {}: leader {leader}, BTCUSDT {price}",
        chromium_bin.display()
    );

    // A screenshot of the same page is a real, non-blank PNG.
    let shot_dir = scratch_dir("dashboard");
    let shot = shot_dir.join("dashboard.png");
    run_chromium(&node.url("/"), &format!("--screenshot={}", shot.display())).await;
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        shot.display()
    );
    assert!(
        png.len() > 10 * 1024,
        "{} is only {} bytes",
        shot.display(),
        png.len()
    );
    println!("screenshot {} ({} bytes)", shot.display(), png.len());
}
