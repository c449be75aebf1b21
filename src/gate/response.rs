//! What a response from the function means for the gate, without the host: a 5xx may say the
//! function is gone; Envoy's own 503 with a connection failure says it is.

/// Whether a response from the function (not from the filter or Envoy) says it may be gone: any
/// 5xx. The gate does not trust it either way; it sends one probe and re-arms if that fails.
pub fn worth_a_probe(status: &[u8]) -> bool {
    status.len() == 3 && status.first() == Some(&b'5')
}

/// Envoy's response flags (`response.flags`) that mean the function's process is gone:
/// UpstreamConnectionFailure (UF, 0x20) and UpstreamConnectionTermination (UC, 0x40).
pub const UPSTREAM_GONE_FLAGS: u64 = 0x20 | 0x40;

/// Whether a response with these flags should send the gate back to probing.
pub fn upstream_gone(flags: u64) -> bool {
    flags & UPSTREAM_GONE_FLAGS != 0
}

/// What the gate does after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterResponse {
    /// Not a 5xx: nothing.
    Nothing,
    /// Envoy's 503 for a refused or dropped connection (`flags`): the process is gone, hold
    /// again and probe until it is back.
    UpstreamGone { flags: u64 },
    /// Any other 5xx (of-watchdog's 500 when the function's server refuses it, the function's
    /// own error, a 503 without a connection failure): one probe decides.
    Check { flags: u64 },
}

/// The verdict on a response with `:status` `status`; `response_flags` is read only for a 503
/// (a host call, needed only there).
#[inline]
pub fn after_response(status: &[u8], response_flags: impl FnOnce() -> u64) -> AfterResponse {
    if !worth_a_probe(status) {
        return AfterResponse::Nothing;
    }
    let flags = if status == b"503" {
        response_flags()
    } else {
        0
    };
    if upstream_gone(flags) {
        AfterResponse::UpstreamGone { flags }
    } else {
        AfterResponse::Check { flags }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connection_failures_send_the_gate_back() {
        assert!(upstream_gone(0x20));
        assert!(upstream_gone(0x40 | 0x1000));
        assert!(!upstream_gone(0));
        assert!(!upstream_gone(0x10), "a reset stream is not a dead process");
        assert!(
            !upstream_gone(0x4),
            "a timeout is a slow function, not a dead one"
        );
    }

    #[test]
    fn only_5xx_answers_are_worth_a_probe() {
        for status in [&b"500"[..], b"502", b"503", b"504"] {
            assert!(worth_a_probe(status));
        }
        for status in [&b"200"[..], b"404", b"429", b"5", b"5000", b""] {
            assert!(!worth_a_probe(status));
        }
    }

    #[test]
    fn the_flags_are_read_for_a_503_only() {
        let unread = || -> u64 { panic!("flags read") };
        assert_eq!(after_response(b"200", unread), AfterResponse::Nothing);
        assert_eq!(
            after_response(b"500", unread),
            AfterResponse::Check { flags: 0 }
        );
        assert_eq!(
            after_response(b"503", || 0x20),
            AfterResponse::UpstreamGone { flags: 0x20 }
        );
    }
}
