#!/usr/bin/env python3
"""Checks docker/compose.yaml against the repository, beyond the compose JSON schema.

- every pricefeed service runs a binary the workspace builds (and the Dockerfile copies), with a
  subcommand that binary has;
- every PRICEFEED__* variable is a real configuration key (present in config/env.sample, which in
  turn must document every key of config/default.toml);
- health checks and broker URLs use the ports the services actually bind;
- the load balancer forwards to the port the nodes listen on;
- every image is a `${PRICEFEED_*_IMAGE:-default}` variable and every published port a
  `${PRICEFEED_*_PORT:-default}` one, so `./dev compose-check` can run this same file with
  stand-in images and loopback ports (checks below use the defaults).
Exits non-zero with one line per problem.
"""
import pathlib
import re
import sys
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
problems = []


def fail(msg):
    problems.append(msg)


compose = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
dockerfile = (ROOT / "docker/Dockerfile").read_text()

# Binaries the workspace builds.
bins = set()
for manifest in ROOT.glob("crates/*/Cargo.toml"):
    for b in tomllib.loads(manifest.read_text()).get("bin", []):
        bins.add(b["name"])
subcommands = {
    "pricefeed-node": {None, "serve", "migrate", "check-config"},
    "pricefeed-scheduler": {"scheduler", "worker", "migrate", "check-config"},
    "pricefeed-sim": {None},
}

# Configuration keys: flatten default.toml, compare with env.sample.
def flatten(d, prefix=()):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from flatten(v, prefix + (k,))
        else:
            yield prefix + (k,)

default_keys = {"PRICEFEED__" + "__".join(p).upper() for p in flatten(tomllib.loads((ROOT / "config/default.toml").read_text()))}
sample = (ROOT / "config/env.sample").read_text()
documented = set(re.findall(r"^#?\s*(PRICEFEED__[A-Z0-9_]+)=", sample, re.M))
for k in sorted(default_keys - documented):
    fail(f"config/env.sample does not document {k} (a key of config/default.toml)")

def env_of(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}

def port_of(addr):
    m = re.search(r":(\d+)$", addr)
    return int(m.group(1)) if m else None

VAR = re.compile(r"\$\{(\w+):-([^}]*)\}")


def default_of(value, kind):
    """The value with every `${NAME:-default}` replaced by its default; NAME must be PRICEFEED_*_KIND."""
    for m in VAR.finditer(value):
        if not (m.group(1).startswith("PRICEFEED_") and m.group(1).endswith("_" + kind)):
            fail(f"{value}: variable {m.group(1)} should be named PRICEFEED_*_{kind}")
    return VAR.sub(lambda m: m.group(2), value)


images = {}
for name, svc in compose["services"].items():
    image = svc.get("image", "")
    if not VAR.fullmatch(image):
        fail(f"service {name}: image {image!r} is not a ${{PRICEFEED_*_IMAGE:-default}} variable")
    images[name] = default_of(image, "IMAGE")
    for port in svc.get("ports", []):
        if not re.fullmatch(r"\$\{\w+:-\d+\}:\d+", str(port)):
            fail(f"service {name}: published port {port!r} is not \"${{PRICEFEED_*_PORT:-N}}:N\"")
        default_of(str(port), "PORT")

binds = {}
for name, svc in compose["services"].items():
    if images[name].startswith("pricefeed"):
        cmd = svc.get("command") or ["pricefeed-node"]
        binary, sub = cmd[0], (cmd[1] if len(cmd) > 1 else None)
        if binary not in bins:
            fail(f"service {name}: runs {binary}, which no crate builds (have {sorted(bins)})")
        elif sub not in subcommands.get(binary, {None}):
            fail(f"service {name}: {binary} has no subcommand {sub!r}")
        if binary not in dockerfile:
            fail(f"service {name}: docker/Dockerfile does not copy {binary}")
        env = env_of(svc)
        for k in env:
            if k.startswith("PRICEFEED__") and k not in documented:
                fail(f"service {name}: {k} is not a configuration key (not in config/env.sample)")
        binds[name] = {k: port_of(v) for k, v in env.items() if k.endswith("_BIND")}
        hc = " ".join((svc.get("healthcheck") or {}).get("test", []))
        m = re.search(r"127\.0\.0\.1:(\d+)/readyz", hc)
        if m and int(m.group(1)) not in binds[name].values():
            fail(f"service {name}: health check port {m.group(1)} is not one it binds ({binds[name]})")
        if not m and name != "migrate":
            fail(f"service {name}: no /readyz health check")

# Broker URLs must point at the simulator's bound ports.
sim_ports = set(binds.get("simulator", {}).values())
for name, svc in compose["services"].items():
    for k, v in env_of(svc).items():
        if k.startswith("PRICEFEED__BROKER__") and "simulator" in v:
            if port_of(v.split("//", 1)[1]) not in sim_ports:
                fail(f"service {name}: {k}={v} points at a port the simulator does not bind {sorted(sim_ports)}")

# Load balancer → node port.
nginx = (ROOT / "docker/nginx.conf").read_text()
m = re.search(r"server\s+node:(\d+)", nginx)
node_port = binds.get("node", {}).get("PRICEFEED__NODE__HTTP__BIND")
if not m or int(m.group(1)) != node_port:
    fail(f"docker/nginx.conf upstream does not match the node port {node_port}")
if compose["services"].get("node", {}).get("deploy", {}).get("replicas", 1) < 3:
    fail("service node: expected at least 3 replicas")

if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"compose consistency: ok ({len(compose['services'])} services, binaries {sorted(bins)})")
