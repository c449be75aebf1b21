//! Every reply the filter makes: status, a small JSON body and the headers every local reply
//! carries, so a caller can tell them from the function's answers.

/// `X-OpenFaaS-Internal` marks a reply made by the platform, not the function.
pub const INTERNAL_HEADER: &str = "x-openfaas-internal";
pub const INTERNAL_VALUE: &str = "faas-mesh-filter";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    /// Short machine-readable reason for Envoy's access log (`%RESPONSE_CODE_DETAILS%`).
    pub details: &'static str,
    pub error: &'static str,
    /// `Retry-After` in seconds, for replies that say "try again later".
    pub retry_after: Option<u64>,
    /// `Allow` (the methods a 405 would have accepted).
    pub allow: Option<String>,
}

impl LocalReply {
    pub fn with_allow(self, allow: &str) -> LocalReply {
        LocalReply {
            allow: Some(allow.to_string()),
            ..self
        }
    }

    /// The JSON body: `{"error": "...", "function": "...", "call_id": "..."}`. Written by hand:
    /// a JSON serializer costs the module kilobytes for three strings.
    pub fn body(&self, function: &str, call_id: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.error.len() + function.len() + call_id.len());
        for (i, (key, value)) in [
            ("error", self.error),
            ("function", function),
            ("call_id", call_id),
        ]
        .into_iter()
        .enumerate()
        {
            out.extend_from_slice(if i == 0 { b"{\"" } else { b",\"" });
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":\"");
            json_escape(value, &mut out);
            out.push(b'"');
        }
        out.push(b'}');
        out
    }

    /// The headers of the reply, serialized for the host: content type, the call id under its
    /// configured name, the internal marker, and `Retry-After` when set.
    pub fn headers(&self, call_id_header: &str, call_id: &str) -> Vec<u8> {
        let retry_after = self.retry_after.map(|s| s.to_string());
        let mut pairs = vec![
            ("content-type", "application/json"),
            (call_id_header, call_id),
            (INTERNAL_HEADER, INTERNAL_VALUE),
        ];
        if let Some(seconds) = retry_after.as_deref() {
            pairs.push(("retry-after", seconds));
        }
        if let Some(allow) = self.allow.as_deref() {
            pairs.push(("allow", allow));
        }
        crate::header_map::serialize(&pairs)
    }
}

/// A path naming no function this pod serves.
pub fn not_found(reason: crate::rewrite::NotFound) -> LocalReply {
    LocalReply {
        status: 404,
        details: "faas_mesh_filter.function_not_found",
        error: reason.message(),
        retry_after: None,
        allow: None,
    }
}

/// A rewritten path must not climb out of the function's own (`pathNormalization: NONE`).
pub const DOT_SEGMENT: LocalReply = LocalReply {
    status: 400,
    details: "faas_mesh_filter.dot_segment",
    error: "dot segment in path",
    retry_after: None,
    allow: None,
};

/// The policy's answer in enforce mode. `retry_after` (seconds) is used by the 429s; `allow`
/// is the 405's `Allow`.
pub fn denied(reason: crate::policy::Reason, retry_after: u64, allow: &str) -> LocalReply {
    use crate::policy::Reason;
    let (status, details, error) = match reason {
        Reason::Mtls => (403, "faas_mesh_filter.mtls_required", "mutual TLS required"),
        Reason::Principal => (
            403,
            "faas_mesh_filter.principal_denied",
            "caller not allowed",
        ),
        Reason::Method => (
            405,
            "faas_mesh_filter.method_not_allowed",
            "method not allowed",
        ),
        Reason::BodySize => (
            413,
            "faas_mesh_filter.body_too_large",
            "request body too large",
        ),
        Reason::RateLimit => (429, "faas_mesh_filter.rate_limited", "rate limit exceeded"),
        Reason::Inflight => (
            429,
            "faas_mesh_filter.too_many_inflight",
            "too many requests in flight",
        ),
    };
    LocalReply {
        status,
        details,
        error,
        retry_after: matches!(reason, Reason::RateLimit | Reason::Inflight)
            .then_some(retry_after.max(1)),
        allow: (reason == Reason::Method).then(|| allow.to_string()),
    }
}

