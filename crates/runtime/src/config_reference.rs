//! The configuration reference, `docs/configuration.md`, rendered from the configuration types
//! themselves so it cannot drift from the code.
//!
//! Every config struct derives `schemars::JsonSchema`: its doc comments become descriptions and
//! its serde defaults become built-in defaults. A [`Binary`] adds what the schema cannot know —
//! the values `config/default.toml` sets, and the rules `Validate` enforces at start, found by
//! feeding each key a few out-of-range values and keeping the errors that name that key. The
//! same key read by several binaries is listed once, with every binary that reads it.
//! `tests/config_reference.rs` compares the rendering with the committed file.

use std::collections::BTreeMap;
use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Toml};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::config::{ConfigError, ENV_PREFIX, Validate};

/// Schema of a duration written as a number and a unit (`30s`, `5m`, `1h`, `1d`), for config
/// fields of a type outside this crate's reach (`#[schemars(with = "SpanText")]`).
#[derive(Debug)]
pub struct SpanText;

impl JsonSchema for SpanText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SpanText".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "span"})
    }
}

/// Placeholder for the name part of a map key (`sim.rates.<SYMBOL>`).
const MAP_KEY: &str = "<SYMBOL>";

/// What deserializing and validating a candidate configuration gave.
enum Check {
    Valid,
    Invalid(ConfigError),
    Unparsable,
}

/// One binary's configuration type, with the values a file gives it.
pub struct Binary {
    name: String,
    what: String,
    schema: Value,
    /// The configuration `file` gives, serialized (secrets masked).
    effective: Value,
    /// `effective` with the base overrides: a valid whole to probe rules against.
    base: Value,
    check: fn(&Value) -> Check,
}

impl std::fmt::Debug for Binary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binary").field("name", &self.name).finish()
    }
}

fn check_as<T: DeserializeOwned + Validate>(v: &Value) -> Check {
    match serde_json::from_value::<T>(v.clone()) {
        Err(_) => Check::Unparsable,
        Ok(c) => match c.validate() {
            Ok(()) => Check::Valid,
            Err(e) => Check::Invalid(e),
        },
    }
}

impl Binary {
    /// `T` as `name` (a binary, `what` says what it is) reads it from `file` alone (no
    /// environment). `base` sets keys the file leaves invalid on purpose (a secret that must
    /// come from the environment), so every other key can be checked against a valid whole.
    pub fn of<T>(
        name: &str,
        what: &str,
        file: &Path,
        base: &[(&str, Value)],
    ) -> Result<Self, String>
    where
        T: JsonSchema + Serialize + DeserializeOwned + Validate,
    {
        let schema = serde_json::to_value(schemars::schema_for!(T)).map_err(|e| e.to_string())?;
        let cfg: T = Figment::from(Toml::file_exact(file))
            .extract()
            .map_err(|e| {
                format!(
                    "{name}: {} as read from {}: {e}",
                    file.display(),
                    e.path.join(".")
                )
            })?;
        let effective = serde_json::to_value(&cfg).map_err(|e| e.to_string())?;
        let mut valid = effective.clone();
        for (path, v) in base {
            set_path(&mut valid, &split(path), v.clone());
        }
        let b = Self {
            name: name.into(),
            what: what.into(),
            schema,
            effective,
            base: valid,
            check: check_as::<T>,
        };
        match (b.check)(&b.base) {
            Check::Valid => Ok(b),
            Check::Invalid(e) => Err(format!(
                "{name}: {} (with the base overrides) does not validate: {e}",
                file.display()
            )),
            Check::Unparsable => Err(format!(
                "{name}: {} does not deserialize back from its own serialization",
                file.display()
            )),
        }
    }
}

fn split(path: &str) -> Vec<String> {
    path.split('.').map(str::to_string).collect()
}

fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn set_path(v: &mut Value, path: &[String], new: Value) {
    let Some((last, parents)) = path.split_last() else {
        *v = new;
        return;
    };
    let mut cur = v;
    for k in parents {
        cur = cur
            .as_object_mut()
            .expect("config path runs through tables")
            .entry(k.clone())
            .or_insert_with(|| json!({}));
    }
    cur.as_object_mut()
        .expect("config path runs through tables")
        .insert(last.clone(), new);
}

/// A table of keys (`[node.feed]`).
#[derive(Debug, Default)]
struct Section {
    description: String,
    readers: Vec<String>,
}

