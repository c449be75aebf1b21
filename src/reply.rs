//! The filter's own replies: status, a small JSON body and the headers every local reply
//! carries, so a caller can tell them from the function's answers.

use serde_json::json;

/// `X-OpenFaaS-Internal` marks a reply made by the platform, not the function.
pub const INTERNAL_HEADER: &str = "x-openfaas-internal";
pub const INTERNAL_VALUE: &str = "faas-mesh-filter";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    /// Short machine-readable reason for Envoy's access log (`%RESPONSE_CODE_DETAILS%`).
    pub details: &'static str,
    pub error: &'static str,
}

impl LocalReply {
    /// The JSON body: `{"error": "...", "function": "...", "call_id": "..."}`.
    pub fn body(&self, function: &str, call_id: &str) -> Vec<u8> {
        json!({ "error": self.error, "function": function, "call_id": call_id })
            .to_string()
            .into_bytes()
    }

    /// The headers of the reply: content type, the call id under its configured name, and the
    /// internal marker.
    pub fn headers<'a>(
        &self,
        call_id_header: &'a str,
        call_id: &'a str,
    ) -> [(&'a str, &'a str); 3] {
        [
            ("content-type", "application/json"),
            (call_id_header, call_id),
            (INTERNAL_HEADER, INTERNAL_VALUE),
        ]
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
        };
        let body: serde_json::Value =
            serde_json::from_slice(&reply.body("env", "a\"b")).unwrap_or_default();
        assert_eq!(body["error"], "function not served by this pod");
        assert_eq!(body["function"], "env");
        assert_eq!(body["call_id"], "a\"b");
    }
}
