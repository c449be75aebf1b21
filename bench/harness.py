"""The benchmark's harness: the processes it starts (each in its own group, stopped at the end,
also on failure, Ctrl-C or SIGTERM; on Linux each also dies with the script), the upstream, the
test certificates, one Envoy per variant started from the bootstrap `bench-bootstrap` builds
from the shipped manifests, the HTTP client, and the check every variant passes before it is
measured."""

import ctypes
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

from variants import REQUEST_PATH, REWRITTEN_PATH

# The same visible work as the filter's headers and rewrite, in Envoy's Lua filter.
LUA = Path(__file__).resolve().parent / "lua" / "faas_mesh.lua"


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

    def run(self, args, timeout, env=None):
        """Runs a command to its end (in its own group, stopped if anything goes wrong)."""
        proc = self.start(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env)
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


def bootstrap_environment(variant):
    """bench-bootstrap's environment: the harness's build switch (integration/src/
    filter_build.rs) names the build whose filter goes in the manifest's place."""
    env = dict(os.environ)
    env["FAAS_MESH_BUILD"] = variant.build if variant.filter == "shipped" else "wasm"
    return env


def envoy_environment(variant, workdir):
    """Envoy's environment: the native build reads its pod (the function's labels) from the
    folder bench-bootstrap wrote beside the bootstrap (`pod-info`), as a sidecar reads Istio's
    downward-API files; nothing else may leak in (POD_NAMESPACE)."""
    env = dict(os.environ)
    env.pop("POD_NAMESPACE", None)
    if variant.filter == "shipped" and variant.build == "native":
        env["FAAS_MESH_POD_INFO_DIR"] = str(workdir / "pod-info")
    return env


class Envoy:
    """One Envoy (optionally under callgrind) with the variant's bootstrap; ports are Envoy's own
    choice (admin and listener port 0), read back from the admin API. With the shipped filter,
    it is ready once Envoy accepted or refused the plugin configuration (ECDS, as in a sidecar)."""

    def __init__(self, procs, args, variant, upstream_port, workdir, concurrency=1,
                 valgrind=False):
        self.procs = procs
        self.workdir = Path(tempfile.mkdtemp(prefix=f"envoy-{variant.name}-", dir=workdir))
        config = self.write_bootstrap(args, variant, upstream_port, workdir)
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
        self.proc = procs.start(cmd, stdout=subprocess.DEVNULL, stderr=self.stderr,
                                env=envoy_environment(variant, self.workdir))
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
            if variant.filter == "shipped":
                self.wait_for_plugin_config(deadline)
        except BaseException:
            self.stop()
            raise

    def write_bootstrap(self, args, variant, upstream_port, pki):
        """The variant's bootstrap, from `bench-bootstrap` (and the ECDS document it names)."""
        cmd = [str(args.bootstrap), "--upstream-port", str(upstream_port),
               "--ecds", str(self.workdir / "extension-config.json")]
        if variant.filter == "shipped":
            module = (args.native if variant.build == "native"
                      else args.noop if variant.wasm == "noop" else args.filter)
            cmd += ["--filter", "shipped", "--module", str(module)]
            if variant.config is not None:
                path = self.workdir / "plugin-config.json"
                path.write_text(variant.config if isinstance(variant.config, str)
                                else json.dumps(variant.config))
                cmd += ["--config-file", str(path)]
        elif variant.filter == "lua":
            cmd += ["--filter", f"lua={LUA}"]
        else:
            cmd += ["--filter", "none"]
        if variant.route:
            path = self.workdir / "route.json"
            path.write_text(json.dumps(variant.route))
            cmd += ["--route-file", str(path)]
        if variant.tls:
            cmd += ["--tls", ",".join(str(pki / f) for f in ("server.pem", "server.key", "ca.pem"))]
        config = self.workdir / "bootstrap.yaml"
        config.write_text(self.procs.run(cmd, timeout=60, env=bootstrap_environment(variant)))
        return config

    def wait_for_plugin_config(self, deadline):
        """Until Envoy's ECDS counters show the plugin configuration accepted; a refusal fails
        the variant with the filter's own words from the log."""
        while True:
            if self.proc.poll() is not None:
                self.fail(f"Envoy exited ({self.proc.returncode}) during start-up")
            counters = {}
            for line in self.admin("/stats?filter=extension_config_discovery").splitlines():
                name, _, value = line.partition(": ")
                counter = name.rsplit(".", 1)[-1]
                if (name.startswith("extension_config_discovery.http_filter.")
                        and counter in ("update_success", "update_rejected")):
                    counters[counter] = int(value)
            if counters.get("update_rejected"):
                # Envoy keeps running and writes its log out every 10 s (its default): wait for
                # the filter's refusal to reach the file.
                until = time.time() + 15
                while refusal_in(self.log_text()) is None and time.time() < until:
                    time.sleep(0.2)
                self.fail("Envoy refused the plugin configuration")
            if counters.get("update_success"):
                return
            if time.time() > deadline:
                self.fail("Envoy neither accepted nor refused the plugin configuration in time")
            time.sleep(0.2)

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
    if variant.check == "route-rules":
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
    # A configuration where the filter owns the trace shows it ran: the upstream gets the
    # filter's W3C and B3 context (the default configuration, owner "envoy", writes none here).
    tracing = variant.config.get("tracing", {}) if isinstance(variant.config, dict) else {}
    if tracing.get("owner") == "filter":
        if tracing.get("w3c") and not got.get("traceparent"):
            bad("the plugin configuration has the filter's own W3C trace; no traceparent came")
        if tracing.get("b3") and not (got.get("x-b3-traceid") or got.get("b3")):
            bad("the plugin configuration has the filter's own B3 trace; no B3 context came")