/// One settable key.
#[derive(Debug)]
struct Key {
    path: Vec<String>,
    /// The table it is listed in (a map's entries are listed with the map's table).
    section: Vec<String>,
    ty: String,
    description: String,
    /// Built-in default (when the key is absent everywhere); `None` = required.
    builtin: Option<Value>,
    /// With `config/default.toml`; `None` under a map entry.
    effective: Option<Value>,
    rules: Vec<String>,
    readers: Vec<String>,
    in_map: bool,
}

impl Key {
    fn dotted(&self) -> String {
        self.path.join(".")
    }
    fn env_var(&self) -> Option<String> {
        // Figment lowercases environment keys, so a map entry's name (a symbol) cannot be set
        // from the environment.
        (!self.in_map).then(|| format!("{ENV_PREFIX}{}", self.path.join("__").to_uppercase()))
    }
}

struct Walker<'a> {
    defs: &'a serde_json::Map<String, Value>,
    sections: BTreeMap<Vec<String>, Section>,
    keys: Vec<Key>,
}

impl<'a> Walker<'a> {
    /// Follows `$ref` and strips the `null` of an `Option`; returns the target schema and the
    /// description found on the way (the referring one wins).
    fn resolve(&self, s: &'a Value) -> (&'a Value, Option<String>) {
        resolve(self.defs, s)
    }
}

/// See [`Walker::resolve`].
fn resolve<'a>(
    defs: &'a serde_json::Map<String, Value>,
    mut s: &'a Value,
) -> (&'a Value, Option<String>) {
    let mut description = None;
    for _ in 0..16 {
        if description.is_none() {
            description = s["description"].as_str().map(str::to_string);
        }
        if let Some(r) = s["$ref"].as_str() {
            let name = r.rsplit('/').next().unwrap_or(r);
            s = &defs[name];
            continue;
        }
        let alts = s["anyOf"].as_array().or_else(|| s["allOf"].as_array());
        if let Some(alts) = alts {
            let non_null: Vec<&Value> = alts.iter().filter(|a| a["type"] != "null").collect();
            if non_null.len() == 1 {
                s = non_null[0];
                continue;
            }
        }
        break;
    }
    if description.is_none() {
        description = s["description"].as_str().map(str::to_string);
    }
    (s, description)
}

impl<'a> Walker<'a> {
    fn walk(&mut self, s: &'a Value, path: Vec<String>, inherited: Option<&Value>, in_map: bool) {
        let (t, description) = self.resolve(s);
        let own_default = s.get("default").or(t.get("default"));
        let default = own_default.or(inherited);
        if let Some(props) = t["properties"].as_object() {
            let sec = self.sections.entry(path.clone()).or_default();
            if sec.description.is_empty() {
                sec.description = description.unwrap_or_default();
            }
            let mut names: Vec<&String> = props.keys().collect();
            names.sort();
            for name in names {
                let mut p = path.clone();
                p.push(name.clone());
                let child_default = default.and_then(|d| d.get(name.as_str()));
                self.walk(&props[name], p, child_default, in_map);
            }
            return;
        }
        if let Some(inner) = t.get("additionalProperties").filter(|v| v.is_object()) {
            // A map keyed by symbol: its entries are keys (or tables) of their own.
            let (inner_t, _) = self.resolve(inner);
            if inner_t.get("properties").is_some() {
                let mut p = path.clone();
                p.push(MAP_KEY.into());
                let sec = self.sections.entry(p.clone()).or_default();
                sec.description = description.clone().unwrap_or_default();
                self.walk(inner, p, None, true);
                return;
            }
            let section = path[..path.len().saturating_sub(1)].to_vec();
            let mut p = path;
            p.push(MAP_KEY.into());
            self.keys.push(Key {
                path: p,
                section,
                ty: type_name(self, inner),
                description: description.unwrap_or_default(),
                builtin: None,
                effective: None,
                rules: Vec::new(),
                readers: Vec::new(),
                in_map: true,
            });
            return;
        }
        let mut description = description.unwrap_or_default();
        if let Some(variants) = t["oneOf"].as_array() {
            let documented: Vec<String> = variants
                .iter()
                .filter_map(|v| {
                    let c = v["const"].as_str().or_else(|| v["enum"][0].as_str())?;
                    let d = v["description"].as_str()?;
                    Some(format!("`{c}`: {d}"))
                })
                .collect();
            if !documented.is_empty() {
                description = format!("{description} {}", documented.join("; "));
            }
        }
        self.keys.push(Key {
            section: path[..path.len().saturating_sub(1)].to_vec(),
            path,
            ty: type_name(self, s),
            description: description.trim().to_string(),
            builtin: default.cloned(),
            effective: None,
            rules: Vec::new(),
            readers: Vec::new(),
            in_map,
        });
    }
}

