//! Accounts and the alert routes against a real node, Postgres and Redis: registration, login,
//! refresh rotation and revocation, login limits, the admin role (granted by the documented
//! `pricefeed-node promote-admin` command), and for every alert route: no token, every kind of
//! forged or expired token, another user's alert (BOLA), malformed input and per-user limits.
//! Every refusal is problem+json.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use pricefeed_tests::{
    Proc, Sim, TEST_JWT_SECRET, base_env, bin, fresh_database, http_client, migrate,
    seed_from_catalogue, start_nodes,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(30);

struct Api {
    http: reqwest::Client,
    node: String,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value, String) {
        let mut r = self.http.request(method, format!("{}{path}", self.node));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_client_error() || status.is_server_error() {
            assert_eq!(
                ctype, "application/problem+json",
                "{status} {path} is not problem+json: {text}"
            );
            assert_eq!(v["status"], status.as_u16(), "{text}");
        }
        (status, v, text)
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        let (s, v, _) = self.call(Method::POST, path, token, Some(body)).await;
        (s, v)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let (s, v, _) = self.call(Method::GET, path, token, None).await;
        (s, v)
    }

    async fn login(&self, email: &str, password: &str) -> Value {
        let (s, v) = self
            .post(
                "/api/v1/auth/token",
                None,
                json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    async fn account(&self, email: &str) -> String {
        let (s, v) = self
            .post(
                "/api/v1/auth/register",
                None,
                json!({"email": email, "password": "correct horse battery"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        self.login(email, "correct horse battery").await["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

fn jwt(header: Value, claims: &Value, key: &[u8]) -> String {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let h: Header = serde_json::from_value(header).unwrap();
    encode(&h, claims, &EncodingKey::from_secret(key)).unwrap()
}

fn claims(sub: &str, exp_in_s: i64) -> Value {
    let now = pricefeed_tests::wall_ms() / 1000;
    json!({"sub": sub, "role": "user", "iat": now, "exp": now + exp_in_s,
           "iss": "pricefeed", "aud": "pricefeed-api", "typ": "access"})
}

/// Tokens that must all be refused, given a genuine one of user `sub`.
fn forgeries(
    genuine: &str,
    sub: &str,
    other_sub: &str,
    refresh: &str,
) -> Vec<(&'static str, String)> {
    let key = TEST_JWT_SECRET.as_bytes();
    let parts: Vec<&str> = genuine.split('.').collect();
    let payload: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    let mut edited = payload.clone();
    edited["sub"] = json!(other_sub);
    let edited = format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(serde_json::to_vec(&edited).unwrap()),
        parts[2]
    );
    let none = format!(
        "{}.{}.",
        B64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(serde_json::to_vec(&claims(other_sub, 600)).unwrap())
    );
    let mut wrong_aud = claims(sub, 600);
    wrong_aud["aud"] = json!("someone-else");
    let mut refresh_typ = claims(sub, 600);
    refresh_typ["typ"] = json!("refresh");
    vec![
        ("edited payload, original signature", edited),
        ("alg none", none),
        (
            "signed with another key",
            jwt(
                json!({"alg": "HS256"}),
                &claims(sub, 600),
                b"another-key-another-key-another-key!",
            ),
        ),
        (
            "HS512 with the right key",
            jwt(json!({"alg": "HS512"}), &claims(sub, 600), key),
        ),
        (
            "expired",
            jwt(json!({"alg": "HS256"}), &claims(sub, -120), key),
        ),
        (
            "wrong audience",
            jwt(json!({"alg": "HS256"}), &wrong_aud, key),
        ),
        (
            "token type refresh",
            jwt(json!({"alg": "HS256"}), &refresh_typ, key),
        ),
        ("a refresh token as access token", refresh.to_string()),
        ("garbage", "not-a-token".into()),
    ]
}

async fn start() -> (Sim, Vec<Proc>, Vec<(String, String)>, Api) {
    let http = http_client(Duration::from_secs(10));
    let sim = Sim::start_small(&[("UNDERLYINGS", "2"), ("HOT_SYMBOLS", "1")]).await;
    let db = fresh_database().await.unwrap();
    let mut env = base_env(&db);
    env.extend([
        (
            "PRICEFEED__ALERTS__MAX_PER_USER".to_string(),
            "4".to_string(),
        ),
        // These tests make many alert writes with one token; the write limit of node.limits
        // (tested in tests/hostile.rs) must not answer before the limits tested here.
        (
            "PRICEFEED__NODE__LIMITS__PER_USER_WRITES_BURST".to_string(),
            "1000".to_string(),
        ),
        (
            "PRICEFEED__NODE__LIMITS__PER_USER_WRITES_PER_MIN".to_string(),
            "10000".to_string(),
        ),
        (
            "PRICEFEED__AUTH__LOGIN_PER_ACCOUNT_PER_MIN".into(),
            "5".into(),
        ),
        (
            "PRICEFEED__AUTH__LOGIN_PER_ADDRESS_PER_MIN".into(),
            "200".into(),
        ),
    ]);
    migrate(&env, READY).await;
    seed_from_catalogue(&http, &sim, &db).await;
    let nodes = start_nodes(&["acc1"], &env).await;
    let api = Api {
        http,
        node: nodes[0].url(""),
    };
    (sim, nodes, env, api)
}

#[tokio::test]
async fn registration_login_refresh_limits_and_admin() {
    let (_sim, _nodes, env, api) = start().await;
    let pw = "correct horse battery";

    // Registration: normalised email, duplicates, field errors, malformed bodies.
    let (s, v) = api
        .post(
            "/api/v1/auth/register",
            None,
            json!({"email": "Ada@Example.com", "password": pw}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        (v["email"].as_str(), v["role"].as_str()),
        (Some("ada@example.com"), Some("user"))
    );
    assert!(v.get("password_hash").is_none() && !v.to_string().contains("argon2"));
    let (s, _) = api
        .post(
            "/api/v1/auth/register",
            None,
            json!({"email": "ada@example.com", "password": pw}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    for (body, field) in [
        (json!({"email": "not-an-email", "password": pw}), "email"),
        (
            json!({"email": "b@example.com", "password": "short"}),
            "password",
        ),
        (json!({"email": "b@example.com"}), "password"),
        (
            json!({"email": "b@example.com", "password": pw, "role": "admin"}),
            "role",
        ),
    ] {
        let (s, v) = api.post("/api/v1/auth/register", None, body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        assert!(v["detail"].as_str().unwrap().contains(field), "{body}: {v}");
    }
    let resp = api
        .http
        .post(format!("{}/api/v1/auth/register", api.node))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // Login: the same 401 for a wrong password and an unknown account.
    let (s1, v1) = api
        .post(
            "/api/v1/auth/token",
            None,
            json!({"email": "ada@example.com", "password": "wrong password!"}),
        )
        .await;
    let (s2, v2) = api
        .post(
            "/api/v1/auth/token",
            None,
            json!({"email": "nobody@example.com", "password": "wrong password!"}),
        )
        .await;
    assert_eq!(
        (s1, s2),
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED)
    );
    assert_eq!(v1["detail"], v2["detail"]);
    let pair = api.login("ADA@example.com", pw).await;
    assert_eq!(pair["token_type"], "Bearer");
    assert!(pair["expires_in"].as_i64().unwrap() > 0);

    // Refresh rotates; presenting a used refresh token revokes its whole family.
    let r1 = pair["refresh_token"].as_str().unwrap().to_string();
    let (s, p2) = api
        .post("/api/v1/auth/refresh", None, json!({"refresh_token": r1}))
        .await;
    assert_eq!(s, StatusCode::OK, "{p2}");
    let r2 = p2["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(r1, r2);
    let (s, _) = api
        .post("/api/v1/auth/refresh", None, json!({"refresh_token": r1}))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "reused refresh token");
    let (s, _) = api
        .post("/api/v1/auth/refresh", None, json!({"refresh_token": r2}))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "its family is revoked");
    // Logout revokes.
    let r3 = api.login("ada@example.com", pw).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _) = api
        .post("/api/v1/auth/logout", None, json!({"refresh_token": r3}))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api
        .post("/api/v1/auth/refresh", None, json!({"refresh_token": r3}))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = api
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": "nope"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Login limit per account (5 per minute here): the 6th attempt is refused even with the
    // right password, with Retry-After.
    api.account("bob@example.com").await; // one login
    for _ in 0..4 {
        let (s, _) = api
            .post(
                "/api/v1/auth/token",
                None,
                json!({"email": "bob@example.com", "password": "wrong password!"}),
            )
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let resp = api
        .http
        .post(format!("{}/api/v1/auth/token", api.node))
        .json(&json!({"email": "bob@example.com", "password": pw}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));

    // Admin: a user gets 403; the documented command promotes; the next login is admin.
    let ada = api.login("ada@example.com", pw).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _) = api.post("/api/v1/admin/sync", Some(&ada), json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = api.post("/api/v1/admin/sync", None, json!({})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let run = |email: &str| {
        let mut cmd = std::process::Command::new(bin("pricefeed-node"));
        cmd.envs(env.iter().cloned())
            .arg("promote-admin")
            .arg(email);
        cmd.output().unwrap()
    };
    let out = run("nobody@example.com");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no account"),
        "{out:?}"
    );
    let out = run("ada@example.com");
    assert!(out.status.success(), "{out:?}");
    let ada = api.login("ada@example.com", pw).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = api.post("/api/v1/admin/sync", Some(&ada), json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
}

#[tokio::test]
async fn alert_routes_refuse_missing_forged_and_foreign_tokens_and_bad_input() {
    let (_sim, _nodes, _env, api) = start().await;
    let alice = api.account("alice@example.com").await;
    let carol = api.account("carol@example.com").await;
    let sub = |t: &str| -> String {
        let p: Value =
            serde_json::from_slice(&B64.decode(t.split('.').nth(1).unwrap()).unwrap()).unwrap();
        p["sub"].as_str().unwrap().to_string()
    };
    let refresh = api
        .login("alice@example.com", "correct horse battery")
        .await["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();

    let new = |symbol: &str, condition: &str, threshold: &str| json!({"symbol": symbol, "condition": condition, "threshold": threshold});
    let (s, a) = api
        .post(
            "/api/v1/alerts",
            Some(&alice),
            new("BTCUSDT", "above", "1000000"),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{a}");
    assert_eq!(
        (a["status"].as_str(), a["market"].as_str()),
        (Some("active"), Some("spot"))
    );
    assert_eq!(a["channels"], json!(["email", "websocket"]));
    let id = a["id"].as_i64().unwrap();

    // Every route: no token, forged tokens, and another user's alert.
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::POST,
            "/api/v1/alerts".into(),
            Some(new("BTCUSDT", "below", "1")),
        ),
        (Method::GET, "/api/v1/alerts".into(), None),
        (Method::GET, format!("/api/v1/alerts/{id}"), None),
        (
            Method::PATCH,
            format!("/api/v1/alerts/{id}"),
            Some(json!({"threshold": "2"})),
        ),
        (
            Method::GET,
            format!("/api/v1/alerts/{id}/notifications"),
            None,
        ),
        (Method::DELETE, format!("/api/v1/alerts/{id}"), None),
    ];
    let fakes = forgeries(&alice, &sub(&alice), &sub(&carol), &refresh);
    for (m, path, body) in &routes {
        let (s, v, _) = api.call(m.clone(), path, None, body.clone()).await;
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "{m} {path} without a token: {v}"
        );
        for (what, token) in &fakes {
            let (s, v, _) = api.call(m.clone(), path, Some(token), body.clone()).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{m} {path} with {what}: {v}");
        }
        if path.contains(&format!("/alerts/{id}")) {
            let (s, v, _) = api.call(m.clone(), path, Some(&carol), body.clone()).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{m} {path} as another user: {v}");
        }
    }
    // Carol's list does not show Alice's alert; Alice's still exists, unchanged.
    let (_, list) = api.get("/api/v1/alerts", Some(&carol)).await;
    assert_eq!(list["items"], json!([]));
    let (s, v) = api.get(&format!("/api/v1/alerts/{id}"), Some(&alice)).await;
    assert_eq!(
        (s, v["threshold"].as_str()),
        (StatusCode::OK, Some("1000000"))
    );

    // Bad input names its field; unknown instruments are 404.
    let bad: Vec<(Value, StatusCode, &str)> = vec![
        (
            new("NOSUCHUSDT", "above", "1"),
            StatusCode::NOT_FOUND,
            "NOSUCHUSDT",
        ),
        (
            new("btc usdt", "above", "1"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "symbol",
        ),
        (
            new("BTCUSDT", "sideways", "1"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "condition",
        ),
        (
            new("BTCUSDT", "above", "-5"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "threshold",
        ),
        (
            new("BTCUSDT", "above", "abc"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "threshold",
        ),
        (
            new("BTCUSDT", "vwap_above", "1"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "interval",
        ),
        (
            json!({"symbol": "BTCUSDT", "condition": "vwap_above", "threshold": "1", "interval": "7m"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "interval",
        ),
        (
            new("BTCUSDT", "move_pct", "2"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "window",
        ),
        (
            json!({"symbol": "BTCUSDT", "condition": "above", "threshold": "1", "channels": ["sms"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "channels",
        ),
        (
            json!({"symbol": "BTCUSDT", "condition": "above", "threshold": "1", "channels": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "channels",
        ),
        (
            json!({"symbol": "BTCUSDT", "condition": "above", "threshold": "1", "rearm": {"cooldown_ms": 10, "hysteresis_pct": "0.5"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "cooldown_ms",
        ),
        (
            json!({"symbol": "BTCUSDT", "condition": "above", "threshold": "1", "note": "x".repeat(201)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "note",
        ),
        (
            json!({"symbol": "BTCUSDT", "condition": "above", "threshold": "1", "market": "moon"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "market",
        ),
        (
            json!({"symbol": "BTCUSDT", "condition": "above", "threshold": "1", "user_id": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "user_id",
        ),
    ];
    for (body, want, field) in bad {
        let (s, v) = api.post("/api/v1/alerts", Some(&alice), body.clone()).await;
        assert_eq!(s, want, "{body}: {v}");
        assert!(
            v["detail"].as_str().unwrap_or_default().contains(field),
            "{body}: {v}"
        );
    }
    let (s, v, _) = api
        .call(
            Method::PATCH,
            &format!("/api/v1/alerts/{id}"),
            Some(&alice),
            Some(json!({"status": "bogus"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    for q in [
        "status=bogus",
        "limit=0",
        "limit=501",
        "cursor=abc",
        "colour=red",
    ] {
        let (s, v) = api.get(&format!("/api/v1/alerts?{q}"), Some(&alice)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
    }
    let (s, _) = api.get("/api/v1/alerts/notanumber", Some(&alice)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Filters, pagination, change and delete.
    let (s, b) = api
        .post(
            "/api/v1/alerts",
            Some(&alice),
            new("ETHUSDT", "crosses_down", "1.5"),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, c) = api
        .post(
            "/api/v1/alerts",
            Some(&alice),
            json!({"symbol": "BTCUSDT", "condition": "move_pct", "threshold": "2.5", "window": "15m",
                   "channels": ["websocket"], "rearm": {"cooldown_ms": 60000, "hysteresis_pct": "0.5"}, "note": "big move"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    let (_, v) = api.get("/api/v1/alerts?symbol=BTCUSDT", Some(&alice)).await;
    let ids: Vec<i64> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{v}");
    assert!(!ids.contains(&b["id"].as_i64().unwrap()));
    let (_, p1) = api.get("/api/v1/alerts?limit=2", Some(&alice)).await;
    let cursor = p1["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_string();
    let (_, p2) = api
        .get(
            &format!("/api/v1/alerts?limit=2&cursor={cursor}"),
            Some(&alice),
        )
        .await;
    let mut all: Vec<i64> = p1["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(p2["items"].as_array().unwrap())
        .map(|a| a["id"].as_i64().unwrap())
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 3, "pages {p1} {p2}");
    let (s, v, _) = api
        .call(
            Method::PATCH,
            &format!("/api/v1/alerts/{id}"),
            Some(&alice),
            Some(json!({"threshold": "999999.5", "status": "paused"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["threshold"].as_str(), v["status"].as_str()),
        (Some("999999.5"), Some("paused"))
    );
    let (_, v) = api.get("/api/v1/alerts?status=paused", Some(&alice)).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1);

    // Per-user limit (4 here): a clear 429, and deleting one makes room.
    let (s, d) = api
        .post("/api/v1/alerts", Some(&alice), new("ETHUSDT", "below", "1"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{d}");
    let (s, v) = api
        .post("/api/v1/alerts", Some(&alice), new("ETHUSDT", "below", "2"))
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("at most 4"), "{v}");
    let (s, _, _) = api
        .call(
            Method::DELETE,
            &format!("/api/v1/alerts/{id}"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api.get(&format!("/api/v1/alerts/{id}"), Some(&alice)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = api
        .call(
            Method::DELETE,
            &format!("/api/v1/alerts/{id}"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = api
        .post("/api/v1/alerts", Some(&alice), new("ETHUSDT", "below", "2"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = api
        .get(
            &format!("/api/v1/alerts/{}/notifications", b["id"]),
            Some(&alice),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}
