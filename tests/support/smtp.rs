//! A real SMTP server for the email tests: `tests/smtp/sink.py` (aiosmtpd) run by the Python of
//! the venv `./dev test` builds (`PRICEFEED_TEST_PYTHON`), on a port chosen by the OS. Its
//! behaviour follows the recipient (`tempfail…@` 451 once per idempotency key, `reject…@` 550,
//! anything else 250) and every message it took is a JSON line of its log.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Proc;

/// The Python that has aiosmtpd (`PRICEFEED_TEST_PYTHON`, else `python3`).
pub fn python() -> PathBuf {
    std::env::var("PRICEFEED_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("python3"))
}

/// A running sink (stopped on drop like any [`Proc`]).
#[derive(Debug)]
pub struct SmtpSink {
    pub proc: Proc,
    pub port: u16,
    pub log: PathBuf,
}

impl SmtpSink {
    /// Starts the sink with `extra` arguments (e.g. `--reply-delay-ms 150`) and waits until it
    /// listens.
    pub async fn start(extra: &[&str]) -> SmtpSink {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp/sink.py");
        let mut log = PathBuf::new();
        let mut port_file = PathBuf::new();
        let proc = Proc::start_with("smtp-sink", &python(), extra, &[], |dir| {
            log = dir.join("mail.jsonl");
            port_file = dir.join("port");
            vec![
                script.into(),
                "--port-file".into(),
                port_file.clone().into(),
                "--log".into(),
                log.clone().into(),
            ]
        })
        .unwrap();
        let mut sink = SmtpSink { proc, port: 0, log };
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(s) = std::fs::read_to_string(&port_file)
                && let Ok(p) = s.trim().parse()
            {
                sink.port = p;
                return sink;
            }
            if let Ok(Some(st)) = sink.proc.child.try_wait() {
                panic!(
                    "SMTP sink exited with {st} (is aiosmtpd installed for {}? ./dev test sets \
                     PRICEFEED_TEST_PYTHON):\n{}",
                    python().display(),
                    sink.proc.log_tail()
                );
            }
            assert!(
                Instant::now() < until,
                "SMTP sink not up:\n{}",
                sink.proc.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every message the sink saw (accepted, duplicate or refused at DATA), in order.
    pub fn entries(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The entries of idempotency key `key`.
    pub fn of_key(&self, key: &str) -> Vec<Value> {
        self.entries()
            .into_iter()
            .filter(|e| e["key"] == key)
            .collect()
    }

    /// Environment for a worker sending to this sink.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        vec![
            ("PRICEFEED__EMAIL__HOST".into(), "127.0.0.1".into()),
            ("PRICEFEED__EMAIL__PORT".into(), self.port.to_string()),
            ("PRICEFEED__EMAIL__TLS".into(), "none".into()),
        ]
    }
}
