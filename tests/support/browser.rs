//! Headless Chromium (Debian's package, `PRICEFEED_CHROMIUM`) driven over the Chrome DevTools
//! Protocol, for tests that use a page the way a person would: load it, read what it shows,
//! click, type, resize to a phone, take screenshots.
//!
//! Chromium runs with `--remote-debugging-port=0` and a fresh profile in the test's scratch
//! directory; the DevTools address comes from the `DevToolsActivePort` file it writes there. One
//! WebSocket carries every command (flattened target sessions); a reader task routes replies to
//! their callers by id and keeps uncaught page exceptions and console errors for the test to
//! check. Chromium runs in its own process group, killed by that id when the [`Browser`] is
//! closed or dropped, so no renderer outlives the test.
//!
//! Every wait is a poll with a deadline ([`Page::wait`]); nothing sleeps for a fixed time.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long one DevTools command may take on a loaded 2-core machine.
const COMMAND: Duration = Duration::from_secs(30);
/// Polling period of [`Page::wait`].
const POLL: Duration = Duration::from_millis(100);

/// The Chromium binary: `PRICEFEED_CHROMIUM`, else Debian's `/usr/bin/chromium`; panics with
/// how to get it when it is missing.
pub fn chromium() -> PathBuf {
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

/// Chromium's process group (led by the browser process); SIGKILLed by its id on drop.
#[derive(Debug)]
struct Group {
    child: Child,
}

impl Group {
    fn kill(&mut self) {
        // The whole group first (renderers, GPU and zygote processes are members), then reap
        // the leader; kill(1) because the workspace forbids `unsafe` libc calls.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The DevTools WebSocket: commands go out through `sink`, replies come back through `pending`.
#[derive(Debug, Clone)]
struct Conn {
    sink: Arc<tokio::sync::Mutex<SplitSink<Ws, Message>>>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>,
    next_id: Arc<AtomicU64>,
    exceptions: Arc<Mutex<Vec<String>>>,
    console_errors: Arc<Mutex<Vec<String>>>,
}

impl Conn {
    async fn open(url: &str) -> anyhow::Result<Conn> {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("connect to DevTools at {url}"))?;
        let (sink, mut stream) = ws.split();
        let conn = Conn {
            sink: Arc::new(tokio::sync::Mutex::new(sink)),
            pending: Arc::default(),
            next_id: Arc::new(AtomicU64::new(1)),
            exceptions: Arc::default(),
            console_errors: Arc::default(),
        };
        let (pending, exceptions, console) = (
            conn.pending.clone(),
            conn.exceptions.clone(),
            conn.console_errors.clone(),
        );
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(t) = msg else { continue };
                let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                    continue;
                };
                if let Some(id) = v.get("id").and_then(Value::as_u64) {
                    if let Some(tx) = pending.lock().unwrap().remove(&id) {
                        let _ = tx.send(v);
                    }
                    continue;
                }
                let p = &v["params"];
                match v["method"].as_str() {
                    Some("Runtime.exceptionThrown") => {
                        let d = &p["exceptionDetails"];
                        let text = d["exception"]["description"]
                            .as_str()
                            .or_else(|| d["text"].as_str())
                            .unwrap_or("?");
                        exceptions.lock().unwrap().push(text.to_string());
                    }
                    Some("Runtime.consoleAPICalled") if p["type"] == "error" => {
                        let args: Vec<String> = p["args"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|a| {
                                a["value"]
                                    .as_str()
                                    .map(str::to_string)
                                    .or_else(|| a["description"].as_str().map(str::to_string))
                                    .unwrap_or_else(|| a["value"].to_string())
                            })
                            .collect();
                        console.lock().unwrap().push(args.join(" "));
                    }
                    Some("Log.entryAdded") if p["entry"]["level"] == "error" => {
                        let e = &p["entry"];
                        console.lock().unwrap().push(format!(
                            "{}: {} {}",
                            e["source"].as_str().unwrap_or("?"),
                            e["text"].as_str().unwrap_or("?"),
                            e["url"].as_str().unwrap_or("")
                        ));
                    }
                    _ => {}
                }
            }
            // The connection is gone: fail every waiting call at once.
            pending.lock().unwrap().clear();
        });
        Ok(conn)
    }

    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        self.sink
            .lock()
            .await
            .send(Message::text(msg.to_string()))
            .await
            .with_context(|| format!("send {method}"))?;
        let reply = tokio::time::timeout(COMMAND, rx)
            .await
            .with_context(|| format!("{method}: no reply within {COMMAND:?}"))?
            .with_context(|| format!("{method}: the DevTools connection closed"))?;
        if let Some(e) = reply.get("error") {
            bail!("{method}: {e}");
        }
        Ok(reply["result"].clone())
    }
}

