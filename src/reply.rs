//! The filter's own replies: status, a small JSON body and the headers every local reply
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
