//! A network namespace of one test's own, linked to the host by a veth pair, for partition
//! drills (root only, like `ip netns`). A process started in it reaches host services only
//! through forwarders this module runs on the host side of the link, on two addresses: one for
//! everything ([`NetNs::services_ip`]) and one that [`NetNs::cut`] can blackhole from inside the
//! namespace ([`NetNs::cuttable_ip`]). A blackhole is a real partition: packets of established
//! connections vanish (the peer sees silence, not a reset) and new connections fail. Dropping
//! it deletes the namespace (and with it the link) and stops the forwarders.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Debug)]
pub struct NetNs {
    pub name: String,
    host_if: String,
    subnet: u8,
    forwards: Vec<JoinHandle<()>>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` (iproute2): {e}"));
    assert!(
        out.status.success(),
        "ip {}: {} (partition drills need root and iproute2)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// Creates the namespace `pf<pid>` with loopback up and a veth link `10.77.N.0/24` (host
    /// side `.1` and `.3`, namespace side `.2`).
    pub fn create() -> Self {
        let pid = std::process::id();
        let name = format!("pf{pid}");
        let host_if = format!("pfh{}", pid % 100_000);
        let ns_if = format!("pfn{}", pid % 100_000);
        let subnet = (pid % 200) as u8 + 20;
        let me = Self {
            name: name.clone(),
            host_if: host_if.clone(),
            subnet,
            forwards: Vec::new(),
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        for a in [me.services_ip(), me.cuttable_ip()] {
            ip(&["addr", "add", &format!("{a}/24"), "dev", &host_if]);
        }
        ip(&["link", "set", &host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{}/24", me.ns_ip()), "dev", &ns_if]);
        inside(&["link", "set", &ns_if, "up"]);
        inside(&["link", "set", "lo", "up"]);
        me
    }

    pub fn services_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 1)
    }
    pub fn cuttable_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 3)
    }
    /// The namespace's own address (bind a server here to reach it from the host).
    pub fn ns_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 2)
    }

    /// Forwards TCP from `via:<free port>` (a host-side address) to `target`; returns the
    /// address to give the process in the namespace.
    pub async fn forward(&mut self, via: Ipv4Addr, target: SocketAddr) -> SocketAddr {
        let l = TcpListener::bind((via, 0)).await.expect("bind a forwarder");
        let addr = l.local_addr().unwrap();
        self.forwards.push(tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        }));
        addr
    }

    /// `url` with its `host:port` replaced by a forwarder on `via` to the same target.
    pub async fn forward_url(&mut self, via: Ipv4Addr, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
        let (auth_host, tail) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (auth, host) = match auth_host.rsplit_once('@') {
            Some((a, h)) => (format!("{a}@"), h),
            None => (String::new(), auth_host),
        };
        let target: SocketAddr = tokio::net::lookup_host(host)
            .await
            .unwrap_or_else(|e| panic!("resolve {host}: {e}"))
            .next()
            .expect("an address");
        let fwd = self.forward(via, target).await;
        format!("{scheme}://{auth}{fwd}{tail}")
    }

    /// Arguments that run `binary` inside the namespace through `ip netns exec` (which execs, so
    /// the child's PID is the binary's own).
    pub fn exec_args(&self, binary: &Path) -> Vec<OsString> {
        vec![
            "netns".into(),
            "exec".into(),
            self.name.clone().into(),
            binary.into(),
        ]
    }

    /// Partitions the namespace from [`Self::cuttable_ip`].
    pub fn cut(&self) {
        let dst = format!("{}/32", self.cuttable_ip());
        ip(&[
            "netns",
            "exec",
            &self.name,
            "ip",
            "route",
            "add",
            "blackhole",
            &dst,
        ]);
    }

    /// Ends the partition.
    pub fn heal(&self) {
        let dst = format!("{}/32", self.cuttable_ip());
        ip(&[
            "netns",
            "exec",
            &self.name,
            "ip",
            "route",
            "del",
            "blackhole",
            &dst,
        ]);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for f in &self.forwards {
            f.abort();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(std::process::Stdio::null())
            .status();
    }
}
