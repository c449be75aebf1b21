//! One request's decision, made without the host: what the request carries (read in one pass
//! over its header map) and the compiled [`Plan`] go in; the route, the call id, the headers to
//! write and the verdict of the checks that need only the headers come out. The adapter reads the
//! header map, the clock and the entropy it is told it needs, and applies what comes back.
//!
//! The order a request meets the checks lives here, in [`decide`]: the route (404, 400), then the
//! headers it gets, then the policy's header checks (identity, method, length); the checks that
//! need shared data (rate, in-flight) and the readiness gate come after, in the adapter.

use crate::call_id;
use crate::header_map;
use crate::plan::Plan;
use crate::policy::{parse_content_length, Reason, METHOD_OVERRIDE_HEADERS};
use crate::reply::{self, LocalReply};
use crate::rewrite::Route;
use crate::timing;
use crate::trace;
use crate::trace::TraceOwner;

/// What a request carries that the filter reads: collected in one pass over its header map.
#[derive(Debug, Default)]
pub struct Incoming<'a> {
    pub path: &'a [u8],
    pub method: &'a [u8],
    /// `Content-Length`, when present and a number.
    pub content_length: Option<u64>,
    /// How many call-id headers arrived, and the last one's value.
    pub call_ids: u32,
    pub call_id: &'a [u8],
    /// How many start-time headers arrived, and the last one's value (the OpenFaaS gateway
    /// appends its own to a caller's).
    pub start_times: u32,
    pub start_time: &'a [u8],
    /// The request is the OpenFaaS gateway's `probe_functions` probe (by its user agent).
    pub gateway_probe: bool,
    /// Method-override header values (read only when the policy checks methods).
    pub overrides: Vec<&'a [u8]>,
    pub trace: trace::TraceHeaders<'a>,
}

impl<'a> Incoming<'a> {
    /// Reads a serialized request header map (the proxy-wasm pair format).
    pub fn scan(headers: &'a [u8], plan: &Plan) -> Incoming<'a> {
        Incoming::scan_pairs(header_map::pairs(headers), plan)
    }

    /// Reads a request's header pairs, as a host hands them over.
    #[inline(always)]
    pub fn scan_pairs(
        pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
        plan: &Plan,
    ) -> Incoming<'a> {
        let mut incoming = Incoming::default();
        let tracing = plan.tracing.b3 || plan.tracing.w3c;
        let call_id = plan.headers.call_id.as_bytes();
        let start_time = plan.headers.start_time.as_bytes();
        let policy = plan.policy.is_active();
        for (name, value) in pairs {
            if name == b":path" {
                incoming.path = value;
            } else if name == call_id {
                incoming.call_ids += 1;
                incoming.call_id = value;
            } else if name == start_time {
                incoming.start_times += 1;
                incoming.start_time = value;
            } else if name == b"user-agent" {
                incoming.gateway_probe = value == crate::gate::GATEWAY_PROBE_AGENT;
            } else if tracing && trace_header(&mut incoming.trace, name, value) {
                // recorded
            } else if name == b":method" {
                incoming.method = value;
            } else if name == b"content-length" {
                incoming.content_length = parse_content_length(value);
            } else if policy && METHOD_OVERRIDE_HEADERS.contains(&name) {
                incoming.overrides.push(value);
            }
        }
        incoming
    }

    /// Whether the caller's call id is kept (trusted, sent once, a safe token).
    pub fn keeps_call_id(&self, plan: &Plan) -> bool {
        plan.headers.trust_incoming_call_id
            && self.call_ids == 1
            && call_id::is_safe_token(self.call_id)
    }

    /// Whether [`decide`] needs the connection's identity: for the policy, or to tell the
    /// OpenFaaS gateway's requests (which always carry a start time) from others.
    pub fn needs_peer(&self, plan: &Plan) -> bool {
        plan.policy.needs_peer() || (self.start_times > 0 && plan.gateway_principal.is_some())
    }

