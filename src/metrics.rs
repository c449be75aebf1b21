//! One naming scheme for every stat the filter defines:
//! `faas_mesh_filter.function.<function>.<area>.<metric>` (Envoy shows it under `wasmcustom.`),
//! with a policy reason as `….policy.reason.<reason>.<outcome>`. Two tag-extraction rules
//! (`envoyfilter/observability.yaml`) turn `function` and `reason` into Prometheus labels:
//! `faas_mesh_filter_policy_denied{function="env",reason="method"}`.

/// The function segment of a stat name for a pod whose function is unknown.
pub const UNKNOWN_FUNCTION: &str = "unknown";

/// `faas_mesh_filter.function.<function>.<metric>`.
pub fn name(function: &str, metric: &str) -> String {
    let function = if function.is_empty() {
        UNKNOWN_FUNCTION
    } else {
        function
    };
    format!("faas_mesh_filter.function.{function}.{metric}")
}

/// `faas_mesh_filter.function.<function>.policy.reason.<reason>.<outcome>`.
pub fn policy_reason(function: &str, reason: &str, outcome: &str) -> String {
    name(function, &format!("policy.reason.{reason}.{outcome}"))
}

/// Stats without a function (the configuration is refused before one is known).
pub const CONFIG_REJECTED: &str = "faas_mesh_filter.config.rejected";
pub const CONFIG_LOADED: &str = "faas_mesh_filter.config.loaded";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            name("env", "requests"),
            "faas_mesh_filter.function.env.requests"
        );
        assert_eq!(
            name("", "requests"),
            "faas_mesh_filter.function.unknown.requests"
        );
        assert_eq!(
            policy_reason("env", "method", "denied"),
            "faas_mesh_filter.function.env.policy.reason.method.denied"
        );
    }
}