/// A running headless Chromium and its DevTools connection.
#[derive(Debug)]
pub struct Browser {
    group: Group,
    dir: PathBuf,
    conn: Conn,
}

impl Browser {
    /// Starts Chromium with a fresh profile under `dir` and connects to its DevTools endpoint
    /// within `deadline` (Chromium's stderr goes to `dir/chromium.log`).
    pub async fn launch(dir: &Path, deadline: Duration) -> anyhow::Result<Browser> {
        let profile = dir.join("profile");
        std::fs::create_dir_all(&profile)?;
        let log = dir.join("chromium.log");
        let child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                // A page in the background must keep its timers and rendering going.
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
                "--window-size=1280,900",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(
                dir.join("chromium.out"),
            )?))
            .stderr(Stdio::from(std::fs::File::create(&log)?))
            .process_group(0)
            .spawn()
            .context("spawn chromium")?;
        let mut group = Group { child };

        // `DevToolsActivePort` holds the port, then the browser target's path.
        let port_file = profile.join("DevToolsActivePort");
        let until = Instant::now() + deadline;
        let url = loop {
            if let Ok(s) = std::fs::read_to_string(&port_file)
                && let [port, path] = s.lines().collect::<Vec<_>>()[..]
            {
                break format!("ws://127.0.0.1:{port}{path}");
            }
            if let Some(st) = group.child.try_wait()? {
                bail!(
                    "chromium exited with {st} before DevTools listened:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() > until {
                bail!(
                    "chromium wrote no {} within {deadline:?}:\n{}",
                    port_file.display(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let conn = Conn::open(&url).await?;
        Ok(Browser {
            group,
            dir: dir.to_path_buf(),
            conn,
        })
    }

    /// A new tab of `width` × `height` CSS pixels, with page, runtime and log events on.
    pub async fn new_page(&self, width: u32, height: u32) -> anyhow::Result<Page> {
        let t = self
            .conn
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let target = t["targetId"].as_str().context("targetId")?.to_string();
        let a = self
            .conn
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await?;
        let page = Page {
            conn: self.conn.clone(),
            session: a["sessionId"].as_str().context("sessionId")?.to_string(),
        };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            page.call(domain, json!({})).await?;
        }
        page.viewport(width, height, false).await?;
        Ok(page)
    }

    /// Uncaught exceptions thrown in any page so far.
    pub fn exceptions(&self) -> Vec<String> {
        self.conn.exceptions.lock().unwrap().clone()
    }

    /// `console.error` calls and error-level log entries (failed loads, CSP refusals) so far.
    pub fn console_errors(&self) -> Vec<String> {
        self.conn.console_errors.lock().unwrap().clone()
    }

    /// The tail of Chromium's own log, for failure messages.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(self.dir.join("chromium.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stops Chromium (every process of its group) and deletes its profile (a few MB); the log
    /// stays in the scratch directory.
    pub fn close(mut self) {
        self.group.kill();
        let _ = std::fs::remove_dir_all(self.dir.join("profile"));
    }
}

/// One tab, addressed through its flattened DevTools session.
#[derive(Debug, Clone)]
pub struct Page {
    conn: Conn,
    session: String,
}

/// A JavaScript string literal holding `s`.
pub fn js_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

impl Page {
    /// One DevTools command on this tab.
    pub async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.conn.call(Some(&self.session), method, params).await
    }

    /// Evaluates `expr` in the page (promises awaited) and returns its value as JSON.
    pub async fn eval(&self, expr: &str) -> anyhow::Result<Value> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            bail!(
                "{expr}\nthrew {}",
                ex["exception"]["description"]
                    .as_str()
                    .map_or_else(|| ex.to_string(), str::to_string)
            );
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `expr` until it gives something other than null, undefined or false, and returns
    /// that; panics naming `what` (with the last value or error) after `deadline`.
    pub async fn wait(&self, what: &str, deadline: Duration, expr: &str) -> Value {
        let until = Instant::now() + deadline;
        loop {
            let last = match self.eval(expr).await {
                Ok(Value::Null | Value::Bool(false)) => "null/false".to_string(),
                Ok(v) => return v,
                Err(e) => format!("error: {e:#}"),
            };
            if Instant::now() > until {
                let text = self
                    .eval("document.body ? document.body.innerText.slice(0, 4000) : ''")
                    .await
                    .map(|v| v.as_str().unwrap_or_default().to_string())
                    .unwrap_or_default();
                panic!(
                    "the page never showed {what} within {deadline:?} (last: {last})\n\
                     script exceptions: {:?}\nconsole errors: {:?}\npage text:\n{text}",
                    self.conn.exceptions.lock().unwrap(),
                    self.conn.console_errors.lock().unwrap()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Loads `url` and waits (within `deadline`) until the document and its scripts are loaded.
    pub async fn navigate(&self, url: &str, deadline: Duration) -> anyhow::Result<()> {
        // Marks the current document, so loading the same URL again is not mistaken for done.
        self.eval("window.__leaving = true").await?;
        let r = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(e) = r.get("errorText") {
            bail!("navigate to {url}: {e}");
        }
        self.wait(
            &format!("{url} loaded"),
            deadline,
            &format!(
                "!window.__leaving && document.readyState === 'complete' && location.href === {}",
                js_str(url)
            ),
        )
        .await;
        Ok(())
    }

    /// Scrolls the first element matching `selector` into view and clicks its centre with the
    /// mouse, as a person would; fails when there is none or it takes no space.
    pub async fn click(&self, selector: &str) -> anyhow::Result<()> {
        let at = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({}); if (!e) return null; \
                 e.scrollIntoView({{block: 'center', inline: 'nearest'}}); \
                 const b = e.getBoundingClientRect(); \
                 return b.width > 0 && b.height > 0 ? [b.x + b.width / 2, b.y + b.height / 2] : null; }})()",
                js_str(selector)
            ))
            .await?;
        let (Some(x), Some(y)) = (at[0].as_f64(), at[1].as_f64()) else {
            bail!("nothing visible to click at {selector}");
        };
        for (kind, buttons) in [("mouseMoved", 0), ("mousePressed", 1), ("mouseReleased", 0)] {
            let mut p = json!({"type": kind, "x": x, "y": y, "buttons": buttons});
            if kind != "mouseMoved" {
                p["button"] = json!("left");
                p["clickCount"] = json!(1);
            }
            self.call("Input.dispatchMouseEvent", p).await?;
        }
        Ok(())
    }

    /// Focuses the field at `selector`, selects what it holds and types `text` over it.
    pub async fn type_into(&self, selector: &str, text: &str) -> anyhow::Result<()> {
        let ok = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({}); if (!e) return false; \
                 e.focus(); if (e.select) e.select(); return document.activeElement === e; }})()",
                js_str(selector)
            ))
            .await?;
        if ok != Value::Bool(true) {
            bail!("cannot focus {selector}");
        }
        self.call("Input.insertText", json!({"text": text})).await?;
        Ok(())
    }

    /// Chooses `value` in the `<select>` at `selector` the way its keyboard/mouse UI would end:
    /// the value changes and `input` and `change` fire.
    pub async fn choose(&self, selector: &str, value: &str) -> anyhow::Result<()> {
        let ok = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({}); \
                 if (!e || ![...e.options].some(o => o.value === {v})) return false; \
                 e.focus(); e.value = {v}; \
                 e.dispatchEvent(new Event('input', {{bubbles: true}})); \
                 e.dispatchEvent(new Event('change', {{bubbles: true}})); return true; }})()",
                js_str(selector),
                v = js_str(value)
            ))
            .await?;
        if ok != Value::Bool(true) {
            bail!("{selector} has no option {value}");
        }
        Ok(())
    }

    /// Presses and releases one key (`Tab`, `Enter`, `Escape`, …) on the focused element.
    pub async fn press(&self, key: &str) -> anyhow::Result<()> {
        let code = match key {
            "Tab" => 9,
            "Enter" => 13,
            "Escape" => 27,
            " " => 32,
            _ => 0,
        };
        let mut down =
            json!({"type": "keyDown", "key": key, "code": key, "windowsVirtualKeyCode": code});
        if key == "Enter" {
            down["text"] = json!("\r");
        }
        self.call("Input.dispatchKeyEvent", down).await?;
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": "keyUp", "key": key, "code": key, "windowsVirtualKeyCode": code}),
        )
        .await?;
        Ok(())
    }

    /// Emulates a viewport of `width` × `height` CSS pixels (`mobile`: a phone's meta-viewport
    /// handling and touch-sized layout).
    pub async fn viewport(&self, width: u32, height: u32, mobile: bool) -> anyhow::Result<()> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await?;
        Ok(())
    }

    /// Saves a PNG of the whole page (`full_page`, beyond the viewport) or of what the viewport
    /// shows to `path`; returns its size in bytes.
    pub async fn screenshot(&self, path: &Path, full_page: bool) -> anyhow::Result<usize> {
        let params = if full_page {
            let m = self.call("Page.getLayoutMetrics", json!({})).await?;
            let size = &m["cssContentSize"];
            let (w, h) = (
                size["width"].as_f64().unwrap_or(1280.0).ceil(),
                size["height"].as_f64().unwrap_or(900.0).ceil(),
            );
            json!({"format": "png", "captureBeyondViewport": true,
                   "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}})
        } else {
            json!({"format": "png"})
        };
        let shot = self.call("Page.captureScreenshot", params).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().context("screenshot data")?)
            .context("screenshot base64")?;
        std::fs::write(path, &png).with_context(|| format!("write {}", path.display()))?;
        Ok(png.len())
    }
}
