//! End-to-end tests of the foundation: real binaries, real Postgres and Redis.

use std::time::Duration;

use pricefeed_tests::{PrivateRedis, Proc, base_env, bin, fresh_database, wait_for};

const READY: Duration = Duration::from_secs(30);

#[tokio::test]
async fn every_binary_becomes_ready_serves_ops_routes_and_stops_on_sigterm() {
    let db = fresh_database().await.unwrap();
    let env = base_env(&db);
    let mut procs = vec![
        Proc::start_ready("node", &bin("pricefeed-node"), &[], &env)
            .await
            .unwrap(),
        Proc::start_ready(
            "scheduler",
            &bin("pricefeed-scheduler"),
            &["scheduler"],
            &env,
        )
        .await
        .unwrap(),
        Proc::start_ready("worker", &bin("pricefeed-scheduler"), &["worker"], &env)
            .await
            .unwrap(),
    ];
    let http = reqwest::Client::new();
    for p in &procs {
        let live = http.get(p.url("/livez")).send().await.unwrap();
        assert_eq!(live.status(), 200, "{} /livez", p.name);
        let ready: serde_json::Value = http
            .get(p.url("/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ready["checks"]["postgres"], "ok", "{}: {ready}", p.name);
        assert_eq!(ready["checks"]["redis"], "ok", "{}: {ready}", p.name);
        let res = http.get(p.url("/metrics")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let text = res.text().await.unwrap();
        assert!(
            text.contains("http_requests_total"),
            "{}: metrics lack request counter:\n{text}",
            p.name
        );
        if p.name.starts_with("node") {
            // Handles resolved at startup (before any refusal happens) must be live, not the
            // no-op a handle taken before the recorder was installed silently becomes.
            assert!(
                text.contains("pricefeed_trade_writer_refused_total"),
                "{}: history-writer refusal counter not registered:\n{text}",
                p.name
            );
        }
        // Unknown routes are problem+json too.
        let res = http.get(p.url("/nope")).send().await.unwrap();
        assert_eq!(res.status(), 404);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        // Request ids are assigned and echoed.
        assert!(res.headers().contains_key("x-request-id"));
    }
    for p in &mut procs {
        let st = p.terminate(Duration::from_secs(15)).await.unwrap();
        assert!(
            st.success(),
            "{} exited with {st}:\n{}",
            p.name,
            p.log_tail()
        );
        assert!(
            p.log_text().contains("shutdown requested"),
            "{}",
            p.log_tail()
        );
    }
}

#[tokio::test]
async fn bad_config_values_stop_the_binary_naming_the_key() {
    let db = fresh_database().await.unwrap();
    let cases: &[(&str, &[&str], &str, &str, &str)] = &[
        (
            "pricefeed-node",
            &[],
            "PRICEFEED__NODE__HTTP__BIND",
            "not-an-address",
            "node.http.bind",
        ),
        (
            "pricefeed-node",
            &[],
            "PRICEFEED__DATABASE__URL",
            "mysql://x",
            "database.url",
        ),
        (
            "pricefeed-node",
            &[],
            "PRICEFEED__DATABASE__MAX_CONNECTIONS",
            "many",
            "database.max_connections",
        ),
        (
            "pricefeed-node",
            &[],
            "PRICEFEED__BROKER__SPOT_WS_URL",
            "http://x",
            "broker.spot_ws_url",
        ),
        (
            "pricefeed-node",
            &[],
            "PRICEFEED__TELEMETRY__LOG_FORMAT",
            "xml",
            "telemetry.log_format",
        ),
        (
            "pricefeed-scheduler",
            &["scheduler"],
            "PRICEFEED__REDIS__URL",
            "memcached://x",
            "redis.url",
        ),
        (
            "pricefeed-scheduler",
            &["worker"],
            "PRICEFEED__SHUTDOWN__DRAIN_TIMEOUT_MS",
            "0",
            "shutdown.drain_timeout_ms",
        ),
        (
            "pricefeed-sim",
            &[],
            "PRICEFEED__SIM__SPOT_BIND",
            "somewhere",
            "sim.spot_bind",
        ),
        (
            "pricefeed-node",
            &[],
            "PRICEFEED__NODE__FEED__CONTROL_MSGS_PER_SEC",
            "9",
            "node.feed.control_msgs_per_sec",
        ),
    ];
    for (binary, args, key, value, named) in cases {
        let mut env = base_env(&db);
        env.push((key.to_string(), value.to_string()));
        let mut p = Proc::start(binary, &bin(binary), args, &env).unwrap();
        let st = p.wait_exit(Duration::from_secs(20)).await.unwrap();
        assert_eq!(
            st.code(),
            Some(78),
            "{binary} with {key}={value}: {st}\n{}",
            p.log_tail()
        );
        let out = p.log_text();
        assert!(
            out.contains(&format!("`{named}`")),
            "{binary} with {key}={value} should name {named}:\n{out}"
        );
        assert!(!out.contains("panicked"), "{out}");
    }
}

#[tokio::test]
async fn unreachable_dependency_is_named_not_a_panic() {
    let db = fresh_database().await.unwrap();
    let mut env = base_env(&db);
    // A port nothing listens on: bind then drop.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.push((
        "PRICEFEED__REDIS__URL".into(),
        format!("redis://127.0.0.1:{port}"),
    ));
    let mut p = Proc::start("node", &bin("pricefeed-node"), &[], &env).unwrap();
    let st = p.wait_exit(Duration::from_secs(30)).await.unwrap();
    assert!(!st.success());
    let out = p.log_text();
    assert!(out.contains("cannot connect to Redis"), "{out}");
    assert!(out.contains("redis.url"), "{out}");
    assert!(!out.contains("panicked"), "{out}");
}

#[tokio::test]
async fn readiness_follows_redis_and_recovers() {
    // A private Redis this test may kill.
    let mut redis = PrivateRedis::new();
    redis.start().await;
    let db = fresh_database().await.unwrap();
    let mut env = base_env(&db);
    env.push(("PRICEFEED__REDIS__URL".into(), redis.url()));
    let node = Proc::start_ready("node", &bin("pricefeed-node"), &[], &env)
        .await
        .unwrap();
    let url = node.url("/readyz");
    let status = |u: String| async move {
        reqwest::get(u)
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };

    redis.stop();
    wait_for(READY, || status(url.clone()).map_eq(503))
        .await
        .expect("readyz 503 once Redis is gone");
    // Liveness must not depend on Redis.
    assert_eq!(status(node.url("/livez")).await, 200);

    redis.start().await;
    wait_for(READY, || status(url.clone()).map_eq(200))
        .await
        .expect("readyz 200 after Redis is back");
}

#[tokio::test]
async fn concurrent_migrations_are_safe() {
    let db = fresh_database().await.unwrap();
    let env = base_env(&db);
    let mut procs: Vec<Proc> = (0..3)
        .map(|i| {
            Proc::start(
                &format!("migrate{i}"),
                &bin("pricefeed-scheduler"),
                &["migrate"],
                &env,
            )
            .unwrap()
        })
        .collect();
    for p in &mut procs {
        let st = p.wait_exit(Duration::from_secs(60)).await.unwrap();
        assert!(st.success(), "{}: {st}\n{}", p.name, p.log_tail());
    }
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "sql")
        })
        .count() as i64;
    assert_eq!(applied, files);
}

