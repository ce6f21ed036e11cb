#!/usr/bin/env python3
"""The checks of `./dev compose-check`, against a compose project that scripts/compose_check.sh
brought up (it also tears it down). Standard library only: it runs with the python3 that
docker-compose brings.

In order, each with a deadline (no fixed sleeps):
 1. every container of the project is up: health checks healthy, the migration job exited 0;
 2. through the load balancer: /readyz answers 200, and every node container answers
    (/api/v1/cluster/ingest names the node that served it; node ids start with the container's
    hostname);
 3. /api/v1/cluster shows the three nodes alive, each with a slice, nothing unassigned, a leader;
 4. prices flow: the BTCUSDT trade id advances;
 5. Prometheus scrapes the three nodes, the scheduler and the worker (`up == 1`);
 6. register -> token -> an alert that fires on the next trade -> its email is in the mail sink,
    and the notifications API shows the delivery `sent`;
 7. `docker kill` a node: /api/v1/cluster shows it dead with no slice, the two others owning
    every instrument under a newer epoch (time measured from the kill), an instrument of the
    killed node's slice gets new trades again, and /readyz through the load balancer still
    answers 200.
Prints a figure per step; exits 1 with the reason on the first failure.

Environment: PF_PROJECT (compose project name), PF_LB, PF_MAIL, PF_PROM (base URLs on
loopback), PF_DOCKER (docker CLI), PF_NODES (expected node replicas, 3).
"""
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from decimal import Decimal

PROJECT = os.environ["PF_PROJECT"]
LB = os.environ["PF_LB"].rstrip("/")
MAIL = os.environ["PF_MAIL"].rstrip("/")
PROM = os.environ["PF_PROM"].rstrip("/")
DOCKER = os.environ.get("PF_DOCKER", "docker")
NODES = int(os.environ.get("PF_NODES", "3"))
T0 = time.monotonic()
figures = []