/// Held for `readiness.max_wait_ms` without the function becoming ready.
pub fn not_ready(retry_after: u64) -> LocalReply {
    LocalReply {
        status: 503,
        details: "faas_mesh_filter.not_ready",
        error: "function not ready",
        retry_after: Some(retry_after),
        allow: None,
    }
}

/// `readiness.max_pending` requests already held in the pod.
pub fn pending_full(retry_after: u64) -> LocalReply {
    LocalReply {
        status: 503,
        details: "faas_mesh_filter.pending_full",
        error: "too many requests waiting for the function to become ready",
        retry_after: Some(retry_after),
        allow: None,
    }
}

/// A body larger than the pod may hold (`readiness.max_pending_bytes`) while it is not ready.
pub const TOO_LARGE_TO_HOLD: LocalReply = LocalReply {
    status: 413,
    details: "faas_mesh_filter.too_large_to_hold",
    error: "request body too large to hold while the function starts",
    retry_after: None,
    allow: None,
};

/// The pod holds `readiness.max_pending_bytes` of request bodies already.
pub const BYTES_FULL: LocalReply = LocalReply {
    status: 503,
    details: "faas_mesh_filter.pending_bytes_full",
    error: "too many request bytes waiting for the function to become ready",
    retry_after: Some(1),
    allow: None,
};

/// The host gave no entropy: no guessable call id is ever made up instead.
pub const NO_ENTROPY: LocalReply = LocalReply {
    status: 503,
    details: "faas_mesh_filter.no_entropy",
    error: "call id could not be generated",
    retry_after: None,
    allow: None,
};

/// Appends `s` as the inside of a JSON string.
fn json_escape(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &c in s.as_bytes() {
        match c {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', c]),
            0..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX.get(usize::from(c >> 4)).copied().unwrap_or(b'0'));
                out.push(HEX.get(usize::from(c & 0xf)).copied().unwrap_or(b'0'));
            }
            _ => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_json_with_escaped_values() {
        let reply = LocalReply {
            status: 404,
            details: "faas_mesh_filter_not_found",
            error: "function not served by this pod",
            retry_after: None,
            allow: None,
        };
        let body: serde_json::Value =
            serde_json::from_slice(&reply.body("env", "a\"b")).unwrap_or_default();
        assert_eq!(body["error"], "function not served by this pod");
        assert_eq!(body["function"], "env");
        assert_eq!(body["call_id"], "a\"b");
        let tricky = "q\"\\\u{1}\n\u{7f}é";
        let body: serde_json::Value =
            serde_json::from_slice(&reply.body(tricky, tricky)).expect("valid JSON");
        assert_eq!(body["function"], tricky);
        assert_eq!(body["call_id"], tricky);
    }

    #[test]
    fn headers_carry_the_call_id_marker_and_retry_after() {
        let reply = LocalReply {
            status: 503,
            details: "x",
            error: "function not ready",
            retry_after: Some(2),
            allow: None,
        };
        let wire = reply.headers("x-call-id", "id-1");
        let pairs: Vec<(&[u8], &[u8])> = crate::header_map::pairs(&wire).collect();
        assert_eq!(
            pairs,
            vec![
                (&b"content-type"[..], &b"application/json"[..]),
                (b"x-call-id", b"id-1"),
                (b"x-openfaas-internal", b"faas-mesh-filter"),
                (b"retry-after", b"2"),
            ]
        );
        let no_retry = LocalReply {
            retry_after: None,
            ..reply
        };
        assert_eq!(
            crate::header_map::pairs(&no_retry.headers("x-call-id", "id-1")).count(),
            3
        );
    }
}
