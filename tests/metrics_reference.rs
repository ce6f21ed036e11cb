//! `docs/metrics.md` is rendered from `crates/runtime/src/metric_catalogue.rs`; this test fails
//! when the committed file differs (and prints how to regenerate it), and when the sources create
//! a metric the catalogue does not list, with another type or other labels, or the catalogue
//! lists one nothing creates. The live check is in `tests/docs_live.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use pricefeed_runtime::metric_catalogue::{METRICS, render};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const REGENERATE: &str =
    "PRICEFEED_REGENERATE=1 cargo test -p pricefeed-tests --test metrics_reference";

#[test]
fn metrics_md_is_what_the_catalogue_gives() {
    let md = render();
    pricefeed_tests::check_generated("docs/metrics.md", &md, "the metric catalogue", REGENERATE);
}

/// A metric as a source file creates it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Created {
    kind: String,
    labels: BTreeSet<String>,
    at: String,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The arguments of the macro call whose `(` is at `open` (up to the matching `)`).
fn call_args(text: &str, open: usize) -> &str {
    let mut depth = 0;
    for (i, c) in text[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &text[open + 1..open + i];
                }
            }
            _ => {}
        }
    }
    &text[open + 1..]
}

/// Every `counter!("name", "label" => value, ...)` (and gauge, histogram) under `crates/*/src`.
fn created_in_sources() -> BTreeMap<String, Vec<Created>> {
    let mut files = Vec::new();
    rust_files(&root().join("crates"), &mut files);
    let call =
        regex::Regex::new(r#"\b(counter|gauge|histogram)!\(\s*"([a-z_:][a-z0-9_:]*)""#).unwrap();
    let label = regex::Regex::new(r#""([a-z_][a-z0-9_]*)"\s*=>"#).unwrap();
    let mut out: BTreeMap<String, Vec<Created>> = BTreeMap::new();
    for f in files {
        let rel = f
            .strip_prefix(root())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        // The catalogue's own unit tests and the ops route's test make throwaway metrics.
        if rel.ends_with("metric_catalogue.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let test_mod = text.find("#[cfg(test)]").unwrap_or(text.len());
        for c in call.captures_iter(&text) {
            let m = c.get(0).unwrap();
            if m.start() > test_mod || rel.contains("/tests/") {
                continue;
            }
            let open = m.start() + text[m.start()..].find('(').unwrap();
            let args = call_args(&text, open);
            let line = text[..m.start()].lines().count() + 1;
            out.entry(c[2].to_string()).or_default().push(Created {
                kind: c[1].to_string(),
                labels: label
                    .captures_iter(args)
                    .map(|l| l[1].to_string())
                    .collect(),
                at: format!("{rel}:{line}"),
            });
        }
    }
    out
}

#[test]
fn the_catalogue_lists_exactly_what_the_sources_create() {
    let created = created_in_sources();
    assert!(created.len() >= 40, "found only {created:#?}");
    let mut problems = Vec::new();
    for (name, sites) in &created {
        let Some(m) = METRICS.iter().find(|m| m.name == name) else {
            problems.push(format!(
                "{name} (created at {}) is not in crates/runtime/src/metric_catalogue.rs",
                sites[0].at
            ));
            continue;
        };
        let listed: BTreeSet<String> = m.labels.iter().map(|(k, _)| k.to_string()).collect();
        for s in sites {
            if s.kind != m.kind.as_str() {
                problems.push(format!(
                    "{name}: created as a {} at {}, listed as a {}",
                    s.kind,
                    s.at,
                    m.kind.as_str()
                ));
            }
            if s.labels != listed {
                problems.push(format!(
                    "{name}: labels {:?} at {}, listed {:?}",
                    s.labels, s.at, listed
                ));
            }
        }
    }
    for m in METRICS {
        if !created.contains_key(m.name) {
            problems.push(format!(
                "{} is listed in the catalogue but nothing creates it",
                m.name
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "metric catalogue and sources disagree (then regenerate docs/metrics.md with \
         {REGENERATE}):\n{}",
        problems.join("\n")
    );
}