def log(msg):
    print(f"   [{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def fail(msg):
    print(f"\033[1;31mcompose check FAILED:\033[0m {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def figure(name, value):
    figures.append((name, value))
    log(f"{name}: {value}")


def http(method, url, body=None, token=None, timeout=5.0):
    """(status, parsed JSON or text); status 0 when the request did not complete."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def get(path, base=None, timeout=5.0):
    return http("GET", (base or LB) + path, timeout=timeout)


def wait_for(what, secs, probe, interval=0.25):
    """Calls probe() until it returns something truthy; fails with its last word after `secs`."""
    deadline = time.monotonic() + secs
    last = None
    while True:
        ok, last = probe()
        if ok:
            return last
        if time.monotonic() >= deadline:
            fail(f"{what}: not within {secs}s; last seen: {str(last)[:800]}")
        time.sleep(interval)


def docker(*args):
    r = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        fail(f"docker {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def containers():
    ids = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}").split()
    if not ids:
        return []
    return json.loads(docker("inspect", *ids))


def service(c):
    return c["Config"]["Labels"].get("com.docker.compose.service", "?")


# 1. Containers.
def all_up():
    cs = containers()
    bad = []
    for c in cs:
        st = c["State"]
        if service(c) == "migrate":
            if st["Status"] != "exited" or st["ExitCode"] != 0:
                bad.append(f"migrate {st['Status']} exit {st['ExitCode']}")
        elif st["Status"] != "running":
            bad.append(f"{c['Name']} {st['Status']} exit {st['ExitCode']}")
        elif "Health" in st and st["Health"]["Status"] != "healthy":
            bad.append(f"{c['Name']} {st['Health']['Status']}")
    nodes = [c for c in cs if service(c) == "node"]
    if len(nodes) != NODES:
        bad.append(f"{len(nodes)} node containers, want {NODES}")
    return not bad, (cs if not bad else bad)


cs = wait_for("every container running and healthy", 180, all_up, interval=1.0)
by_service = {}
for c in cs:
    by_service.setdefault(service(c), []).append(c)
figure("containers", ", ".join(f"{s}×{len(v)}" if len(v) > 1 else s for s, v in sorted(by_service.items())))
node_host = {c["Config"]["Hostname"]: c for c in by_service["node"]}


# 2. Every node through the load balancer.
wait_for("/readyz through the load balancer", 60, lambda: (lambda r: (r[0] == 200, r))(get("/readyz")))
seen = {}


def every_node_answers():
    st, v = get("/api/v1/cluster/ingest")
    if st == 200:
        host = v["node_id"].rsplit("-", 1)[0]
        if host not in node_host:
            fail(f"load balancer reached node {v['node_id']}, not a container of this project")
        seen[host] = v["node_id"]
    return len(seen) == NODES, {"seen": sorted(seen.values()), "last": (st, str(v)[:200])}


wait_for("every node answering through the load balancer", 30, every_node_answers, interval=0.05)
ready = [get("/readyz")[0] for _ in range(6 * NODES)]
if any(s != 200 for s in ready):
    fail(f"/readyz through the load balancer: {ready}")
figure("nodes answering through the load balancer", f"{len(seen)} ({', '.join(sorted(seen.values()))}); /readyz 200 on {len(ready)}/{len(ready)}")


# 3. The cluster view.
def cluster_converged():
    st, v = get("/api/v1/cluster")
    if st != 200:
        return False, (st, v)
    alive = [n for n in v["nodes"] if n["alive"]]
    ok = (
        len(alive) == NODES
        and all(n["slice_size"] > 0 for n in alive)
        and v["unassigned"] == 0
        and v["instruments"] > 0
        and "leader" in v
    )
    return ok, v


view = wait_for("/api/v1/cluster: 3 nodes alive with slices, nothing unassigned", 90, cluster_converged)
epoch0 = view["epoch"]
slices0 = {n["node_id"]: n["slice_size"] for n in view["nodes"] if n["alive"]}
figure("cluster", f"epoch {epoch0}, {view['instruments']} instruments, slices {slices0}, leader {view['leader']['holder']}")


# 4. Prices flow.
def price_of(symbol, market=None):
    q = f"?market={market}" if market else ""
    st, v = get(f"/api/v1/prices/{symbol}{q}")
    return v if st == 200 and isinstance(v, dict) and "trade_id" in v else None


p0 = wait_for("a BTCUSDT price", 60, lambda: (price_of("BTCUSDT") is not None, price_of("BTCUSDT")))
t_price = time.monotonic()
p1 = wait_for(
    "the BTCUSDT trade id advancing",
    30,
    lambda: ((lambda p: (p is not None and p["trade_id"] > p0["trade_id"], p))(price_of("BTCUSDT"))),
    interval=0.1,
)
figure("prices flowing", f"BTCUSDT {p0['price']} (trade {p0['trade_id']}) -> {p1['price']} (trade {p1['trade_id']}) in {time.monotonic() - t_price:.2f}s")


# 5. Prometheus scrapes every pricefeed target.
def scraped():
    st, v = get("/api/v1/query?query=up", base=PROM)
    if st != 200:
        return False, (st, v)
    up = {}
    for r in v["data"]["result"]:
        job = r["metric"].get("job", "?")
        up.setdefault(job, []).append(r["value"][1])
    ok = (
        up.get("pricefeed-node", []).count("1") == NODES
        and up.get("pricefeed-scheduler") == ["1"]
        and up.get("pricefeed-worker") == ["1"]
    )
    return ok, up


up = wait_for("Prometheus: every node, the scheduler and the worker up", 90, scraped, interval=1.0)
figure("prometheus targets up", ", ".join(f"{j} {v.count('1')}/{len(v)}" for j, v in sorted(up.items())))


# 6. Register -> alert -> mail in the sink.
email = f"compose-check-{int(time.time())}@example.com"
creds = {"email": email, "password": "correct horse battery staple"}
st, v = http("POST", LB + "/api/v1/auth/register", creds)
if st != 201:
    fail(f"register: {st} {v}")
st, v = http("POST", LB + "/api/v1/auth/token", creds)
if st != 200 or "access_token" not in v:
    fail(f"token: {st} {v}")
token = v["access_token"]
price = Decimal(price_of("BTCUSDT")["price"])
threshold = str((price / 2).quantize(Decimal("0.01")))
alert = {"symbol": "BTCUSDT", "condition": "above", "threshold": threshold, "channels": ["email"], "note": "compose check"}
st, v = http("POST", LB + "/api/v1/alerts", alert, token=token)
if st != 201:
    fail(f"create alert: {st} {v}")
alert_id = v["id"]
t_alert = time.monotonic()


def mail_arrived():
    st, v = get("/email", base=MAIL)
    if st != 200 or not isinstance(v, list):
        return False, (st, v)
    mine = [m for m in v if any(t.get("address") == email for t in m.get("to", []))]
    return bool(mine), (mine[0] if mine else f"{len(v)} mails, none to {email}")


mail = wait_for(f"the alert email to {email} in the mail sink", 60, mail_arrived, interval=0.25)
t_mail = time.monotonic() - t_alert


def delivery_sent():
    st, v = http("GET", f"{LB}/api/v1/alerts/{alert_id}/notifications", token=token)
    if st != 200 or not v.get("items"):
        return False, (st, v)
    d = v["items"][0]["deliveries"]
    return any(x["channel"] == "email" and x["state"] == "sent" for x in d), v


wait_for("the notifications API showing the email sent", 30, delivery_sent)
figure("alert email", f"alert {alert_id} (BTCUSDT above {threshold}) -> mail \"{mail.get('subject')}\" in the sink {t_mail:.2f}s after creating the alert; delivery 'sent'")


# 7. Kill a node; its slice moves.
victim_host = sorted(node_host)[0]
victim_id = seen[victim_host]
victim = node_host[victim_host]


def victim_instruments():
    st, v = get("/api/v1/cluster/ingest")
    if st == 200 and v["node_id"] == victim_id:
        live = [i["key"] for i in v["instruments"] if i["live"] and i["key"].startswith("spot:")]
        return bool(live), live
    return False, (st, str(v)[:200])


owned = wait_for(f"the spot instruments {victim_id} ingests", 30, victim_instruments, interval=0.05)
# The simulator trades some symbols rarely: follow the most recently traded of (a sample of) the
# victim's slice, so that "new trades after the kill" is a matter of seconds.
priced = [(sym, price_of(sym)) for sym in (k.split(":", 1)[1] for k in owned[:40])]
priced = [(sym, p) for sym, p in priced if p is not None]
if not priced:
    fail(f"none of {len(owned[:40])} spot instruments of {victim_id} has a price")
symbol, before = min(priced, key=lambda sp: sp[1].get("age_ms", 0))
log(f"killing node container {victim['Name'].lstrip('/')} ({victim_id}, slice {slices0[victim_id]}, owns {symbol}, last traded {before.get('age_ms')} ms ago)")
t_kill = time.monotonic()
docker("kill", victim["Id"])
lb_errors = 0


def slice_moved():
    global lb_errors
    st, v = get("/api/v1/cluster", timeout=5.0)
    if st != 200:
        lb_errors += 1
        return False, (st, v)
    nodes = {n["node_id"]: n for n in v["nodes"]}
    gone = victim_id not in nodes or (not nodes[victim_id]["alive"] and nodes[victim_id]["slice_size"] == 0)
    rest = [n for i, n in nodes.items() if i != victim_id and n["alive"]]
    ok = (
        gone
        and len(rest) == NODES - 1
        and v["unassigned"] == 0
        and sum(n["slice_size"] for n in rest) == v["instruments"]
        and v["epoch"] > epoch0
    )
    return ok, v


view = wait_for(f"{victim_id}'s slice moved to the other nodes", 30, slice_moved, interval=0.1)
t_moved = time.monotonic() - t_kill
slices1 = {n["node_id"]: n["slice_size"] for n in view["nodes"] if n["alive"]}
figure("node killed -> slice moved", f"{t_moved:.2f}s (epoch {epoch0} -> {view['epoch']}, slices {slices1}, {lb_errors} non-200 answers through the load balancer meanwhile)")
# `docker kill` counts as a manual stop, so `restart: unless-stopped` should leave it down (a
# restarted node would have shown above as a third alive node).
c = json.loads(docker("inspect", victim["Id"]))[0]
figure("killed container", f"{c['State']['Status']} (exit {c['State']['ExitCode']}, restarts {c['RestartCount']})")


def resumed():
    p = price_of(symbol)
    return (p is not None and p["trade_id"] > before["trade_id"]), p


after = wait_for(f"new {symbol} trades after the kill (it was in the killed node's slice)", 60, resumed, interval=0.1)
figure("prices of the moved slice", f"{symbol} trade {before['trade_id']} -> {after['trade_id']}, {time.monotonic() - t_kill:.2f}s after the kill")

t_ready = time.monotonic()
statuses = [get("/readyz")[0] for _ in range(4 * NODES)]
if any(s != 200 for s in statuses):
    fail(f"/readyz through the load balancer after the kill: {statuses}")
figure("/readyz through the load balancer after the kill", f"200 on {len(statuses)}/{len(statuses)} ({time.monotonic() - t_ready:.2f}s for all)")

print("\ncompose check figures:")
for name, value in figures:
    print(f"  {name}: {value}")
