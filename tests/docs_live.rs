//! The documentation against a live cluster (the simulator, a scheduler, a worker and a node on
//! real Postgres and Redis), so it cannot drift from the code:
//!
//! - `docs/api-guide.md`: every ```` ```sh test ```` block runs, in order, in one `bash -euo
//!   pipefail` (with `N` = the node, the binaries on `PATH` and the node's configuration in the
//!   environment, for `pricefeed-node promote-admin`), every ```` ```python test ```` block with
//!   the test venv's Python (`PRICEFEED_TEST_PYTHON`, which has `websockets`), and every route of
//!   the node's OpenAPI document must appear in a tested block.
//! - `docs/metrics.md` (`crates/runtime/src/metric_catalogue.rs`): every metric family the
//!   node, scheduler, worker and simulator export after that traffic is listed for that process,
//!   with its type and only listed labels and label values.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use pricefeed_runtime::metric_catalogue::{METRICS, Process};
use pricefeed_tests::{
    Proc, Sim, base_env, bin, bin_dir, fresh_database, http_client, migrate, scratch_dir,
    seed_from_catalogue, start_nodes, start_schedulers, wait_for,
};
use serde_json::Value;

const READY: Duration = Duration::from_secs(60);
/// The whole guide runs well within this.
const GUIDE_DEADLINE: Duration = Duration::from_secs(120);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fenced block of the guide marked for testing.
#[derive(Debug)]
struct Block {
    lang: String,
    line: usize,
    code: String,
}

/// The ```` ```<lang> test ```` blocks of `md`, in order.
fn tested_blocks(md: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in md.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut open {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    let words: Vec<&str> = info.split_whitespace().collect();
                    if words.len() == 2 && words[1] == "test" {
                        open = Some(Block {
                            lang: words[0].to_string(),
                            line: i + 1,
                            code: String::new(),
                        });
                    }
                }
            }
            Some(b) => {
                if trimmed.starts_with("```") {
                    out.push(open.take().unwrap());
                } else {
                    b.code.push_str(line);
                    b.code.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "unclosed fenced block in the guide");
    out
}

/// One bash script running every block; a python block is written to its own file.
fn script(blocks: &[Block], dir: &std::path::Path) -> String {
    let mut s = String::from("set -euo pipefail\n");
    for (i, b) in blocks.iter().enumerate() {
        s.push_str(&format!(
            "echo '>>> docs/api-guide.md:{} ({})' >&2\n",
            b.line, b.lang
        ));
        match b.lang.as_str() {
            "sh" => s.push_str(&b.code),
            "python" => {
                let file = dir.join(format!("block{i}.py"));
                std::fs::write(&file, &b.code).unwrap();
                s.push_str(&format!(
                    "export N TOKEN\n\"$GUIDE_PYTHON\" {}\n",
                    file.display()
                ));
            }
            other => panic!("docs/api-guide.md:{}: no runner for `{other} test`", b.line),
        }
    }
    s
}

/// A path template of the spec (`/api/v1/alerts/{id}`) as a regex over the guide's commands.
fn route_regex(path: &str) -> regex::Regex {
    let mut re = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        re.push('/');
        if part.starts_with('{') {
            re.push_str(r#"[^/?"'\s]+"#);
        } else {
            re.push_str(&regex::escape(part));
        }
    }
    re.push_str(r#"(?:[?"'\s\\]|$)"#);
    regex::Regex::new(&re).unwrap()
}

/// (family, type) declared and (family, labels) sampled in a Prometheus text page.
type Families = BTreeMap<String, (String, Vec<BTreeMap<String, String>>)>;

fn parse_metrics(text: &str) -> Families {
    let mut out: Families = BTreeMap::new();
    let sample = regex::Regex::new(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ").unwrap();
    let label = regex::Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)""#).unwrap();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, ty) = (it.next().unwrap(), it.next().unwrap());
            out.entry(name.to_string()).or_default().0 = ty.to_string();
        } else if !line.starts_with('#')
            && let Some(c) = sample.captures(line)
        {
            let name = &c[1];
            let family = out
                .keys()
                .filter(|f| {
                    name == f.as_str()
                        || name
                            .strip_prefix(f.as_str())
                            .is_some_and(|s| ["_sum", "_count", "_bucket"].contains(&s))
                })
                .max_by_key(|f| f.len())
                .cloned()
                .unwrap_or_else(|| name.to_string());
            let labels = c
                .get(2)
                .map(|l| {
                    label
                        .captures_iter(l.as_str())
                        .map(|m| (m[1].to_string(), m[2].to_string()))
                        .collect()
                })
                .unwrap_or_default();
            out.entry(family).or_default().1.push(labels);
        }
    }
    out
}

