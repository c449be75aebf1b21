"""The benchmark's measurements (bench/README.md, "Figures"): instructions per request under
callgrind, requests/s and latency with wrk, Envoy's memory; the smoke run; results.json, from
which `report` writes everything else."""

import http.client
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import report
from harness import Client, Envoy, VariantError, check, start_upstream
from variants import REQUEST_PATH

ROOT = Path(__file__).resolve().parent.parent
SMOKE_REQUESTS = 30


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
    for name in ("noop", "default", "native-default"):
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
            "native_bytes": args.native.stat().st_size,
            "minutes": round(elapsed / 60, 1)}
    data["targets"] = [{"target": t, "measured": m, "state": ok} for t, m, ok in report.targets(data)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    data = json.loads((args.out / "results.json").read_text())
    status = report.report(args.out, data, check=False)
    report.chart(args.out / "instructions.png", report.ordered(data["results"]),
                 report.ordered(data["memory"]), data["workers"], data["envoy"], data["machine"])
    print(report.render_results_md(data))
    return status

