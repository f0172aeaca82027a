"""
The peer kvd is measured beside: a three-member etcd cluster (Debian's
``etcd-server``, its defaults: fsync on) on loopback, driven through its
HTTP/JSON gateway by ``wrk`` (a C load generator) with a Lua script that puts
100-byte values under random keys among 100,000 (or reads them, linearizably,
etcd's default, or serializably: the member's own state, as kvd's READONLY),
as issue 14's table measured it.

Each member is started by PID and killed at the end; every wait is bounded.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from typing import List, Optional

PUT_LUA = r"""
math.randomseed(os.time())
local value = string.rep("x", 100)
local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64(data)
  return ((data:gsub(".", function(x)
    local r, b = "", x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return b64chars:sub(c + 1, c + 1)
  end) .. ({"", "==", "="})[#data % 3 + 1])
end
local b64value = b64(value)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local key = b64("key:" .. math.random(0, 99999))
  local path = "/v3/kv/%s"
  local body
  if MODE == "range" or MODE == "range-serializable" then
    local serializable = MODE == "range-serializable" and ',"serializable":true' or ""
    body = '{"key":"' .. key .. '"' .. serializable .. '}'
    path = string.format(path, "range")
  else
    body = '{"key":"' .. key .. '","value":"' .. b64value .. '"}'
    path = string.format(path, "put")
  end
  return wrk.format(nil, path, nil, body)
end
"""


@dataclass
class WrkResult:
    ops_per_s: float
    p50_ms: Optional[float]
    p99_ms: Optional[float]
    errors: int


def tools_problem() -> Optional[str]:
    missing = [name for name in ("etcd", "wrk") if shutil.which(name) is None]
    if missing:
        return "needs %s: apt-get install -y %s" % (" and ".join(missing),
                                                     " ".join({"etcd": "etcd-server", "wrk": "wrk"}[m] for m in missing))
    return None


def free_port(host: str) -> int:
    """A TCP port nothing listens on at ``host`` now (the kernel's pick)."""
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


class EtcdCluster:
    def __init__(self, run_dir: str, host: str = "127.0.0.1"):
        self.dir = run_dir
        self.host = host
        self.members = []
        for i in range(3):
            self.members.append({"name": "e%d" % i, "client": free_port(host), "peer": free_port(host)})
        self.procs: List[subprocess.Popen] = []

    def start(self, timeout_s: float = 60.0) -> None:
        initial = ",".join("%s=http://%s:%d" % (m["name"], self.host, m["peer"]) for m in self.members)
        for m in self.members:
            data = os.path.join(self.dir, m["name"])
            os.makedirs(data, exist_ok=True)
            argv = ["etcd", "--name", m["name"], "--data-dir", data,
                    "--listen-client-urls", "http://%s:%d" % (self.host, m["client"]),
                    "--advertise-client-urls", "http://%s:%d" % (self.host, m["client"]),
                    "--listen-peer-urls", "http://%s:%d" % (self.host, m["peer"]),
                    "--initial-advertise-peer-urls", "http://%s:%d" % (self.host, m["peer"]),
                    "--initial-cluster", initial, "--initial-cluster-state", "new",
                    "--initial-cluster-token", "kvd-bench", "--log-level", "error"]
            log = open(os.path.join(self.dir, m["name"] + ".log"), "ab")
            self.procs.append(subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                               start_new_session=True))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.leader_url() is not None:
                return
            time.sleep(0.2)
        raise RuntimeError("etcd did not elect a leader within %gs (logs in %s)" % (timeout_s, self.dir))

    def url(self, member) -> str:
        return "http://%s:%d" % (self.host, member["client"])

    def _status(self, member) -> Optional[dict]:
        try:
            req = urllib.request.Request(self.url(member) + "/v3/maintenance/status", data=b"{}", method="POST")
            with urllib.request.urlopen(req, timeout=1.0) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None

    def leader_url(self) -> Optional[str]:
        for m in self.members:
            st = self._status(m)
            if st and st.get("leader") and st.get("header", {}).get("member_id") == st.get("leader"):
                return self.url(m)
        return None

    def follower_url(self) -> Optional[str]:
        leader = self.leader_url()
        for m in self.members:
            if self.url(m) != leader:
                return self.url(m)
        return None

    def pids(self) -> List[int]:
        return [p.pid for p in self.procs]

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass


_RPS = re.compile(r"Requests/sec:\s+([0-9.]+)")
_PCT = re.compile(r"^\s+(50|99)%\s+([0-9.]+)(us|ms|s)\s*$", re.M)
_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKERR = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


#: What the Lua script sends: a put, a linearizable range, or a serializable one (``"serializable": true``).
MODES = ("put", "range", "range-serializable")


def wrk(url: str, connections: int, seconds: int, mode: str, run_dir: str) -> WrkResult:
    if mode not in MODES:
        raise ValueError("etcd load mode %r is not one of %s" % (mode, ", ".join(MODES)))
    script = os.path.join(run_dir, "etcd-%s.lua" % mode)
    with open(script, "w") as f:
        f.write('MODE = "%s"\n' % mode + PUT_LUA)
    argv = ["wrk", "-t", "1" if connections < 2 else "2", "-c", str(connections), "-d", "%ds" % seconds,
            "--latency", "-s", script, url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    return parse_wrk(done.stdout)


def parse_wrk(text: str) -> WrkResult:
    rps = _RPS.search(text)
    if rps is None:
        raise RuntimeError("cannot read wrk's report: %r" % text[-400:])
    pcts = {}
    for p, value, unit in _PCT.findall(text):
        pcts[p] = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = 0
    m = _NON2XX.search(text)
    if m:
        errors += int(m.group(1))
    m = _SOCKERR.search(text)
    if m:
        errors += sum(int(x) for x in m.groups())
    return WrkResult(float(rps.group(1)), pcts.get("50"), pcts.get("99"), errors)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
