//! The `/function/<name>[.<namespace>][/<rest>][?query]` → `/<rest>[?query]` rewrite, as the
//! OpenFaaS gateway forwards a call, decided on the raw `:path` bytes.
//!
//! The rest of the path and the query are passed on byte for byte: unlike the gateway, which
//! rebuilds the URL from the decoded path, `%2F` stays `%2F`, `%3F` stays in the path, and `//`
//! stays double. A rest with a dot segment (`.` or `..`, also percent-encoded, also between
//! encoded slashes) is refused with 400 rather than forwarded: Istio's default `normalize_path`
//! resolves them before the filter, but `pathNormalization: NONE` does not, and the function must
//! never see a path that climbs out of the one the caller was routed to.

/// `rewrite.other_function`: what a path naming another function gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherFunction {
    /// `/function/<other>/...` answers 404.
    Reject,
    /// `/function/<other>/...` is rewritten like the local function's paths.
    Pass,
}

/// What to do with a request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The path does not start with the prefix: forward it unchanged.
    Unprefixed,
    /// Forward with this path instead.
    Rewrite(Vec<u8>),
    /// Answer 404: the path names no function this pod serves.
    NotFound(NotFound),
    /// Answer 400: the rest of the path has a dot segment.
    DotSegment,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotFound {
    /// `/function/` or `/function//...`.
    MissingName,
    /// A name segment with characters a function name cannot have (the gateway accepts
    /// `[-a-zA-Z_0-9.]`), or an empty name or namespace around the dot.
    InvalidName,
    /// A well-formed name that is not the local function (`other_function: reject`).
    OtherFunction,
}

impl NotFound {
    pub fn message(self) -> &'static str {
        match self {
            NotFound::MissingName => "missing function name",
            NotFound::InvalidName => "invalid function name",
            NotFound::OtherFunction => "function not served by this pod",
        }
    }
}

/// The rewrite rules of one pod, fixed at configure time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewriter {
    prefix: Vec<u8>,
    local_name: Option<Vec<u8>>,
    local_namespace: Option<Vec<u8>>,
    other_function: OtherFunction,
}

impl Rewriter {
    /// `prefix` starts and ends with `/` (checked by the configuration). An unknown local name
    /// matches no function, so with `reject` every prefixed path answers 404.
    pub fn new(
        prefix: &str,
        local_name: Option<&str>,
        local_namespace: Option<&str>,
        other_function: OtherFunction,
    ) -> Self {
        Rewriter {
            prefix: prefix.as_bytes().to_vec(),
            local_name: local_name.map(|s| s.as_bytes().to_vec()),
            local_namespace: local_namespace.map(|s| s.as_bytes().to_vec()),
            other_function,
        }
    }

    pub fn route(&self, path: &[u8]) -> Route {
        let (path_part, query) = match path.iter().position(|&c| c == b'?') {
            Some(q) => path.split_at(q),
            None => (path, &b""[..]),
        };
        let Some(after) = path_part.strip_prefix(self.prefix.as_slice()) else {
            return Route::Unprefixed;
        };
        let (segment, rest) = match after.iter().position(|&c| c == b'/') {
            Some(slash) => after.split_at(slash),
            None => (after, &b""[..]),
        };
        if segment.is_empty() {
            return Route::NotFound(NotFound::MissingName);
        }
        if !segment
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
        {
            return Route::NotFound(NotFound::InvalidName);
        }
        // `name.namespace`: the namespace is what follows the last dot, as in the gateway.
        let (name, namespace) = match segment.iter().rposition(|&c| c == b'.') {
            Some(dot) => {
                let (name, ns) = segment.split_at(dot);
                (name, ns.get(1..))
            }
            None => (segment, None),
        };
        if name.is_empty() || namespace.is_some_and(<[u8]>::is_empty) {
            return Route::NotFound(NotFound::InvalidName);
        }
        if self.other_function == OtherFunction::Reject && !self.is_local(name, namespace) {
            return Route::NotFound(NotFound::OtherFunction);
        }
        if has_dot_segment(rest) {
            return Route::DotSegment;
        }
        let rest: &[u8] = if rest.is_empty() { b"/" } else { rest };
        let mut out = Vec::with_capacity(rest.len() + query.len());
        out.extend_from_slice(rest);
        out.extend_from_slice(query);
        Route::Rewrite(out)
    }

    #[inline]
    fn is_local(&self, name: &[u8], namespace: Option<&[u8]>) -> bool {
        let name_matches = self.local_name.as_deref() == Some(name);
        // A namespace in the path must be this pod's, when the pod's namespace is known.
        let namespace_matches = match (namespace, self.local_namespace.as_deref()) {
            (Some(asked), Some(local)) => asked == local,
            _ => true,
        };
        name_matches && namespace_matches
    }
}