fn type_name<'a>(w: &Walker<'a>, s: &'a Value) -> String {
    let (t, _) = w.resolve(s);
    if let Some(values) = enum_values(t) {
        return values
            .iter()
            .map(|v| format!("`{v}`"))
            .collect::<Vec<_>>()
            .join(" \\| ");
    }
    let ty = match &t["type"] {
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("")
            .to_string(),
        v => v.as_str().unwrap_or("").to_string(),
    };
    let format = t["format"].as_str().unwrap_or("");
    match (ty.as_str(), format) {
        ("string", "span") => "duration (`30s`, `5m`, `1h`, `1d`)".into(),
        ("string", "secret") => "string, secret".into(),
        ("string", "secret-url") => "URL, password part secret".into(),
        ("string", "ip") => "IP address".into(),
        ("string", _) if t["pattern"].is_string() && format.is_empty() => "string".into(),
        ("string", _) => "string".into(),
        ("integer", f) if f.starts_with("uint") => "integer ≥ 0".into(),
        ("integer", _) => "integer".into(),
        ("number", _) => "number".into(),
        ("boolean", _) => "boolean".into(),
        ("array", _) => format!("list of {}", type_name(w, &t["items"])),
        ("object", _) => "table".into(),
        _ => "value".into(),
    }
}

fn enum_values(t: &Value) -> Option<Vec<String>> {
    if let Some(e) = t["enum"].as_array() {
        return Some(e.iter().map(render_plain).collect());
    }
    let variants = t["oneOf"].as_array()?;
    variants
        .iter()
        .map(|v| {
            v.get("const")
                .or_else(|| v["enum"].get(0))
                .map(render_plain)
        })
        .collect()
}

fn render_plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// A value as it is written in TOML (the renderings of JSON and TOML agree for scalars).
fn toml_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(toml_value).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(m) if m.is_empty() => "{}".into(),
        Value::Null => "none".into(),
        v => v.to_string(),
    }
}

/// Values that probe the rules of a key of schema `t`.
fn probes<'a>(w: &Walker<'a>, s: &'a Value, current: Option<&Value>) -> Vec<Value> {
    let (t, _) = w.resolve(s);
    if enum_values(t).is_some() {
        return Vec::new();
    }
    let format = t["format"].as_str().unwrap_or("");
    match t["type"].as_str().unwrap_or("") {
        "integer" => {
            let big: u64 = match format {
                "uint8" => u8::MAX.into(),
                "uint16" | "int16" => i16::MAX as u64,
                "uint32" => 4_000_000_000,
                "int32" => i32::MAX as u64,
                _ => 1_000_000_000_000,
            };
            let mut v = vec![json!(0), json!(1), json!(big)];
            if !format.starts_with("uint") {
                v.push(json!(-1));
                v.push(json!(-(big as i64)));
            }
            v
        }
        "number" => vec![json!(-1.0), json!(0.0), json!(1.5), json!(1e12)],
        "string" => ["", " ", "x", "1s", "7d"]
            .iter()
            .map(|s| json!(s))
            .collect(),
        "boolean" => vec![json!(true), json!(false)],
        "array" => {
            let mut v = vec![json!([])];
            if let Some(first) = current.and_then(|c| c.get(0)) {
                v.push(Value::Array(vec![first.clone(); 20]));
            }
            v
        }
        _ => Vec::new(),
    }
}

/// The keys of `b`, with defaults and the rules validation enforces.
fn keys_of(b: &Binary) -> (BTreeMap<Vec<String>, Section>, Vec<Key>) {
    let empty = serde_json::Map::new();
    let defs = b.schema["$defs"].as_object().unwrap_or(&empty);
    let mut w = Walker {
        defs,
        sections: BTreeMap::new(),
        keys: Vec::new(),
    };
    w.walk(&b.schema, Vec::new(), None, false);
    let mut keys = std::mem::take(&mut w.keys);
    for k in &mut keys {
        k.readers.push(b.name.clone());
        if k.in_map {
            continue;
        }
        k.effective = get_path(&b.effective, &k.path).cloned();
        let leaf = leaf_schema(&w, &b.schema, &k.path);
        let dotted = k.dotted();
        for probe in probes(&w, leaf, k.effective.as_ref()) {
            let mut v = b.base.clone();
            set_path(&mut v, &k.path, probe);
            if let Check::Invalid(ConfigError::Key { key, msg }) = (b.check)(&v)
                && key == dotted
                && !k.rules.contains(&msg)
            {
                k.rules.push(msg);
            }
        }
    }
    for s in w.sections.values_mut() {
        s.readers.push(b.name.clone());
    }
    (w.sections, keys)
}

