"""Shared fixtures of the third-party client checks: the built simulator binary on free ports.

`sim` starts `pricefeed-sim` (path from PRICEFEED_SIM_BIN, else target/{debug,release}) on port 0
with `--ports-file` and an empty config file, once per test module, and yields the ports file's
`{"spot": "127.0.0.1:P", ...}`. On teardown it sends SIGTERM and expects exit code 0.
"""

import json
import os
import signal
import subprocess
import tempfile
import time

import pytest


def wait(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def sim():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    binary = os.environ.get("PRICEFEED_SIM_BIN") or next(
        (p for p in (os.path.join(root, "target", d, "pricefeed-sim") for d in ("debug", "release"))
         if os.path.exists(p)),
        None,
    )
    if not binary:
        pytest.fail("set PRICEFEED_SIM_BIN to the built pricefeed-sim binary (cargo build -p pricefeed-exchange-sim)")
    tmp = tempfile.mkdtemp(prefix="pricefeed-sim-")
    ports_file = os.path.join(tmp, "ports.json")
    env = dict(os.environ)
    for key in ("spot", "futures", "options", "control"):
        env[f"PRICEFEED__SIM__{key.upper()}_BIND"] = "127.0.0.1:0"
    env.setdefault("PRICEFEED__SIM__UNDERLYINGS", "5")
    env.setdefault("PRICEFEED__SIM__HOT_RATE_PER_SEC", "300")
    # an empty config file keeps the test independent of the working directory
    cfg = os.path.join(tmp, "sim.toml")
    open(cfg, "w").close()
    # The log goes to a file: an unread pipe would fill up and block the simulator.
    log_path = os.path.join(tmp, "sim.log")
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [binary, "--config", cfg, "--ports-file", ports_file],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        def ready():
            if proc.poll() is not None:
                with open(log_path, errors="replace") as f:
                    raise AssertionError(f"simulator exited: {f.read()}")
            return os.path.exists(ports_file)
        wait(ready, 30, "ports file")
        with open(ports_file) as f:
            ports = json.load(f)
        yield ports
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