/// Whether a path (without its query) has a segment that is `.` or `..` once `%2e` is decoded;
/// `%2f` and `%5c` (and `\\`) count as separators, as some servers decode them before resolving.
pub fn has_dot_segment(path: &[u8]) -> bool {
    let mut dots = 0u8; // dots in the current segment, or 3 once it holds anything else
    let mut i = 0;
    loop {
        let (separator, width) = match path.get(i..) {
            None | Some([]) => (true, 0),
            Some([b'/' | b'\\', ..]) => (true, 1),
            Some([b'%', a, b, ..])
                if matches!((a, b.to_ascii_lowercase()), (b'2', b'f') | (b'5', b'c')) =>
            {
                (true, 3)
            }
            _ => (false, 0),
        };
        if separator {
            if dots == 1 || dots == 2 {
                return true;
            }
            if width == 0 {
                return false;
            }
            dots = 0;
            i += width;
            continue;
        }
        let (dot, width) = match path.get(i..) {
            Some([b'.', ..]) => (true, 1),
            Some([b'%', b'2', e, ..]) if e.eq_ignore_ascii_case(&b'e') => (true, 3),
            _ => (false, 1),
        };
        dots = if dot && dots < 2 { dots + 1 } else { 3 };
        i += width;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Rewriter {
        Rewriter::new(
            "/function/",
            Some("env"),
            Some("openfaas-fn"),
            OtherFunction::Reject,
        )
    }

    fn rewritten(r: &Rewriter, path: &str) -> String {
        match r.route(path.as_bytes()) {
            Route::Rewrite(p) => String::from_utf8_lossy(&p).into_owned(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn the_gateway_examples() {
        let r = env();
        assert_eq!(rewritten(&r, "/function/env"), "/");
        assert_eq!(rewritten(&r, "/function/env/"), "/");
        assert_eq!(
            rewritten(&r, "/function/env/subPath/extras?query=true"),
            "/subPath/extras?query=true"
        );
    }

    #[test]
    fn unknown_local_name_rejects_every_prefixed_path() {
        let r = Rewriter::new("/function/", None, None, OtherFunction::Reject);
        assert_eq!(
            r.route(b"/function/env/x"),
            Route::NotFound(NotFound::OtherFunction)
        );
        assert_eq!(r.route(b"/x"), Route::Unprefixed);
    }

    #[test]
    fn namespace_unknown_accepts_any_namespace_of_the_local_name() {
        let r = Rewriter::new("/function/", Some("env"), None, OtherFunction::Reject);
        assert_eq!(rewritten(&r, "/function/env.team-a/x"), "/x");
    }

    #[test]
    fn dot_segments_in_any_spelling_are_refused() {
        let r = env();
        for path in [
            "/function/env/../x",
            "/function/env/./x",
            "/function/env/..",
            "/function/env/a/..",
            "/function/env/%2e%2e/x",
            "/function/env/%2E%2e/x",
            "/function/env/.%2e/x",
            "/function/env/%2e./x?q=1",
            "/function/env/%2e",
            "/function/env/..%2fx",
            "/function/env/..%2Fx",
            "/function/env/a%2f..%2fb",
            "/function/env/..%5cx",
            "/function/env/..\\x",
            "/function/env//../x",
        ] {
            assert_eq!(r.route(path.as_bytes()), Route::DotSegment, "{path}");
        }
        for (path, to) in [
            ("/function/env/...", "/..."),
            ("/function/env/.a/..b/a..", "/.a/..b/a.."),
            ("/function/env/%2e%2e%2e", "/%2e%2e%2e"),
            ("/function/env/x?p=../..", "/x?p=../.."),
            ("/function/env/%2", "/%2"),
            ("/function/env/%", "/%"),
        ] {
            assert_eq!(rewritten(&r, path), to, "{path}");
        }
    }

    #[test]
    fn custom_prefix() {
        let r = Rewriter::new("/fn/", Some("env"), None, OtherFunction::Reject);
        assert_eq!(rewritten(&r, "/fn/env/a"), "/a");
        assert_eq!(r.route(b"/function/env/a"), Route::Unprefixed);
    }

    #[test]
    fn very_long_path_keeps_every_byte() {
        let rest = "/a".repeat(30_000);
        let r = env();
        assert_eq!(
            rewritten(&r, &format!("/function/env{rest}?q=1")),
            format!("{rest}?q=1")
        );
    }

    #[test]
    fn non_utf8_bytes_are_not_a_name_and_pass_through_in_the_rest() {
        let r = env();
        assert_eq!(
            r.route(b"/function/\xff/x"),
            Route::NotFound(NotFound::InvalidName)
        );
        assert_eq!(
            r.route(b"/function/env/\xff\xfe"),
            Route::Rewrite(b"/\xff\xfe".to_vec())
        );
    }
}
