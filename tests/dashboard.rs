//! The node's dashboard in a real browser, against a running cluster: `pricefeed-sim` (small,
//! volatile catalogue), a scheduler, a worker sending alert mail to a real SMTP sink, three nodes,
//! real Postgres and Redis. Debian's headless Chromium, driven over the DevTools protocol
//! (`tests/support/browser.rs`), opens `/` on a node that does not own BTCUSDT and uses the page
//! the way a person would:
//!
//! 1. live prices arrive by push: BTCUSDT's price text changes without a reload while the page
//!    fetches no price over REST, its perpetual is priced too, and every request stayed on the node;
//! 2. the chart draws candles;
//! 3. an instrument whose trades the simulator stops delivering is marked stale, and recovers;
//! 4. an account is created and two alerts (`above` and `below`, 0.05 % from the price shown) are
//!    made through the form; a trigger arrives in the page live, its delivery state reaches `sent`
//!    on both channels (checked against the notifications API), the other alert is deleted from
//!    the page;
//! 5. the σ rank and the ranking table fill in; the chart zooms in from its button and back;
//! 6. BTCUSDT's owner is SIGKILLed: the page marks it dead and shows its slice moving to the
//!    survivors within seconds, and BTCUSDT's price keeps updating through the failover;
//! 7. the layout fits a phone without sideways scrolling; after a reload the session is still
//!    there, every control has an accessible name, the skip link comes first in the tab order
//!    and moves focus to the main content, and no script error happened.
//!
//! Screenshots (PNG) of each stage are saved in the test's scratch directory and their paths
//! printed. Every wait is a poll on what the page shows, with a deadline.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use pricefeed_tests::browser::{Browser, Page, js_str};
use pricefeed_tests::smtp::SmtpSink;
use pricefeed_tests::{
    Proc, Sim, base_env, bin, fresh_database, get_json, http_client, migrate, scratch_dir,
    seed_from_catalogue, signal, start_nodes, start_schedulers, wait_for,
};
use rust_decimal::Decimal;
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(60);
/// One step of the page reacting (a push, a poll, a click) on a loaded 2-core machine.
const STEP: Duration = Duration::from_secs(30);
const KEY: &str = "spot:BTCUSDT";
const EMAIL: &str = "dashboard@example.com";
const PASSWORD: &str = "correct horse battery staple";

/// The node whose ingest lists `key` as live.
async fn owner(http: &reqwest::Client, nodes: &[Proc], key: &str) -> usize {
    let until = Instant::now() + READY;
    loop {
        for (i, n) in nodes.iter().enumerate() {
            if let Ok(v) = get_json(http, &n.url("/api/v1/cluster/ingest")).await
                && v["instruments"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|x| x["key"] == key && x["live"] == true))
            {
                return i;
            }
        }
        assert!(Instant::now() < until, "{key} has no live owner");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Saves a screenshot (`full_page` or the viewport) as `name` in `dir`, checks it is a real PNG
/// and prints its path.
async fn shot(page: &Page, dir: &Path, name: &str, full_page: bool) {
    let path = dir.join(name);
    let bytes = page
        .screenshot(&path, full_page)
        .await
        .unwrap_or_else(|e| panic!("screenshot {name}: {e:#}"));
    let png = std::fs::read(&path).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        path.display()
    );
    assert!(
        bytes > 20 * 1024,
        "{} is only {bytes} bytes",
        path.display()
    );
    println!("screenshot {} ({bytes} bytes)", path.display());
}

/// A decimal string of the API as the page writes it: exact, without trailing zeros.
fn dec(v: &Value) -> String {
    Decimal::from_str(v.as_str().unwrap_or_else(|| panic!("not a decimal: {v}")))
        .unwrap()
        .normalize()
        .to_string()
}