#[tokio::test]
async fn instrument_api_serves_postgres_rows_with_problem_errors() {
    let db = fresh_database().await.unwrap();
    let node = Proc::start_ready("node", &bin("pricefeed-node"), &[], &base_env(&db))
        .await
        .unwrap();
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    for (s, base) in [("BTCUSDT", "BTC"), ("ETHUSDT", "ETH"), ("SOLUSDT", "SOL")] {
        sqlx::query("INSERT INTO underlyings (symbol, base_asset, quote_asset, status, tick_size) VALUES ($1, $2, 'USDT', 'TRADING', 0.01)")
            .bind(s)
            .bind(base)
            .execute(&pool)
            .await
            .unwrap();
    }
    sqlx::query(
        "INSERT INTO derivatives (symbol, underlying_id, kind, market, contract_type, status) \
         SELECT 'BTCUSDT', id, 'perpetual', 'usdm', 'PERPETUAL', 'TRADING' FROM underlyings WHERE symbol = 'BTCUSDT'",
    )
    .execute(&pool)
    .await
    .unwrap(); // a USD-M perpetual carries its pair's name, as on the exchange
    sqlx::query(
        "INSERT INTO derivatives (symbol, underlying_id, kind, market, contract_type, expiry_at, status) \
         SELECT 'BTCUSDT_261225', id, 'future', 'usdm', 'CURRENT_QUARTER', '2026-12-25T08:00:00Z', 'TRADING' FROM underlyings WHERE symbol = 'BTCUSDT'",
    )
    .execute(&pool)
    .await
    .unwrap();

    let http = reqwest::Client::new();
    let page: serde_json::Value = http
        .get(node.url("/api/v1/underlyings?limit=2"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["items"][0]["symbol"], "BTCUSDT");
    assert_eq!(page["items"][0]["tick_size"], "0.01");
    assert_eq!(page["next_cursor"], "ETHUSDT");
    let page2: serde_json::Value = http
        .get(node.url("/api/v1/underlyings?limit=2&cursor=ETHUSDT"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page2["items"][0]["symbol"], "SOLUSDT");
    assert!(page2["next_cursor"].is_null());

    let one: serde_json::Value = http
        .get(node.url("/api/v1/underlyings/btcusdt"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["derivatives"][0]["symbol"], "BTCUSDT");
    assert_eq!(one["derivatives"][0]["kind"], "perpetual");
    assert!(one["derivatives"][0]["expiry"].is_null());
    assert_eq!(one["derivatives"][1]["symbol"], "BTCUSDT_261225");
    assert_eq!(one["derivatives"][1]["expiry"], 1_798_185_600_000_i64);
    let futs: serde_json::Value = http
        .get(node.url("/api/v1/derivatives?kind=future&underlying=BTCUSDT"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(futs["items"].as_array().unwrap().len(), 1, "{futs}");

    for (path, status, param) in [
        ("/api/v1/underlyings/DOGEUSDT", 404, None),
        ("/api/v1/underlyings/bad%20sym", 400, Some("symbol")),
        ("/api/v1/underlyings?limit=501", 400, Some("limit")),
        ("/api/v1/underlyings?limit=abc", 400, Some("limit")),
        ("/api/v1/derivatives?kind=swap", 400, Some("kind")),
    ] {
        let res = http.get(node.url(path)).send().await.unwrap();
        assert_eq!(res.status().as_u16(), status, "{path}");
        assert_eq!(
            res.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["status"], status, "{path}: {body}");
        if let Some(p) = param {
            assert_eq!(body["param"], p, "{path}: {body}");
        }
    }
}

#[tokio::test]
async fn openapi_spec_and_offline_swagger_ui_are_served() {
    let db = fresh_database().await.unwrap();
    let node = Proc::start_ready("node", &bin("pricefeed-node"), &[], &base_env(&db))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let spec: serde_json::Value = http
        .get(node.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        spec["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        spec["openapi"]
    );
    for p in [
        "/api/v1/underlyings",
        "/api/v1/underlyings/{symbol}",
        "/api/v1/derivatives",
    ] {
        assert!(spec["paths"].get(p).is_some(), "spec lacks {p}");
    }
    let html = http.get(node.url("/docs/")).send().await.unwrap();
    assert_eq!(html.status(), 200);
    let html = html.text().await.unwrap();
    assert!(html.contains("swagger"), "{html}");
    assert!(
        !html.contains("cdn."),
        "Swagger UI must not load assets from a CDN"
    );
    let js = http
        .get(node.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200, "vendored Swagger UI bundle is served");
}

trait MapEq {
    fn map_eq(self, v: u16) -> impl std::future::Future<Output = bool>;
}
impl<F: std::future::Future<Output = u16>> MapEq for F {
    async fn map_eq(self, v: u16) -> bool {
        self.await == v
    }
}
