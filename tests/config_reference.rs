//! `docs/configuration.md` is rendered from the configuration types of every binary (their doc
//! comments, serde defaults and start-up checks) plus `config/default.toml`; this test fails
//! when the committed file differs, and prints how to regenerate it. It also holds
//! `config/env.sample` to its promise of listing every variable.

use std::path::{Path, PathBuf};

use pricefeed_runtime::config_reference::{Binary, keys, render};
use serde_json::json;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const REGENERATE: &str =
    "PRICEFEED_REGENERATE=1 cargo test -p pricefeed-tests --test config_reference";

fn binaries() -> Vec<Binary> {
    let file = root().join("config/default.toml");
    let file: &Path = &file;
    // The token key has no usable default on purpose (it must be the same secret on every node).
    let secret = json!("x".repeat(48));
    // `[redis.sentinel]` is optional and absent from the file: probe its rules with one set.
    let sentinel = || json!({"master_name": "pricefeed", "nodes": ["127.0.0.1:26379"]});
    vec![
        Binary::of::<pricefeed_node::config::NodeConfig>(
            "pricefeed-node",
            "API node: REST and WebSocket API, dashboard, broker ingest of its slice, alerts",
            file,
            &[("auth.jwt_secret", secret), ("redis.sentinel", sentinel())],
        )
        .unwrap(),
        Binary::of::<pricefeed_scheduler::config::SchedulerConfig>(
            "pricefeed-scheduler",
            "`scheduler` role (leader election, instrument sync, slice assignment, retention) \
             and `worker` role (reconciliation, alert emails); both read the same sections",
            file,
            &[("redis.sentinel", sentinel())],
        )
        .unwrap(),
        Binary::of::<pricefeed_exchange_sim::config::SimFile>(
            "pricefeed-sim",
            "exchange simulator for development and tests (docs/simulator.md)",
            file,
            &[],
        )
        .unwrap(),
    ]
}

#[test]
fn configuration_md_is_what_the_config_types_give() {
    let md = render(&binaries()).unwrap_or_else(|missing| {
        panic!("configuration keys without a doc comment (add `///` on the field): {missing:#?}")
    });
    pricefeed_tests::check_generated(
        "docs/configuration.md",
        &md,
        "the configuration types",
        REGENERATE,
    );
}

#[test]
fn env_sample_lists_every_variable() {
    let sample = std::fs::read_to_string(root().join("config/env.sample")).unwrap();
    let listed: Vec<&str> = sample
        .lines()
        .filter_map(|l| l.trim_start_matches('#').trim().split_once('='))
        .map(|(k, _)| k.trim())
        .filter(|k| k.starts_with("PRICEFEED__"))
        .collect();
    let vars = keys(&binaries());
    let missing: Vec<&String> = vars
        .iter()
        .filter(|v| !listed.contains(&v.as_str()))
        .collect();
    let unknown: Vec<&&str> = listed
        .iter()
        .filter(|l| !vars.iter().any(|v| v == *l))
        .collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "config/env.sample is out of step with the configuration types; add (with a comment \
         from docs/configuration.md): {missing:#?}\nremove (no such key): {unknown:#?}"
    );
}
