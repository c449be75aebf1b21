#!/usr/bin/env python3
"""What faas-mesh-filter costs per request, its wasm and its native build side by side with plain
Envoy, a no-op Rust wasm filter, route rules and a Lua filter doing the same visible work, in one
run (bench/README.md).

    bench.py --envoy <envoy binary> --filter <faas_mesh_filter.wasm> --noop <noop_filter.wasm>
             --native <libfaas_mesh_filter_native.so> --upstream <stand-in-function binary> [--bootstrap <bench-bootstrap binary>]
             [--smoke] [--requests 2000] [--warmup 300] [--out bench/results] [--only name,name]
    bench.py --report-only [--check] [--out bench/results]

The command line only; the jobs live beside it: `variants.py` (what each variant runs and
checks), `harness.py` (processes, Envoy started from the bootstrap `bench-bootstrap` builds from
the shipped manifests, the client, the check), `measure.py` (callgrind, wrk, memory, the smoke
run, results.json) and `report.py` (results.json -> results.md, docs/performance.md's generated
blocks, the chart).

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
"""

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import report

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--envoy", help="the real Envoy binary (not a launcher)")
    ap.add_argument("--filter", type=Path, help="faas_mesh_filter.wasm")
    ap.add_argument("--noop", type=Path, help="noop_filter.wasm")
    ap.add_argument("--native", type=Path,
                    help="libfaas_mesh_filter_native.so (the native build, a dynamic module)")
    ap.add_argument("--upstream", help="the stand-in-function binary")
    ap.add_argument("--bootstrap", type=Path, default=ROOT / "target/release/bench-bootstrap",
                    help="the bench-bootstrap binary (integration crate): every variant's "
                         "Envoy bootstrap, built from the shipped manifests")
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
        data = json.loads((args.out / "results.json").read_text())
        return report.report(args.out, data, args.check)
    return measure_cli(args)


def measure_cli(args):
    # Imported here: the report alone needs none of the measuring side.
    import measure
    from harness import Processes, make_pki
    from variants import variants
    for what, p in (("--envoy", args.envoy), ("--filter", args.filter), ("--noop", args.noop),
                    ("--native", args.native),
                    ("--upstream", args.upstream), ("--bootstrap", args.bootstrap)):
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
            status = measure.smoke(procs, args, variants(), workdir)
            print(f"bench smoke: {time.time() - started:.1f} s")
            return status
        return measure.full(procs, args, variants(), workdir, started)
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
