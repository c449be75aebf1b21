//! The compiled configuration of one pod: everything a request needs, resolved once in
//! `on_configure` from the operator's configuration and what the sidecar knows about its pod.

use crate::config::{
    Config, ConfigError, FunctionSection, HeadersSection, ReadinessSection, TracingSection,
};
use crate::policy::{Policy, PolicyRules};
use crate::rewrite::Rewriter;

/// What Istio tells the sidecar about its pod (node metadata), read once at configure time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// The value of the pod label named by `function.name_label`.
    pub label_value: Option<String>,
    /// `xds.node.metadata.NAMESPACE`.
    pub namespace: Option<String>,
    /// `xds.node.metadata.ANNOTATIONS` (name, value): the function's own narrowing rules are
    /// those under [`crate::annotations::PREFIX`].
    pub annotations: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The local function, if known. Replies name it; the rewrite compares paths to it.
    pub function: Option<String>,
    pub namespace: Option<String>,
    pub rewriter: Rewriter,
    pub headers: HeadersSection,
    /// The effective policy of the local function: `policy.default` overridden key by key by
    /// its entry in `policy.functions`, compiled.
    pub policy: Policy,
    /// Which trace formats are read and written.
    pub tracing: TracingSection,
    /// The readiness gate's settings; `None` when `readiness.enabled` is false.
    pub readiness: Option<ReadinessSection>,
    /// Hold the headers of a request whose body must be counted until the body is complete
    /// (`envoy.allow_on_headers_stop_iteration`).
    pub hold_unsized_bodies: bool,
    /// The OpenFaaS gateway's SPIFFE identity (`rewrite.gateway_principal`): its requests are
    /// not rewritten again and keep its start time.
    pub gateway_principal: Option<String>,
    /// The rules `policy` was compiled from: `policy.default`, the function's entry, then its
    /// annotations (what a reviewer reads in the checker).
    pub rules: PolicyRules,
    /// What became of each of the pod's `com.openfaas.mesh.*` annotations.
    pub annotations: Vec<crate::annotations::Outcome>,
    /// Things worth one log line at start-up (not errors).
    pub notices: Vec<String>,
}

impl Plan {
    /// The local function: `function.name`, else the pod label when it is a function name.
    pub fn local_function(function: &FunctionSection, pod: &PodInfo) -> Option<String> {
        match (&function.name, &pod.label_value) {
            (Some(name), _) => Some(name.clone()),
            (None, Some(label)) if crate::config::is_function_name(label) => Some(label.clone()),
            _ => None,
        }
    }

    pub fn compile(config: &Config, pod: &PodInfo) -> Result<Plan, ConfigError> {
        let mut notices = Vec::new();
        let function = match (&config.function.name, &pod.label_value) {
            (Some(_), _) => Plan::local_function(&config.function, pod),
            (None, Some(label)) if crate::config::is_function_name(label) => Some(label.clone()),
            (None, Some(label)) => {
                notices.push(format!(
                    "pod label {} is {:?}, which is not a function name; treating the local \
                     function as unknown",
                    config.function.name_label, label
                ));
                None
            }
            (None, None) => {
                notices.push(format!(
                    "no function.name configured and no pod label {} in the node metadata; \
                     the local function is unknown, so /function/<name> paths answer 404 \
                     unless rewrite.other_function is \"pass\"",
                    config.function.name_label
                ));
                None
            }
        };
        let namespace = pod.namespace.clone().filter(|ns| !ns.is_empty());
        let rules = match function
            .as_ref()
            .and_then(|f| config.policy.functions.get(f))
        {
            Some(entry) => config.policy.default.merged_with(entry),
            None => config.policy.default.clone(),
        };
        let (rules, mut annotations) = crate::annotations::narrow(&rules, &pod.annotations);
        // The function's own readiness path (OpenFaaS's annotation) takes precedence over
        // `readiness.path`; a bad one is refused and `readiness.path` stays.
        let mut readiness = config.readiness.enabled.then(|| config.readiness.clone());
        match (
            crate::annotations::ready_path(&pod.annotations),
            &mut readiness,
        ) {
            (None, _) => {}
            (Some(_), None) => notices.push(format!(
                "annotation {} not used: the readiness gate is off",
                crate::annotations::READY_PATH
            )),
            (Some(outcome), Some(r)) => {
                if let Ok(path) = outcome {
                    r.path = path.to_string();
                }
                annotations.push(crate::annotations::Outcome {
                    annotation: crate::annotations::READY_PATH.to_string(),
                    refused: outcome.err(),
                });
            }
        }
        let policy = Policy::compile(&rules);
        let rules_shown = rules.clone();
        Ok(Plan {
            rewriter: Rewriter::new(
                &config.rewrite.prefix,
                function.as_deref(),
                namespace.as_deref(),
                config.rewrite.other_function,
            ),
            function,
            namespace,
            headers: config.headers.clone(),
            policy,
            tracing: config.tracing,
            readiness,
            hold_unsized_bodies: config.envoy.allow_on_headers_stop_iteration,
            gateway_principal: config.rewrite.gateway_principal.clone(),
            annotations,
            rules: rules_shown,
            notices,
        })
    }

    /// The name replies carry in their `function` field.
    pub fn function_or_empty(&self) -> &str {
        self.function.as_deref().unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotations::{BAD_READY_PATH, READY_PATH};

    fn plan(config: &str, annotations: &[(&str, &str)]) -> Plan {
        let pod = PodInfo {
            label_value: Some("env".into()),
            namespace: None,
            annotations: annotations
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        };
        Plan::compile(&Config::parse(config.as_bytes()).unwrap(), &pod).unwrap()
    }

    fn probed(plan: &Plan) -> &str {
        &plan.readiness.as_ref().unwrap().path
    }

    #[test]
    fn the_functions_readiness_path_annotation_wins_over_readiness_path() {
        assert_eq!(probed(&plan("{}", &[])), "/_/ready");
        let p = plan("{}", &[(READY_PATH, "/ready")]);
        assert_eq!(probed(&p), "/ready");
        assert_eq!(p.annotations[0].refused, None);
        let p = plan(
            r#"{"readiness": {"path": "/_/health"}}"#,
            &[(READY_PATH, "/healthz")],
        );
        assert_eq!(probed(&p), "/healthz");
    }

    #[test]
    fn a_bad_readiness_path_annotation_is_refused_and_readiness_path_stays() {
        for config in ["{}", r#"{"readiness": {"path": "/_/health"}}"#] {
            let before = probed(&plan(config, &[])).to_string();
            let p = plan(config, &[(READY_PATH, "ready now")]);
            assert_eq!(probed(&p), before);
            assert_eq!(p.annotations.len(), 1);
            assert_eq!(p.annotations[0].annotation, READY_PATH);
            assert_eq!(p.annotations[0].refused, Some(BAD_READY_PATH));
        }
        // With the gate off it is not used, and says so.
        let p = plan(
            r#"{"readiness": {"enabled": false}}"#,
            &[(READY_PATH, "/r")],
        );
        assert!(p.readiness.is_none() && p.annotations.is_empty());
        assert!(p.notices.iter().any(|n| n.contains("gate is off")));
    }
}
