//! The API against its own OpenAPI document: schemathesis (`tests/python/requirements.txt`, run
//! with the venv's Python, `PRICEFEED_TEST_PYTHON`) with every check over every operation of
//! `/api/v1/openapi.json`, authenticated routes included, against a real cluster: the simulator
//! (small catalogue), a scheduler, a worker and one node on real Postgres and Redis.
//!
//! Before the run the test makes the data the examples point at real: prices are flowing for
//! BTCUSDT, a user exists (an admin, so `POST /admin/sync` can succeed too) with one alert, and
//! its access token goes with every request. schemathesis then checks that no input gives a 5xx,
//! that every status, content type and body is the documented one, that what the schema allows
//! is accepted and what it forbids is rejected, that authenticated routes refuse requests without
//! a valid token, and (stateful phase) that a deleted alert stays gone.
//!
//! `PRICEFEED_CONTRACT_EXAMPLES` (default 100 per operation) and `PRICEFEED_CONTRACT_SEED`
//! (default fixed, so a failure reproduces) tune the run.

use std::path::PathBuf;
use std::time::Duration;

use pricefeed_tests::{
    Proc, Sim, base_env, bin, fresh_database, http_client, migrate, scratch_dir,
    seed_from_catalogue, start_nodes, start_schedulers, wait_for,
};
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(60);
/// The whole schemathesis run must end within this (it normally takes well under half).
const RUN_DEADLINE: Duration = Duration::from_secs(240);
const EMAIL: &str = "contract@example.com";
const PASSWORD: &str = "correct horse battery staple";

/// The Python of the venv `./dev test` builds (`PRICEFEED_TEST_PYTHON`).
fn python() -> PathBuf {
    std::env::var("PRICEFEED_TEST_PYTHON")
        .map(PathBuf::from)
        .expect("PRICEFEED_TEST_PYTHON must name the venv Python that has schemathesis (./dev test sets it)")
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

async fn post(http: &reqwest::Client, url: &str, token: Option<&str>, body: Value) -> Value {
    let mut req = http.post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    assert!(status.is_success(), "POST {url}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_in_the_whole_openapi_document() {
    let http = http_client(Duration::from_secs(10));
    let sim = Sim::start_small(&[("UNDERLYINGS", "2"), ("HOT_SYMBOLS", "1")]).await;
    let db = fresh_database().await.unwrap();
    let mut env = base_env(&db);
    env.extend(sim.broker_env());
    // schemathesis sends hundreds of requests a second from one address and one token: with
    // the default request limits (node.limits, auth.register_per_address_per_min) most of them
    // would be answered 429 and never reach the handlers under test. The limits themselves are
    // tested in tests/hostile.rs.
    env.extend(
        [
            ("PRICEFEED__NODE__LIMITS__PER_ADDRESS_PER_SEC", "1000000"),
            ("PRICEFEED__NODE__LIMITS__PER_ADDRESS_BURST", "10000000"),
            ("PRICEFEED__NODE__LIMITS__PER_USER_PER_SEC", "1000000"),
            ("PRICEFEED__NODE__LIMITS__PER_USER_BURST", "10000000"),
            (
                "PRICEFEED__NODE__LIMITS__PER_USER_WRITES_PER_MIN",
                "1000000",
            ),
            ("PRICEFEED__NODE__LIMITS__PER_USER_WRITES_BURST", "10000000"),
            ("PRICEFEED__AUTH__REGISTER_PER_ADDRESS_PER_MIN", "1000000"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    migrate(&env, READY).await;
    let keys = seed_from_catalogue(&http, &sim, &db).await;
    assert!(keys.contains("spot:BTCUSDT"), "{keys:?}");
    let _sched = start_schedulers(&["sched"], &env).await;
    let _worker = Proc::start_ready("worker", &bin("pricefeed-scheduler"), &["worker"], &env)
        .await
        .unwrap();
    let nodes = start_nodes(&["n1"], &env).await;
    let node = &nodes[0];

    // The examples name BTCUSDT: wait until it has a price, so they hit data, not 404s.
    let price_url = node.url("/api/v1/prices/BTCUSDT");
    wait_for(READY, || async {
        http.get(&price_url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await
    .unwrap_or_else(|()| panic!("no BTCUSDT price within {READY:?}:\n{}", node.log_tail()));

    // An admin with one alert; the token is issued after the promotion so it carries the role.
    post(
        &http,
        &node.url("/api/v1/auth/register"),
        None,
        json!({"email": EMAIL, "password": PASSWORD}),
    )
    .await;
    let out = std::process::Command::new(bin("pricefeed-node"))
        .envs(env.iter().cloned())
        .args(["promote-admin", EMAIL])
        .output()
        .unwrap();
    assert!(out.status.success(), "promote-admin: {out:?}");
    let tokens = post(
        &http,
        &node.url("/api/v1/auth/token"),
        None,
        json!({"email": EMAIL, "password": PASSWORD}),
    )
    .await;
    let token = tokens["access_token"].as_str().unwrap().to_string();
    let alert = post(
        &http,
        &node.url("/api/v1/alerts"),
        Some(&token),
        json!({"symbol": "BTCUSDT", "condition": "above", "threshold": "100000000"}),
    )
    .await;
    assert!(alert["id"].is_i64(), "{alert}");

    let examples = env_or("PRICEFEED_CONTRACT_EXAMPLES", "100");
    let seed = env_or("PRICEFEED_CONTRACT_SEED", "20261121");
    let auth = format!("Authorization: Bearer {token}");
    let spec = node.url("/api/v1/openapi.json");
    // Settings without a command-line flag. schemathesis keeps a crash cache under
    // `.schemathesis/` in its working directory (the work tree): off.
    let conf_dir = scratch_dir("schemathesis-conf");
    let conf = conf_dir.join("schemathesis.toml");
    std::fs::write(&conf, "[cache]\nenabled = false\n").unwrap();
    let conf = conf.to_string_lossy().into_owned();
    let args: Vec<&str> = vec![
        "-m",
        "schemathesis.cli",
        "--config-file",
        &conf,
        "run",
        &spec,
        "--checks",
        "all",
        "--continue-on-failure",
        "--max-examples",
        &examples,
        "--seed",
        &seed,
        "--header",
        &auth,
        "--request-timeout",
        "10",
        // The WebSocket route is an HTTP upgrade; its frames are a protocol of their own,
        // tested end to end in tests/stream.rs. Every other operation is tested.
        "--exclude-path",
        "/api/v1/stream",
        // No example database: nothing is written into the work tree.
        "--generation-database",
        "none",
        "--no-color",
    ];
    let mut st = Proc::start_with("schemathesis", &python(), &args, &[], |_| Vec::new()).unwrap();
    let status = st.wait_exit(RUN_DEADLINE).await;
    let report = st.log_text();
    println!("{report}");
    let _ = std::fs::remove_dir_all(&conf_dir);
    let status = status.unwrap_or_else(|e| panic!("schemathesis did not finish: {e}"));
    assert!(
        status.success(),
        "schemathesis found problems ({status}); report above. Node log tail:\n{}",
        node.log_tail()
    );
}
