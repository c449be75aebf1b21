"""The benchmark's variants (bench/README.md, "Variants"): what each one runs and checks.

Every variant is the bootstrap `bench-bootstrap` (integration/src/bin/bench-bootstrap.rs) builds
from the shipped manifests, as the integration tests' Envoy is: the manifest's filter at the
manifest's plugin configuration, or that filter with its module or its plugin configuration
swapped, or the native build (the dynamic-modules filter, the same plugin configuration) in its
place, or taken out (plain Envoy, the route rules) or replaced by Lua. Nothing else differs.
"""

import json
from dataclasses import dataclass

REQUEST_PATH = "/function/env/a/b?x=1"
REWRITTEN_PATH = "/a/b?x=1"

# What an operator would configure in plain Envoy instead, for the part Envoy can do on its own
# (issue 15): the function's prefix stripped by the route, the call id taken from Envoy's own
# x-request-id (a UUIDv4 on every request) unless the caller sent one, the start time from
# %START_TIME% (seconds and nine fraction digits: unix nanoseconds, as the filter writes it), and
# on the response the call id and a duration. Envoy has no seconds formatter for a duration, so
# it is `X-Duration-Ms` (%RESPONSE_DURATION%, whole milliseconds to the first response byte).
ROUTE_RULES = {
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


@dataclass
class Variant:
    name: str
    label: str
    # The HTTP filter before the router: "shipped" (the manifest's, by ECDS), "none" or "lua"
    # (bench/lua/faas_mesh.lua in its place).
    filter: str = "none"
    # With "shipped": the module, "filter" (faas_mesh_filter.wasm) or "noop" (the no-op filter).
    wasm: str = "filter"
    # With "shipped": "wasm" (the manifest's Wasm filter with `wasm`'s module) or "native" (the
    # dynamic-modules filter with libfaas_mesh_filter_native.so in the same place, the same
    # plugin configuration: the harness's FAAS_MESH_BUILD=native).
    build: str = "wasm"
    # With "shipped": the plugin configuration in place of the manifest's (None keeps the
    # manifest's: the filter as it ships); a dict is written as JSON.
    config: object = None
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
    # A route put before the default one, its action merged over the default's, with its
    # header rules (bench-bootstrap --route-file): what an operator would configure in plain
    # Envoy instead of the filter.
    route: dict = None
    # Envoy's VmRSS is measured for it too (1 and N workers, median of several starts).
    memory: bool = False


def variants():
    one = {"policy": {"functions": {"env": {"mode": "off"}}}}
    hundred = {"policy": {"functions": {"env": {"mode": "off"},
                                        **{f"fn-{i}": {"mode": "off"} for i in range(1, 100)}}}}
    many = {"policy": {"functions": {"env": {"mode": "off"},
                                     **{f"fn-{i}": {"mode": "off"} for i in range(1, 1000)}}}}
    principals = json.loads(json.dumps(EVERYTHING_ON))
    principals["policy"]["default"]["principals"] = ["spiffe://cluster.local/ns/openfaas/sa/*"]
    return [
        Variant("plain", "1. plain Envoy (router only)", wrk=True, memory=True),
        Variant("noop", "2. no-op Rust wasm filter", filter="shipped", wasm="noop", config="",
                wrk=True, memory=True),
        Variant("lua", "3. Lua: rewrite, call id, start time, duration", filter="lua", check="work",
                wrk=True),
        Variant("route-rules", "plain Envoy route rules instead: rewrite, call id, start time, "
                "duration", check="route-rules", wrk=True, route=ROUTE_RULES, memory=True),
        Variant("default", "4. faas-mesh-filter, default configuration `{}`",
                filter="shipped", check="work", wrk=True, memory=True),
        Variant("everything", "5. faas-mesh-filter, everything on (its own trace, readiness, policy)",
                filter="shipped", config=EVERYTHING_ON, check="work", may_refuse=True, wrk=True,
                memory=True),
        Variant("native-default", "6. native build (dynamic module), default configuration `{}`",
                filter="shipped", build="native", check="work", wrk=True, memory=True),
        Variant("native-everything", "7. native build (dynamic module), everything on",
                filter="shipped", build="native", config=EVERYTHING_ON, check="work",
                may_refuse=True, wrk=True, memory=True),
        Variant("same-as-lua", "faas-mesh-filter, Lua's work only (tracing and readiness off)",
                filter="shipped", config=LUAS_WORK, check="work", wrk=True),
        Variant("policy-1", "scaling: 1 entry in policy.functions",
                filter="shipped", config=one, check="work"),
        Variant("policy-100", "scaling: 100 entries in policy.functions",
                filter="shipped", config=hundred, check="work", memory=True),
        Variant("policy-1000", "scaling: 1,000 entries in policy.functions",
                filter="shipped", config=many, check="work"),
        Variant("plain-headers-50", "scaling: plain Envoy, 50 request headers",
                extra_headers=45),
        Variant("headers-50", "scaling: default configuration, 50 request headers",
                filter="shipped", check="work", extra_headers=45,
                baseline="plain-headers-50"),
        Variant("plain-mtls", "plain Envoy over mTLS", tls=True),
        Variant("principals", "faas-mesh-filter, everything on + principals, over mTLS",
                filter="shipped", config=principals, check="work", tls=True, may_refuse=True,
                baseline="plain-mtls"),
        Variant("refusal-self-test", "smoke: a configuration the filter must refuse",
                filter="shipped", config=REFUSED_ON_PURPOSE, check="work", may_refuse=True,
                smoke_only=True, expect_refusal="policy.default.mode"),
        Variant("refusal-self-test-native", "smoke: the native build refuses it too",
                filter="shipped", build="native", config=REFUSED_ON_PURPOSE, check="work",
                may_refuse=True, smoke_only=True, expect_refusal="policy.default.mode"),
    ]


def variant_order():
    """Variant names in the order of `variants` (results.json keeps them sorted by name)."""
    return [v.name for v in variants()]


def baselines():
    return {v.name: v.baseline for v in variants()}