    /// How many random bytes [`decide`] needs: 16 for a new call id, 24 for a trace and span id.
    pub fn entropy_needed(&self, plan: &Plan) -> Entropy {
        Entropy {
            call_id: !self.keeps_call_id(plan),
            trace: plan.tracing.owner == TraceOwner::Filter
                && (plan.tracing.b3 || plan.tracing.w3c),
        }
    }
}

/// Which random values a request needs; the adapter reads them in one host call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entropy {
    pub call_id: bool,
    pub trace: bool,
}

impl Entropy {
    pub fn len(self) -> usize {
        usize::from(self.call_id) * 16 + usize::from(self.trace) * 24
    }

    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
}

/// Records a trace header in `incoming`; false if `name` is none. A header sent twice is
/// recorded as unusable (empty).
fn trace_header<'a>(incoming: &mut trace::TraceHeaders<'a>, name: &[u8], value: &'a [u8]) -> bool {
    let slot = match name {
        b"traceparent" => &mut incoming.traceparent,
        b"b3" => &mut incoming.b3_single,
        b"x-b3-traceid" => &mut incoming.b3_trace_id,
        b"x-b3-spanid" => &mut incoming.b3_span_id,
        b"x-b3-parentspanid" => &mut incoming.b3_parent_span_id,
        b"x-b3-sampled" => &mut incoming.b3_sampled,
        b"x-b3-flags" => &mut incoming.b3_flags,
        _ => return false,
    };
    *slot = if slot.is_some() {
        Some(b"")
    } else {
        Some(value)
    };
    true
}

/// The connection's identity, read by the adapter only when the policy needs it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peer<'a> {
    pub mtls: bool,
    pub principal: Option<&'a [u8]>,
}

/// What to do with a request after its headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<'p> {
    /// The request's call id (kept from the caller or new).
    pub call_id: String,
    /// Answer the request with this reply now (the route or a header check said so).
    pub reply: Option<LocalReply>,
    /// The call id is new: write it under `headers.call_id` (kept apart from `writes` so the
    /// adapter writes the one copy it holds).
    pub write_call_id: bool,
    /// The other headers to write before the request goes on: `(name, Some(value))` sets, `None`
    /// removes. Empty (and `write_call_id` false) when `reply` is set.
    pub writes: Vec<(&'p str, Option<Vec<u8>>)>,
    /// The path was rewritten (for the `rewritten` stat) or refused by the route (`not_found`).
    pub rewritten: bool,
    pub not_found: bool,
    /// Would-be denials of the header checks, in the order they ran (audit mode lists every
    /// one; enforce mode stops at the first, which is in `reply`).
    pub denied: Vec<Reason>,
}