fn leaf_schema<'a>(w: &Walker<'a>, root: &'a Value, path: &[String]) -> &'a Value {
    let mut s = root;
    for k in path {
        let (t, _) = w.resolve(s);
        s = &t["properties"][k.as_str()];
    }
    s
}

/// The environment variable of every key `binaries` read, sorted (map entries, which only a
/// file can set, left out).
pub fn keys(binaries: &[Binary]) -> Vec<String> {
    let mut vars: Vec<String> = binaries
        .iter()
        .flat_map(|b| keys_of(b).1)
        .filter_map(|k| k.env_var())
        .collect();
    vars.sort();
    vars.dedup();
    vars
}

/// Renders the reference of `binaries`. Fails with the keys that have no description.
pub fn render(binaries: &[Binary]) -> Result<String, Vec<String>> {
    let mut sections: BTreeMap<Vec<String>, Section> = BTreeMap::new();
    let mut keys: BTreeMap<Vec<String>, Key> = BTreeMap::new();
    for b in binaries {
        let (secs, ks) = keys_of(b);
        for (p, s) in secs {
            let e = sections.entry(p).or_default();
            if e.description.is_empty() {
                e.description = s.description;
            }
            e.readers.extend(s.readers);
        }
        for k in ks {
            match keys.get_mut(&k.path) {
                Some(e) => {
                    e.readers.extend(k.readers);
                    for r in k.rules {
                        if !e.rules.contains(&r) {
                            e.rules.push(r);
                        }
                    }
                }
                None => {
                    keys.insert(k.path.clone(), k);
                }
            }
        }
    }
    let missing: Vec<String> = keys
        .values()
        .filter(|k| k.description.is_empty())
        .map(Key::dotted)
        .chain(
            sections
                .iter()
                .filter(|(p, s)| p.len() == 1 && s.description.is_empty())
                .map(|(p, _)| format!("[{}] (the section's struct or field)", p[0])),
        )
        .collect();
    if !missing.is_empty() {
        return Err(missing);
    }

    let mut out = String::new();
    out.push_str(HEADER);
    out.push_str("| binary | what | sections it reads |\n|---|---|---|\n");
    for b in binaries {
        let tops: Vec<String> = sections
            .iter()
            .filter(|(p, s)| p.len() == 1 && s.readers.contains(&b.name))
            .map(|(p, _)| format!("[`[{}]`](#{})", p[0], anchor(&p[0])))
            .collect();
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            b.name,
            cell(&b.what),
            tops.join(" ")
        ));
    }
    out.push('\n');
    for (path, sec) in sections.iter().filter(|(p, _)| !p.is_empty()) {
        let direct: Vec<&Key> = keys.values().filter(|k| &k.section == path).collect();
        let heading = if path.len() == 1 { "##" } else { "###" };
        out.push_str(&format!("{heading} `[{}]`\n\n", path.join(".")));
        if !sec.description.is_empty() {
            out.push_str(&format!("{}\n\n", paragraphs(&sec.description)));
        }
        if path.len() == 1 {
            let mut readers = sec.readers.clone();
            readers.dedup();
            out.push_str(&format!(
                "Read by {}.\n\n",
                readers
                    .iter()
                    .map(|r| format!("`{r}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if direct.is_empty() {
            continue;
        }
        out.push_str("| key, environment variable | type | default | description |\n");
        out.push_str("|---|---|---|---|\n");
        for k in direct {
            out.push_str(&row(k));
        }
        out.push('\n');
    }
    Ok(out)
}

fn row(k: &Key) -> String {
    let name = match k.env_var() {
        Some(env) => format!("`{}`<br>`{env}`", k.dotted()),
        None => format!("`{}`<br>(file only)", k.dotted()),
    };
    let default = match (&k.effective, &k.builtin) {
        (None, None) => "none".to_string(),
        (None, Some(b)) => format!("`{}`", toml_value(b)),
        (Some(e), Some(b)) if e == b => format!("`{}`", toml_value(e)),
        (Some(e), Some(b)) => format!("`{}`<br>(built in: `{}`)", toml_value(e), toml_value(b)),
        (Some(e), None) => format!("`{}`<br>(required: no built-in default)", toml_value(e)),
    };
    let mut desc = paragraphs(&k.description);
    if !k.rules.is_empty() {
        desc.push_str(&format!(
            "<br>**Checked at start:** {}.",
            k.rules.join("; ")
        ));
    }
    let mut readers = k.readers.clone();
    readers.dedup();
    format!(
        "| {name} | {} | {} | {} |\n",
        k.ty,
        cell(&default),
        cell(&desc)
    )
}

/// Doc-comment text in a table cell: paragraphs kept apart, lines joined.
fn paragraphs(s: &str) -> String {
    s.split("\n\n")
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("<br>")
}

fn cell(s: &str) -> String {
    // Pipes inside backticks still end a cell in GitHub's tables.
    s.replace('|', "\\|").replace("\\\\|", "\\|")
}

fn anchor(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| {
            if c == ' ' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

const HEADER: &str = "# Configuration reference

<!-- Generated from the configuration types by tests/config_reference.rs; do not edit by hand.
     Regenerate: PRICEFEED_REGENERATE=1 cargo test -p pricefeed-tests --test config_reference -->

Every key below, for every binary, rendered from the Rust types the binaries deserialize
(descriptions are the fields' doc comments), the values `config/default.toml` sets, and the
rules the binaries check at start. A test fails when this file differs from what the types give.

**Where values come from**, later sources winning: the TOML file (`config/default.toml`, or
`--config FILE` / `PRICEFEED_CONFIG`), then an optional env file (`--env-file FILE` /
`PRICEFEED_ENV_FILE`, `KEY=VALUE` lines, never overriding a variable already set in the
process), then environment variables. A key's variable is `PRICEFEED__` followed by its path in
upper case with `__` between the parts: `node.feed.tick_flush_ms` is
`PRICEFEED__NODE__FEED__TICK_FLUSH_MS`. Lists are written in TOML syntax in a variable too
(`PRICEFEED__VWAP__INTERVALS='[\"1m\",\"5m\"]'`). `RUST_LOG`, when set, overrides
`telemetry.log_level`.

**Defaults**: the *default* column is the value with `config/default.toml`; where the binary's
built-in default (used when no source sets the key) differs, it follows. A key without a
built-in default must be set by some source.

**Checking**: each binary reads only its own sections, refuses unknown keys inside them, and
checks every value at start. A bad value stops it with exit code 78 and a message naming the
key (and the variable, when it came from one). `pricefeed-node check-config` and
`pricefeed-scheduler check-config` print the effective configuration with secrets masked.

";

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// A toy configuration.
    #[derive(Debug, Serialize, Deserialize, JsonSchema)]
    struct Demo {
        /// `[demo]`: a section.
        demo: DemoSection,
    }

    #[derive(Debug, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct DemoSection {
        /// Workers.
        #[serde(default = "four")]
        workers: u32,
        /// A name.
        name: String,
        /// Per-symbol weights.
        #[serde(default)]
        weights: BTreeMap<String, f64>,
    }

    fn four() -> u32 {
        4
    }

    impl Validate for Demo {
        fn validate(&self) -> Result<(), ConfigError> {
            if !(1..=64).contains(&self.demo.workers) {
                return Err(ConfigError::key("demo.workers", "must be between 1 and 64"));
            }
            Ok(())
        }
    }

    #[test]
    fn renders_types_defaults_env_vars_and_rules() {
        let dir = std::env::temp_dir().join(format!("pf-config-ref-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[demo]\nname = \"a\"\nworkers = 8\n").unwrap();
        let b = Binary::of::<Demo>("demo-bin", "a demo", &file, &[]).unwrap();
        let md = render(&[b]).unwrap();
        assert!(md.contains("## `[demo]`\n\n`[demo]`: a section."), "{md}");
        assert!(
            md.contains(
                "| `demo.workers`<br>`PRICEFEED__DEMO__WORKERS` | integer ≥ 0 | `8`<br>(built in: `4`) \
                 | Workers.<br>**Checked at start:** must be between 1 and 64. |"
            ),
            "{md}"
        );
        assert!(
            md.contains("`\"a\"`<br>(required: no built-in default)"),
            "{md}"
        );
        assert!(
            md.contains("`demo.weights.<SYMBOL>`<br>(file only) | number"),
            "{md}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
