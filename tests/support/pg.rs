//! A Postgres server of one test's own, for drills that stop and restart it (the shared test
//! server must stay up for every other test): `initdb` + `pg_ctl` from Debian's
//! `/usr/lib/postgresql/<newest>/bin`, run as the `postgres` user when the tests run as root,
//! on a free loopback port, fsync off. Dropping it stops the server.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::scratch_dir;

#[derive(Debug)]
pub struct PrivatePostgres {
    pub port: u16,
    bin: PathBuf,
    dir: PathBuf,
    owner: Option<&'static str>,
    running: bool,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PrivatePostgres {
    /// Creates the cluster and starts it, with an empty database `pricefeed` owned by the
    /// `pricefeed` role.
    pub fn start() -> Self {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("Postgres is not installed (./dev test installs it)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|d| d.join("initdb").exists())
            .collect();
        dirs.sort();
        let bin = dirs.pop().expect("no /usr/lib/postgresql/*/bin/initdb");
        let owner = is_root().then_some("postgres");
        let dir = scratch_dir("pg");
        std::fs::create_dir_all(dir.join("sock")).unwrap();
        if let Some(u) = owner {
            Command::new("chmod").arg("755").arg(&dir).status().unwrap();
            Command::new("chown")
                .arg("-R")
                .arg(u)
                .arg(&dir)
                .status()
                .unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut pg = Self {
            port,
            bin,
            dir,
            owner,
            running: false,
        };
        let out = pg
            .cmd("initdb")
            .arg("-D")
            .arg(pg.dir.join("data"))
            .args(["-A", "trust", "-U", "pricefeed", "-E", "UTF8", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.resume();
        let out = pg
            .cmd("createdb")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "pricefeed",
            ])
            .arg("pricefeed")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "createdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://pricefeed@127.0.0.1:{}/pricefeed", self.port)
    }

    fn cmd(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        match self.owner {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(u).arg("--").arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    pub fn resume(&mut self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.join("sock").display()
        );
        let out = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .args(["-w", "-t", "60", "-o", &opts, "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = true;
    }

    /// Stops the server at once (`-m immediate`: like a crash, clients see their connections
    /// reset).
    pub fn stop(&mut self) {
        if self.running {
            let _ = self
                .cmd("pg_ctl")
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            self.running = false;
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