/// Decides a request from what it carries. `entropy` holds what [`Incoming::entropy_needed`]
/// asked for, call id bytes first; `now_nanos` is the start time the function gets; `peer` is
/// the connection's identity when [`Incoming::needs_peer`].
///
/// A request the OpenFaaS gateway forwarded (its mTLS identity is `plan.gateway_principal` and
/// it carries the gateway's start time) is routed already: it is not rewritten again, and keeps
/// the gateway's start time (the last value, when a caller sent one too).
pub fn decide<'p>(
    plan: &'p Plan,
    incoming: &Incoming<'_>,
    entropy: &[u8],
    now_nanos: u64,
    peer: Peer<'_>,
) -> Decision<'p> {
    let need = incoming.entropy_needed(plan);
    let (id_bytes, rest) = entropy.split_at(if need.call_id {
        16.min(entropy.len())
    } else {
        0
    });
    let call_id = if need.call_id {
        call_id::uuid_v4(id_bytes.try_into().unwrap_or([0; 16]))
    } else {
        String::from_utf8_lossy(incoming.call_id).into_owned()
    };
    let mut decision = Decision {
        call_id,
        reply: None,
        write_call_id: false,
        // :path, start time, traceparent, b3 and B3's multi headers at most.
        writes: Vec::with_capacity(10),
        rewritten: false,
        not_found: false,
        denied: Vec::new(),
    };

    let from_gateway = incoming.start_times > 0
        && plan
            .gateway_principal
            .as_deref()
            .is_some_and(|gateway| peer.principal == Some(gateway.as_bytes()));
    let route = if from_gateway {
        Route::Unprefixed
    } else {
        plan.rewriter.route(incoming.path)
    };
    // The route first: a path this pod does not serve is answered before anything is written.
    match route {
        Route::NotFound(reason) => {
            decision.not_found = true;
            decision.reply = Some(reply::not_found(reason));
            return decision;
        }
        Route::DotSegment => {
            decision.not_found = true;
            decision.reply = Some(reply::DOT_SEGMENT);
            return decision;
        }
        Route::Rewrite(path) => {
            decision.rewritten = true;
            decision.writes.push((":path", Some(path)));
        }
        Route::Unprefixed => {}
    }
    let names = &plan.headers;
    decision.write_call_id = need.call_id;
    let start_time = match (from_gateway, incoming.start_times) {
        (false, _) => Some(timing::decimal(now_nanos).into_bytes()),
        (true, 1) => None,
        (true, _) => Some(incoming.start_time.to_vec()),
    };
    if let Some(value) = start_time {
        decision.writes.push((&names.start_time, Some(value)));
    }
    let tracing = &plan.tracing;
    if tracing.w3c || tracing.b3 {
        let writes = if need.trace {
            let (trace_bytes, span_bytes) = rest.split_at(16.min(rest.len()));
            let (context, _) = trace::child(
                &incoming.trace,
                trace_bytes.try_into().unwrap_or([0; 16]),
                span_bytes.try_into().unwrap_or([0; 8]),
            );
            context.headers(tracing.w3c, tracing.b3, incoming.trace.has_b3_multi())
        } else {
            // Envoy's tracer owns the trace: no ids of the filter's own.
            trace::bridge(&incoming.trace, tracing.w3c, tracing.b3)
        };
        for (name, value) in writes {
            // Removing a header the request does not have is a wasted host call.
            if value.is_some() || incoming.trace.has(name) {
                decision.writes.push((name, value.map(String::into_bytes)));
            }
        }
    }

    // The policy's checks that need only the headers, in order.
    let policy = &plan.policy;
    if policy.is_active() {
        let checks = [
            policy.check_peer(peer.mtls, peer.principal),
            policy.check_method(incoming.method, &incoming.overrides),
            policy.check_length(incoming.content_length),
        ];
        for reason in checks.into_iter().filter_map(Result::err) {
            decision.denied.push(reason);
            if policy.mode == crate::policy::PolicyMode::Enforce {
                decision.reply = Some(reply::denied(reason, 0, &policy.allow));
                decision.writes.clear();
                decision.write_call_id = false;
                return decision;
            }
        }
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::plan::PodInfo;

    fn plan(json: &str) -> Plan {
        let config = Config::parse(json.as_bytes()).unwrap();
        let pod = PodInfo {
            label_value: Some("env".into()),
            namespace: Some("openfaas-fn".into()),
            annotations: Vec::new(),
        };
        Plan::compile(&config, &pod).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<u8> {
        header_map::serialize(pairs)
    }

    #[test]
    fn one_pass_reads_what_the_plan_needs() {
        let p = plan(r#"{"policy":{"default":{"methods":["GET"]}}}"#);
        let map = headers(&[
            (":path", "/function/env/a"),
            (":method", "POST"),
            ("x-call-id", "abc"),
            ("content-length", "12"),
            ("x-http-method-override", "DELETE"),
            ("traceparent", "00-x"),
            ("traceparent", "00-y"),
        ]);
        let i = Incoming::scan(&map, &p);
        assert_eq!(i.path, b"/function/env/a");
        assert_eq!(i.method, b"POST");
        assert_eq!(i.content_length, Some(12));
        assert_eq!(i.call_ids, 1);
        assert_eq!(i.overrides, vec![&b"DELETE"[..]]);
        assert_eq!(i.trace.traceparent, Some(&b""[..]), "sent twice: unusable");
        assert!(i.keeps_call_id(&p));
        assert_eq!(
            i.entropy_needed(&p).len(),
            0,
            "Envoy's tracer makes the ids"
        );
        let p = plan(r#"{"tracing":{"owner":"filter"}}"#);
        assert_eq!(Incoming::scan(&map, &p).entropy_needed(&p).len(), 24);
    }

    #[test]
    fn a_rewritten_call_gets_its_headers_in_order() {
        let p = plan("{}");
        let map = headers(&[(":path", "/function/env/x?q=1"), (":method", "GET")]);
        let i = Incoming::scan(&map, &p);
        let entropy = [7u8; 40];
        let d = decide(&p, &i, &entropy, 1_700_000_000_000_000_000, Peer::default());
        assert!(d.reply.is_none());
        assert!(d.rewritten);
        let names: Vec<&str> = d.writes.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, [":path", "x-start-time"], "no trace ids of its own");
        assert!(d.write_call_id);
        assert_eq!(d.writes[0].1.as_deref(), Some(&b"/x?q=1"[..]));
        assert_eq!(d.writes[1].1.as_deref(), Some(&b"1700000000000000000"[..]));
        assert_eq!(d.call_id.len(), 36);

        let p = plan(r#"{"tracing":{"owner":"filter"}}"#);
        let d = decide(&p, &Incoming::scan(&map, &p), &entropy, 1, Peer::default());
        let names: Vec<&str> = d.writes.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, [":path", "x-start-time", "traceparent", "b3"]);
    }

    #[test]
    fn the_route_answers_before_any_check_or_write() {
        let p = plan(r#"{"policy":{"default":{"methods":["GET"]}}}"#);
        for (path, status) in [("/function/other/x", 404), ("/function/env/../x", 400)] {
            let map = headers(&[(":path", path), (":method", "DELETE")]);
            let i = Incoming::scan(&map, &p);
            let d = decide(&p, &i, &[1; 40], 1, Peer::default());
            assert_eq!(d.reply.map(|r| r.status), Some(status), "{path}");
            assert!(d.writes.is_empty());
            assert!(d.denied.is_empty());
        }
    }

    #[test]
    fn enforce_stops_at_the_first_denial_and_audit_lists_them_all() {
        let rules = r#""methods":["GET"],"max_body_bytes":10,"require_mtls":true"#;
        let map = headers(&[
            (":path", "/x"),
            (":method", "POST"),
            ("content-length", "11"),
        ]);
        let p = plan(&format!(r#"{{"policy":{{"default":{{{rules}}}}}}}"#));
        let d = decide(&p, &Incoming::scan(&map, &p), &[1; 40], 1, Peer::default());
        assert_eq!(d.denied, [Reason::Mtls]);
        assert_eq!(d.reply.map(|r| r.status), Some(403));
        let peer = Peer {
            mtls: true,
            principal: None,
        };
        let d = decide(&p, &Incoming::scan(&map, &p), &[1; 40], 1, peer);
        assert_eq!(d.denied, [Reason::Method]);
        let reply = d.reply.unwrap();
        assert_eq!((reply.status, reply.allow.as_deref()), (405, Some("GET")));

        let p = plan(&format!(
            r#"{{"policy":{{"default":{{"mode":"audit",{rules}}}}}}}"#
        ));
        let d = decide(&p, &Incoming::scan(&map, &p), &[1; 40], 1, Peer::default());
        assert_eq!(d.denied, [Reason::Mtls, Reason::Method, Reason::BodySize]);
        assert!(d.reply.is_none());
        assert!(!d.writes.is_empty());
    }
}