/// What is wrong with `page`, exported by `process`, against the catalogue.
fn check_metrics(process: Process, page: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let families = parse_metrics(page);
    assert!(!families.is_empty(), "{}: empty /metrics", process.as_str());
    for (name, (ty, samples)) in &families {
        let Some(m) = METRICS.iter().find(|m| m.name == name) else {
            problems.push(format!(
                "{}: exports {name} ({ty}), not in the catalogue",
                process.as_str()
            ));
            continue;
        };
        if !m.by.contains(&process) {
            problems.push(format!(
                "{}: exports {name}, catalogued for {:?} only",
                process.as_str(),
                m.by
            ));
        }
        if ty != m.kind.exposition() {
            problems.push(format!(
                "{}: {name} is a {ty}, catalogued as {}",
                process.as_str(),
                m.kind.exposition()
            ));
        }
        for labels in samples {
            for (k, v) in labels {
                if ty == "summary" && k == "quantile" {
                    continue;
                }
                match m.labels.iter().find(|(l, _)| l == k) {
                    None => problems.push(format!(
                        "{}: {name} has label {k}, not catalogued",
                        process.as_str()
                    )),
                    Some((_, values)) if !values.is_empty() && !values.contains(&v.as_str()) => {
                        problems.push(format!(
                            "{}: {name}{{{k}=\"{v}\"}}: value not catalogued ({values:?})",
                            process.as_str()
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_guide_runs_and_every_exported_metric_is_catalogued() {
    let guide = std::fs::read_to_string(root().join("docs/api-guide.md")).unwrap();
    let blocks = tested_blocks(&guide);
    assert!(blocks.len() >= 10, "only {} tested blocks", blocks.len());

    let http = http_client(Duration::from_secs(10));
    let sim = Sim::start_small(&[("UNDERLYINGS", "2"), ("HOT_SYMBOLS", "2")]).await;
    let db = fresh_database().await.unwrap();
    let mut env = base_env(&db);
    env.extend(sim.broker_env());
    env.push(("PRICEFEED__RECONCILE__INTERVAL_MS".into(), "2000".into()));
    migrate(&env, READY).await;
    let keys = seed_from_catalogue(&http, &sim, &db).await;
    for k in ["spot:BTCUSDT", "spot:ETHUSDT", "usdm:BTCUSDT"] {
        assert!(
            keys.contains(k),
            "the guide's instruments: {k} missing from {keys:?}"
        );
    }
    let sched = start_schedulers(&["sched"], &env).await.remove(0);
    let worker = Proc::start_ready("worker", &bin("pricefeed-scheduler"), &["worker"], &env)
        .await
        .unwrap();
    let node = start_nodes(&["n1"], &env).await.remove(0);

    // The guide's instruments have prices and statistics, so its examples hit data rather than 404s.
    for path in [
        "/api/v1/prices/BTCUSDT",
        "/api/v1/prices/ETHUSDT",
        "/api/v1/prices/BTCUSDT?market=usdm",
        "/api/v1/stats/BTCUSDT",
    ] {
        let url = node.url(path);
        wait_for(READY, || async {
            http.get(&url).send().await.is_ok_and(|r| r.status() == 200)
        })
        .await
        .unwrap_or_else(|()| panic!("no price at {path} within {READY:?}:\n{}", node.log_tail()));
    }

    // Every route of the spec is exercised by a tested block.
    let spec: Value = http
        .get(node.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tested: String = blocks.iter().map(|b| b.code.as_str()).collect();
    let mut untested = Vec::new();
    for (path, ops) in spec["paths"].as_object().unwrap() {
        let re = route_regex(path);
        // The WebSocket route is opened by the Python block (`ws://…`).
        let stream = path == "/api/v1/stream" && tested.contains("/api/v1/stream");
        if !re.is_match(&tested) && !stream {
            untested.push(path.clone());
        }
        for method in ops.as_object().unwrap().keys() {
            let m = method.to_uppercase();
            if !["GET", "POST"].contains(&m.as_str())
                && !tested
                    .lines()
                    .any(|l| l.contains(&format!("-X {m}")) && re.is_match(l))
            {
                untested.push(format!("{m} {path}"));
            }
        }
    }
    assert!(
        untested.is_empty(),
        "routes of the OpenAPI document no `sh test` block of docs/api-guide.md exercises: \
         {untested:?}"
    );

    // Run the guide.
    let dir = scratch_dir("api-guide");
    let script = script(&blocks, &dir);
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let python = std::env::var("PRICEFEED_TEST_PYTHON")
        .expect("PRICEFEED_TEST_PYTHON must name the test venv's Python (./dev test sets it)");
    let child = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .envs(env.iter().cloned())
        .env("PRICEFEED__NODE__ID", "guide-cli")
        .env("N", node.url("").trim_end_matches('/'))
        .env("PATH", path)
        .env("GUIDE_PYTHON", python)
        .current_dir(&dir)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(GUIDE_DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the guide did not finish within {GUIDE_DEADLINE:?}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "docs/api-guide.md: a tested block failed ({}); the last `>>>` line names it.\n\
         stdout:\n{stdout}\nstderr:\n{stderr}\nnode log:\n{}",
        out.status,
        node.log_tail()
    );

    // Every exported family, after that traffic, is in the catalogue.
    let mut problems = Vec::new();
    let control = format!("http://{}/metrics", sim.port("control"));
    for (process, url) in [
        (Process::Node, node.url("/metrics")),
        (Process::Scheduler, sched.url("/metrics")),
        (Process::Worker, worker.url("/metrics")),
        (Process::Sim, control),
    ] {
        let page = http.get(&url).send().await.unwrap().text().await.unwrap();
        problems.extend(check_metrics(process, &page));
    }
    assert!(
        problems.is_empty(),
        "/metrics and crates/runtime/src/metric_catalogue.rs disagree (then regenerate \
         docs/metrics.md: PRICEFEED_REGENERATE=1 cargo test -p pricefeed-tests --test \
         metrics_reference):\n{}",
        problems.join("\n")
    );
}

#[test]
fn blocks_and_routes_are_found() {
    let md = "x\n```sh test\na\nb\n```\n```sh\nno\n```\n  ```python test\nc\n  ```\n";
    let b = tested_blocks(md);
    assert_eq!(b.len(), 2);
    assert_eq!(
        (b[0].lang.as_str(), b[0].line, b[0].code.as_str()),
        ("sh", 2, "a\nb\n")
    );
    assert_eq!((b[1].lang.as_str(), b[1].code.as_str()), ("python", "c\n"));
    let re = route_regex("/api/v1/alerts/{id}");
    assert!(re.is_match("curl $N/api/v1/alerts/$ID -X PATCH"));
    assert!(re.is_match("curl \"$N/api/v1/alerts/12\""));
    assert!(!re.is_match("curl $N/api/v1/alerts/$ID/notifications"));
    assert!(!route_regex("/api/v1/alerts").is_match("curl $N/api/v1/alerts/3"));
    let f = parse_metrics(
        "# TYPE a_seconds summary\na_seconds{route=\"/x\",quantile=\"0.5\"} 1\na_seconds_sum{route=\"/x\"} 2\n",
    );
    assert_eq!(f["a_seconds"].0, "summary");
    assert_eq!(f["a_seconds"].1.len(), 2);
}
