//! The checks of single values: names, paths, identities, header names. Each takes the value's
//! key path for its error and gives the value as the configuration keeps it.

use super::error::{quote, ConfigError};

/// A Kubernetes/OpenFaaS function name: a DNS-1123 label.
pub fn function_name(path: &str, s: &str) -> Result<String, ConfigError> {
    if is_function_name(s) {
        Ok(s.to_string())
    } else {
        Err(ConfigError::new(
            path,
            format!(
                "expected a function name (lowercase letters, digits and '-', starting and ending \
                 with a letter or digit, at most 63 characters), got {}",
                quote(s)
            ),
        ))
    }
}

pub fn is_function_name(s: &str) -> bool {
    let b = s.as_bytes();
    let edge_ok = |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !b.is_empty()
        && b.len() <= 63
        && edge_ok(b.first())
        && edge_ok(b.last())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// A Kubernetes label key: `[prefix/]name`, letters, digits, `-`, `_`, `.`.
pub fn label_key(path: &str, s: &str) -> Result<String, ConfigError> {
    let ok = !s.is_empty()
        && s.len() <= 317
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_./".contains(&c));
    if ok {
        Ok(s.to_string())
    } else {
        Err(ConfigError::new(
            path,
            format!("expected a pod label key, got {}", quote(s)),
        ))
    }
}

pub fn path_prefix(path: &str, s: &str) -> Result<String, ConfigError> {
    let ok = s.len() >= 3
        && s.starts_with('/')
        && s.ends_with('/')
        && s.bytes()
            .all(|c| c.is_ascii_graphic() && !b"?#%".contains(&c));
    if ok {
        Ok(s.to_string())
    } else {
        Err(ConfigError::new(
            path,
            format!(
                "expected a path prefix that starts and ends with '/' (like \"/function/\"), got {}",
                quote(s)
            ),
        ))
    }
}

/// A SPIFFE ID, exactly (no wildcard: one identity), or `""` for none.
pub fn gateway_principal(path: &str, s: &str) -> Result<Option<String>, ConfigError> {
    if s.is_empty() {
        return Ok(None);
    }
    let ok = s.len() > "spiffe://".len()
        && s.starts_with("spiffe://")
        && s.bytes().all(|c| c.is_ascii_graphic() && c != b'*');
    if ok {
        Ok(Some(s.to_string()))
    } else {
        Err(ConfigError::new(
            path,
            format!(
                "expected a SPIFFE ID (spiffe://...), or \"\" for none, got {}",
                quote(s)
            ),
        ))
    }
}

/// A path the probe may ask for: starts with `/`, visible ASCII only.
pub fn is_request_path(s: &str) -> bool {
    s.starts_with('/') && s.bytes().all(|c| c.is_ascii_graphic())
}

pub fn request_path(path: &str, s: &str) -> Result<String, ConfigError> {
    if is_request_path(s) {
        Ok(s.to_string())
    } else {
        Err(ConfigError::new(
            path,
            format!("expected a path starting with '/', got {}", quote(s)),
        ))
    }
}

/// An HTTP header field name (RFC 9110 token), stored lowercase, that the filter may write:
/// not one that frames the message, is hop-by-hop, or that Envoy, tracing or the policy reads.
pub fn header_name(path: &str, s: &str) -> Result<String, ConfigError> {
    let tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    if s.is_empty() || s.len() > 128 || !s.bytes().all(tchar) {
        return Err(ConfigError::new(
            path,
            format!("expected an HTTP header name, got {}", quote(s)),
        ));
    }
    let name = s.to_ascii_lowercase();
    if RESERVED_HEADERS.contains(&name.as_str())
        || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
    {
        return Err(ConfigError::new(
            path,
            format!(
                "{} is a header that HTTP, Envoy, tracing or the policy depends on \
                 (framing, hop-by-hop, routing, identity); choose a header of your own",
                quote(s)
            ),
        ));
    }
    Ok(name)
}

/// Header names the filter must never write (checked lowercase).
const RESERVED_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "content-type",
    "content-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "host",
    "expect",
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "location",
    "retry-after",
    "allow",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-client-cert",
    "x-http-method-override",
    "x-method-override",
    "x-http-method",
    "x-openfaas-internal",
    "traceparent",
    "tracestate",
    "b3",
];
const RESERVED_PREFIXES: &[&str] = &["x-envoy-", "x-b3-", "x-istio-", ":"];

/// A string that ends up in a header or a path: visible ASCII only (no spaces, no CR/LF).
pub fn visible(path: &str, s: &str) -> Result<String, ConfigError> {
    if s.trim().is_empty() {
        Err(ConfigError::new(path, "expected a non-empty string"))
    } else if !s.bytes().all(|c| c.is_ascii_graphic()) {
        Err(ConfigError::new(
            path,
            format!(
                "expected visible ASCII characters only (no spaces or control characters), got {}",
                quote(s)
            ),
        ))
    } else {
        Ok(s.to_string())
    }
}