/// The page's text for the price of `key` (the row's price cell), or null.
fn price_js(key: &str) -> String {
    format!(
        "(() => {{ const r = document.querySelector('#price-rows tr[data-key=' + {k} + ']'); \
         if (!r) return null; const p = r.querySelector('.price').textContent; \
         return /^[0-9]+(\\.[0-9]+)?$/.test(p) ? {{price: p, trade: Number(r.dataset.tradeId)}} : null; }})()",
        k = js_str(&format!("\"{key}\""))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_live_prices_alerts_and_a_failover_in_chromium() {
    let started = Instant::now();
    let http = http_client(Duration::from_secs(10));

    // The cluster: volatile prices so an alert near the price fires soon (as in tests/journey.rs).
    let sim = Sim::start_small(&[
        ("UNDERLYINGS", "2"),
        ("HOT_SYMBOLS", "1"),
        ("VOL_SCALE", "20.0"),
    ])
    .await;
    let control = sim.port("control");
    let db = fresh_database().await.unwrap();
    let sink = SmtpSink::start(&[]).await;
    let mut env = base_env(&db);
    env.extend(sim.broker_env());
    env.extend(sink.worker_env());
    for (k, v) in [
        ("PRICEFEED__WORKER__POLL_MS", "100"),
        // Reconciliation soon after trades arrive, so the chart can show validated VWAP too.
        ("PRICEFEED__RECONCILE__INTERVAL_MS", "10000"),
    ] {
        env.push((k.into(), v.into()));
    }
    migrate(&env, READY).await;
    let keys = seed_from_catalogue(&http, &sim, &db).await;
    assert!(keys.contains(KEY), "{keys:?}");
    let quiet = keys
        .iter()
        .find(|k| k.starts_with("spot:") && *k != KEY)
        .expect("a second spot underlying")
        .clone();
    let quiet_symbol = quiet.trim_start_matches("spot:").to_string();
    let _sched = start_schedulers(&["sched"], &env).await;
    let _worker = Proc::start_ready("worker", &bin("pricefeed-scheduler"), &["worker"], &env)
        .await
        .unwrap();
    let mut nodes = start_nodes(&["n1", "n2", "n3"], &env).await;
    let victim = owner(&http, &nodes, KEY).await;
    let page_node = (victim + 1) % nodes.len();
    let victim_id = nodes[victim].name.clone();
    let url = nodes[page_node].url("/");
    let cluster_url = nodes[page_node].url("/api/v1/cluster");
    wait_for(READY, || async {
        get_json(&http, &cluster_url).await.is_ok_and(|v| {
            v["unassigned"] == 0
                && v["nodes"]
                    .as_array()
                    .is_some_and(|n| n.iter().filter(|n| n["alive"] == true).count() == 3)
        })
    })
    .await
    .unwrap_or_else(|()| panic!("the cluster never had 3 live nodes and no unassigned instrument"));
    println!(
        "cluster up in {:?}: {} owns {KEY}; the page is on {} ({url})",
        started.elapsed(),
        victim_id,
        nodes[page_node].name
    );

    let shots = scratch_dir("dashboard-screenshots");
    let browser = Browser::launch(&scratch_dir("chromium"), READY)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let page = browser.new_page(1280, 900).await.unwrap();
    page.navigate(&url, READY).await.unwrap();
    page.eval("performance.setResourceTimingBufferSize(100000); window.__sameDocument = true;")
        .await
        .unwrap();

    // 1. Live prices by push.
    page.wait(
        "the node id",
        STEP,
        &format!(
            "document.getElementById('node-id').textContent === {}",
            js_str(&nodes[page_node].name)
        ),
    )
    .await;
    page.wait(
        "the stream connected",
        STEP,
        "document.getElementById('live-status').classList.contains('live')",
    )
    .await;
    let first = page.wait("a BTCUSDT price", READY, &price_js(KEY)).await;
    let p0 = first["price"].as_str().unwrap().to_string();
    let changed = page
        .wait(
            "BTCUSDT's price text changing",
            STEP,
            &format!(
                "(() => {{ const v = {}; return v && v.price !== {} ? v : null; }})()",
                price_js(KEY),
                js_str(&p0)
            ),
        )
        .await;
    println!("BTCUSDT on the page: {p0} → {}", changed["price"]);
    page.wait("the perpetual's price", STEP, &price_js("usdm:BTCUSDT"))
        .await;
    let frames = page.eval("window.pricefeed.stream.frames").await.unwrap();
    let requests = page
        .eval(
            "(() => { const r = performance.getEntriesByType('resource').map(e => e.name); \
             return { polled: r.filter(n => /\\/api\\/v1\\/prices(\\/[A-Z0-9]+)?(\\?|$)/.test(new URL(n).pathname + new URL(n).search)), \
                      foreign: r.filter(n => new URL(n).origin !== location.origin), same: window.__sameDocument === true }; })()",
        )
        .await
        .unwrap();
    assert_eq!(
        requests["polled"],
        json!([]),
        "latest prices must come by push, not REST polling"
    );
    assert_eq!(
        requests["foreign"],
        json!([]),
        "the page loads nothing from another host"
    );
    assert_eq!(requests["same"], true, "the page was never reloaded");
    println!(
        "{frames} stream frames so far; no REST price polling; every request went to the node"
    );

    // 2. The chart: candles, zoom in from the button, back to the whole day.
    page.click(&format!("#price-rows tr[data-key=\"{KEY}\"] button"))
        .await
        .unwrap();
    let candles = page
        .wait(
            "BTCUSDT candles",
            STEP,
            "(() => { const e = document.getElementById('chart-plot'); \
             return e.querySelector('canvas') && window.pricefeed.chart.key === 'spot:BTCUSDT' && Number(e.dataset.candles) > 0 \
               ? { candles: Number(e.dataset.candles), vwap: Number(e.dataset.vwapPoints), label: e.getAttribute('aria-label') } : null; })()",
        )
        .await;
    println!("chart: {candles}");
    shot(&page, &shots, "01-live-prices.png", true).await;

    // 3. The simulator stops delivering the quiet instrument's trades: the page marks it stale.
    let fault = format!("http://{control}/control/faults/symbols/{quiet_symbol}");
    let r = http
        .put(&fault)
        .json(&json!({"drop": 1.0}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let dropped_at = Instant::now();

    // 4. Sign up and create two alerts around the price through the form.
    page.type_into("#signin-email", EMAIL).await.unwrap();
    page.type_into("#signin-password", PASSWORD).await.unwrap();
    page.click("#register-submit").await.unwrap();
    page.wait(
        "the signed-in state",
        STEP,
        &format!("document.getElementById('whoami').textContent === 'Signed in as {EMAIL}'"),
    )
    .await;
    // Level conditions 0.05 % either side of the price the page shows: whichever way the
    // volatile price goes (even before the owner has loaded the alert), one of them fires.
    let band = Decimal::new(5, 4);
    let mut made = Vec::new();
    for (cond, side) in [("above", Decimal::ONE), ("below", -Decimal::ONE)] {
        let price = page.wait("a BTCUSDT price", STEP, &price_js(KEY)).await;
        let p = Decimal::from_str(price["price"].as_str().unwrap()).unwrap();
        let thr = (p * (Decimal::ONE + side * band))
            .round_dp(2)
            .normalize()
            .to_string();
        page.type_into("#alert-symbol", "BTCUSDT").await.unwrap();
        page.choose("#alert-market", "spot").await.unwrap();
        page.choose("#alert-condition", cond).await.unwrap();
        page.type_into("#alert-threshold", &thr).await.unwrap();
        page.type_into("#alert-note", "from the dashboard test")
            .await
            .unwrap();
        page.click("#alert-create").await.unwrap();
        let id = page
            .wait(
                &format!("the {cond} alert created"),
                STEP,
                &format!(
                    "(() => {{ const m = /^Alert #(\\d+) created: BTCUSDT {} /.exec(document.getElementById('alerts-msg').textContent); \
                     return m ? Number(m[1]) : null; }})()",
                    if cond == "above" { "price above" } else { "price below" },
                ),
            )
            .await;
        made.push((id.as_i64().unwrap(), cond, thr));
    }
    page.wait(
        "both alerts listed",
        STEP,
        &format!(
            "document.querySelectorAll('#alert-rows tr[data-alert=\"{}\"], #alert-rows tr[data-alert=\"{}\"]').length === 2",
            made[0].0, made[1].0
        ),
    )
    .await;
    println!("alerts made through the page: {made:?}");

    // The same alerts through the API, as the test's own session of the same account.
    let tok: Value = http
        .post(nodes[page_node].url("/api/v1/auth/token"))
        .json(&json!({"email": EMAIL, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = tok["access_token"].as_str().expect("a token").to_string();
    let listed: Value = http
        .get(nodes[page_node].url("/api/v1/alerts"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (id, cond, thr) in &made {
        let a = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == *id)
            .unwrap_or_else(|| panic!("alert {id} not in {listed}"));
        assert_eq!(a["condition"], *cond, "{a}");
        assert_eq!(
            Decimal::from_str(a["threshold"].as_str().unwrap()).unwrap(),
            Decimal::from_str(thr).unwrap(),
            "{a}"
        );
        assert_eq!(a["channels"].as_array().map(Vec::len), Some(2), "{a}");
    }

    // A trigger arrives in the page live, then its delivery state on both channels.
    let trig = page
        .wait(
            "an alert trigger",
            Duration::from_secs(180),
            "(() => { const li = document.querySelector('#trigger-list li[data-trigger]'); \
             return li ? { trigger: Number(li.dataset.trigger), alert: Number(li.dataset.alert), text: li.textContent } : null; })()",
        )
        .await;
    let (trigger_id, fired) = (
        trig["trigger"].as_i64().unwrap(),
        trig["alert"].as_i64().unwrap(),
    );
    assert!(made.iter().any(|a| a.0 == fired), "{trig}");
    println!("trigger in the page: {}", trig["text"]);
    for channel in ["websocket", "email"] {
        page.wait(
            &format!("{channel} delivery sent"),
            Duration::from_secs(60),
            &format!(
                "!!document.querySelector('#trigger-list li[data-trigger=\"{trigger_id}\"] .delivery[data-channel=\"{channel}\"][data-state=\"sent\"]')"
            ),
        )
        .await;
    }
    let notes: Value = http
        .get(nodes[page_node].url(&format!("/api/v1/alerts/{fired}/notifications")))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let item = notes["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["trigger_id"] == trigger_id)
        .unwrap_or_else(|| panic!("trigger {trigger_id} not in {notes}"));
    assert!(
        trig["text"].as_str().unwrap().contains(&format!(
            "trade {} at {}",
            item["trade_id"],
            dec(&item["price"])
        )),
        "the page names the trade and its exact price: {trig} vs {item}"
    );
    assert!(
        item["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["state"] == "sent"),
        "{item}"
    );

    // The quiet instrument is marked stale by now (no trade for 15 s).
    let stale = page
        .wait(
            &format!("{quiet} marked stale"),
            Duration::from_secs(60),
            &format!(
                "(() => {{ const r = document.querySelector('#price-rows tr[data-key=\"{quiet}\"]'); \
                 const b = r && r.querySelector('.stale-badge'); \
                 return r && r.classList.contains('stale') && !b.hidden && b.textContent === 'stale' ? r.querySelector('.age').textContent : null; }})()"
            ),
        )
        .await;
    let fresh_btc = page
        .eval(&format!(
            "!document.querySelector('#price-rows tr[data-key=\"{KEY}\"]').classList.contains('stale')"
        ))
        .await
        .unwrap();
    assert_eq!(fresh_btc, true, "BTCUSDT keeps trading, so it is not stale");
    println!(
        "{quiet} marked stale {:?} after its trades stopped (trade age shown: {stale})",
        dropped_at.elapsed()
    );
    shot(&page, &shots, "02-alert-trigger-and-stale-price.png", true).await;

    // Delete the other alert from the page.
    let other = made.iter().find(|a| a.0 != fired).unwrap().0;
    page.click(&format!(
        "#alert-rows tr[data-alert=\"{other}\"] button.danger"
    ))
    .await
    .unwrap();
    page.wait(
        "the deleted alert gone from the list",
        STEP,
        &format!(
            "!document.querySelector('#alert-rows tr[data-alert=\"{other}\"]') && \
             document.getElementById('alerts-msg').textContent === 'Alert #{other} deleted.'"
        ),
    )
    .await;
    let gone = http
        .get(nodes[page_node].url(&format!("/api/v1/alerts/{other}")))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404, "alert {other} deleted through the page");

    // Trades flow again: the stale mark goes away.
    let r = http.delete(&fault).send().await.unwrap();
    assert!(r.status().is_success());
    page.wait(
        &format!("{quiet} fresh again"),
        Duration::from_secs(60),
        &format!(
            "(() => {{ const r = document.querySelector('#price-rows tr[data-key=\"{quiet}\"]'); \
             return r && !r.classList.contains('stale'); }})()"
        ),
    )
    .await;

    // 5. σ rank of the charted instrument and the ranking table (σ needs one completed minute).
    let rank = page
        .wait(
            "BTCUSDT's σ rank",
            Duration::from_secs(150),
            "(() => { const d = document.getElementById('stats').dataset.rank; \
             return d ? document.querySelector('#stats dd').textContent : null; })()",
        )
        .await;
    let ranked = page
        .wait(
            "the ranking table",
            STEP,
            "(() => { const rows = [...document.querySelectorAll('#ranking-rows tr[data-key]')]; \
             return rows.length >= 2 ? rows.map(r => r.textContent) : null; })()",
        )
        .await;
    assert!(
        ranked[0].as_str().unwrap().starts_with("1/"),
        "the most volatile first: {ranked}"
    );
    println!("σ rank: {rank}; ranking: {ranked}");

    // Zoom in from the button once there are two candles (refreshed every 20 s), and back.
    page.wait(
        "two BTCUSDT candles",
        Duration::from_secs(90),
        "Number(document.getElementById('chart-plot').dataset.candles) >= 2",
    )
    .await;
    let span =
        "(() => { const s = window.pricefeed.chart.plot.scales.x; return s.max - s.min; })()";
    let whole = page.eval(span).await.unwrap().as_f64().unwrap();
    page.click("#zoom-in").await.unwrap();
    page.wait(
        "the chart zoomed in",
        STEP,
        &format!("window.pricefeed.chart.zoomed && {span} < {whole} * 0.75"),
    )
    .await;
    page.click("#zoom-reset").await.unwrap();
    page.wait(
        "the chart back to the whole day",
        STEP,
        "!window.pricefeed.chart.zoomed",
    )
    .await;
    shot(&page, &shots, "03-chart-rank-and-ranking.png", true).await;

    // 6. SIGKILL BTCUSDT's owner: dead within seconds, its slice moves, prices keep coming.
    let node_row = |id: &str| {
        format!(
            "(() => {{ const r = document.querySelector('#node-rows tr[data-node=\"{id}\"]'); \
             return r ? {{ alive: r.dataset.alive === 'true', slice: Number(r.dataset.slice) }} : null; }})()"
        )
    };
    page.wait(
        "three live nodes",
        STEP,
        "document.querySelectorAll('#node-rows tr[data-alive=\"true\"]').length === 3",
    )
    .await;
    let before = page
        .wait("the victim's row", STEP, &node_row(&victim_id))
        .await;
    assert!(before["slice"].as_i64().unwrap() > 0, "{before}");
    let instruments = get_json(&http, &cluster_url).await.unwrap()["instruments"]
        .as_i64()
        .unwrap();
    signal(nodes[victim].child.id(), "KILL");
    let killed_at = Instant::now();
    nodes[victim].wait_exit(STEP).await.unwrap();
    page.wait(
        &format!("{victim_id} marked dead"),
        STEP,
        &format!(
            "(() => {{ const r = document.querySelector('#node-rows tr[data-node=\"{victim_id}\"]'); \
             const ev = document.getElementById('cluster-events').textContent; \
             return !!(r && r.dataset.alive === 'false' && r.querySelector('.dead-badge')) || ev.includes('Node {victim_id} is dead'); }})()"
        ),
    )
    .await;
    let dead_after = killed_at.elapsed();
    let moved = page
        .wait(
            &format!("{victim_id}'s slice moved"),
            STEP,
            &format!(
                "(() => {{ const alive = [...document.querySelectorAll('#node-rows tr[data-alive=\"true\"]')]; \
                 const sum = alive.reduce((s, r) => s + Number(r.dataset.slice), 0); \
                 const ev = [...document.querySelectorAll('#cluster-events li.move')].map(l => l.textContent).find(t => / {victim_id} \\d+ → 0/.test(t)); \
                 return alive.length === 2 && sum === {instruments} && ev ? ev : null; }})()"
            ),
        )
        .await;
    let moved_after = killed_at.elapsed();
    println!(
        "{victim_id} SIGKILLed: marked dead after {dead_after:?}, slice moved after {moved_after:?}: {moved}"
    );
    let at_kill = page.wait("a BTCUSDT price", STEP, &price_js(KEY)).await["trade"]
        .as_i64()
        .unwrap();
    page.wait(
        "BTCUSDT updating after the failover",
        READY,
        &format!(
            "(() => {{ const v = {}; return v && v.trade > {at_kill} && !document.querySelector('#price-rows tr[data-key=\"{KEY}\"]').classList.contains('stale'); }})()",
            price_js(KEY)
        ),
    )
    .await;
    page.eval("document.getElementById('cluster').scrollIntoView()")
        .await
        .unwrap();
    shot(&page, &shots, "04-node-killed-slice-moved.png", true).await;

    // 7. A phone: no sideways scrolling of the page (wide tables scroll inside their region).
    page.viewport(390, 844, true).await.unwrap();
    let until = Instant::now() + STEP;
    let fits = loop {
        let v = page
            .eval(
                "(() => { const w = document.documentElement.clientWidth; \
                 const wide = [...document.querySelectorAll('body *')] \
                   .filter(e => !e.closest('.table-wrap') && e.getBoundingClientRect().right > w + 1) \
                   .slice(0, 8).map(e => e.tagName + '#' + e.id + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right)); \
                 return { width: w, scroll: document.documentElement.scrollWidth, wide }; })()",
            )
            .await
            .unwrap();
        let (w, sw) = (v["width"].as_i64().unwrap(), v["scroll"].as_i64().unwrap());
        if w <= 400 && sw <= w + 1 {
            break w;
        }
        assert!(
            Instant::now() < until,
            "the page is wider than a phone: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("phone layout: {fits} CSS px wide, no sideways scrolling");
    page.eval("window.scrollTo(0, 0)").await.unwrap();
    shot(&page, &shots, "05-phone-prices.png", false).await;
    page.eval("document.getElementById('cluster').scrollIntoView()")
        .await
        .unwrap();
    shot(&page, &shots, "06-phone-cluster.png", false).await;
    page.viewport(1280, 900, false).await.unwrap();

    // A reload keeps the session (this tab's sessionStorage). Accessibility basics on the fresh
    // page: landmarks, a name for every control and region, headers in every table, and the
    // skip link first in the tab order, moving focus to the main content.
    page.navigate(&url, READY).await.unwrap();
    page.wait(
        "the session restored after a reload",
        STEP,
        &format!("document.getElementById('whoami').textContent === 'Signed in as {EMAIL}' && document.querySelectorAll('#alert-rows tr[data-alert]').length === 1"),
    )
    .await;
    let problems = page
        .eval(
            r#"(() => {
                const out = [];
                for (const sel of ['header', 'nav', 'main', 'footer', 'h1']) if (!document.querySelector(sel)) out.push('no ' + sel);
                if (!document.documentElement.lang) out.push('no lang');
                const name = (e) => (e.getAttribute('aria-label') || '').trim() ||
                    (e.getAttribute('aria-labelledby') || '').split(' ').map(id => document.getElementById(id)?.textContent || '').join('').trim() ||
                    [...(e.labels || [])].map(l => l.textContent).join('').trim() ||
                    (e.tagName === 'BUTTON' || e.tagName === 'A' ? e.textContent.trim() : '');
                for (const e of document.querySelectorAll('input, select, button, a[href], [role=img], [role=region]'))
                    if (!name(e)) out.push('unnamed ' + e.outerHTML.slice(0, 80));
                for (const t of document.querySelectorAll('table')) if (!t.querySelector('th')) out.push('table without headers: ' + (t.id || t.className));
                return out;
            })()"#,
        )
        .await
        .unwrap();
    assert_eq!(problems, json!([]), "accessibility basics");
    page.press("Tab").await.unwrap();
    page.wait(
        "the skip link focused first",
        STEP,
        "document.activeElement && document.activeElement.classList.contains('skip')",
    )
    .await;
    page.press("Enter").await.unwrap();
    page.wait(
        "focus on the main content after the skip link",
        STEP,
        "document.activeElement && document.activeElement.id === 'main'",
    )
    .await;

    let exceptions = browser.exceptions();
    let console = browser.console_errors();
    if !console.is_empty() {
        println!("console errors: {console:#?}");
    }
    assert!(
        !console
            .iter()
            .any(|c| c.contains("Content Security Policy")),
        "the page's own content policy refused something: {console:#?}"
    );
    assert!(
        exceptions.is_empty(),
        "script errors in the page: {exceptions:#?}"
    );
    browser.close();
    println!(
        "dashboard test done in {:?}; screenshots in {}",
        started.elapsed(),
        shots.display()
    );
}
