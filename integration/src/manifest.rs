//! The patches of `envoyfilter/envoyfilter.yaml`, the manifest operators apply. The test Envoy is
//! built from them, so what is tested is what ships.

use serde_json::Value;
use std::path::Path;

/// The patches of the manifest: three it must carry, and the connection manager's settings.
#[derive(Debug, Clone)]
pub struct Patches {
    /// CLUSTER (SIDECAR_INBOUND): the local cluster the readiness probe uses.
    pub cluster: Value,
    /// EXTENSION_CONFIG: `{name, typed_config}` of the filter (Wasm, or dynamic module).
    pub extension_config: Value,
    /// HTTP_FILTER (SIDECAR_INBOUND, INSERT_BEFORE the router): `{name, config_discovery}`.
    pub http_filter: Value,
    /// NETWORK_FILTER (SIDECAR_INBOUND, MERGE into the connection manager): the settings merged
    /// into its `typed_config` (`request_timeout`), without `@type`.
    pub connection_manager: serde_json::Map<String, Value>,
}

impl Patches {
    /// Reads the manifest in this repository.
    pub fn from_repository() -> Result<Self, String> {
        Self::load(&crate::repo_root().join("envoyfilter/envoyfilter.yaml"))
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let doc: Value = serde_yaml::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
        if doc["kind"] != "EnvoyFilter" || doc["apiVersion"] != "networking.istio.io/v1alpha3" {
            return Err("not a networking.istio.io/v1alpha3 EnvoyFilter".into());
        }
        let patches = doc["spec"]["configPatches"]
            .as_array()
            .ok_or("spec.configPatches is not a list")?;
        let find = |apply_to: &str| -> Result<&Value, String> {
            let mut found = patches.iter().filter(|p| p["applyTo"] == apply_to);
            let patch = found.next().ok_or_else(|| format!("no {apply_to} patch"))?;
            if found.next().is_some() {
                return Err(format!("more than one {apply_to} patch"));
            }
            Ok(patch)
        };

        let cluster = find("CLUSTER")?;
        expect(cluster, "/match/context", "SIDECAR_INBOUND")?;
        expect(cluster, "/patch/operation", "ADD")?;
        let extension = find("EXTENSION_CONFIG")?;
        expect(extension, "/patch/operation", "ADD")?;
        let filter = find("HTTP_FILTER")?;
        expect(filter, "/match/context", "SIDECAR_INBOUND")?;
        expect(filter, "/patch/operation", "INSERT_BEFORE")?;
        expect(
            filter,
            "/match/listener/filterChain/filter/subFilter/name",
            "envoy.filters.http.router",
        )?;
        // Optional (an older manifest has none): the connection manager's settings.
        let mut connection_manager = serde_json::Map::new();
        if patches.iter().any(|p| p["applyTo"] == "NETWORK_FILTER") {
            let manager = find("NETWORK_FILTER")?;
            expect(manager, "/match/context", "SIDECAR_INBOUND")?;
            expect(manager, "/patch/operation", "MERGE")?;
            expect(
                manager,
                "/match/listener/filterChain/filter/name",
                "envoy.filters.network.http_connection_manager",
            )?;
            connection_manager = manager["patch"]["value"]["typed_config"]
                .as_object()
                .cloned()
                .ok_or("NETWORK_FILTER patch: no typed_config")?;
            connection_manager.remove("@type");
        }
        let patches = Patches {
            connection_manager,
            cluster: cluster["patch"]["value"].clone(),
            extension_config: extension["patch"]["value"].clone(),
            http_filter: filter["patch"]["value"].clone(),
        };
        if patches.http_filter["name"] != patches.extension_config["name"] {
            return Err("the HTTP_FILTER patch does not name the EXTENSION_CONFIG".into());
        }
        Ok(patches)
    }

    /// The name Envoy knows the filter by (ECDS resource name, stats prefix).
    pub fn filter_name(&self) -> String {
        self.extension_config["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The plugin configuration the manifest carries: the Wasm filter's `configuration`, or the
    /// dynamic-modules filter's `filter_config` (a StringValue either way).
    pub fn plugin_config(&self) -> Option<&str> {
        let typed_config = &self.extension_config["typed_config"];
        typed_config["config"]["configuration"]["value"]
            .as_str()
            .or_else(|| typed_config["filter_config"]["value"].as_str())
    }

    /// The readiness cluster's name.
    pub fn cluster_name(&self) -> String {
        self.cluster["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

fn expect(patch: &Value, pointer: &str, want: &str) -> Result<(), String> {
    match patch.pointer(pointer) {
        Some(v) if v == want => Ok(()),
        other => Err(format!(
            "{} patch: {pointer} should be {want:?}, is {other:?}",
            patch["applyTo"]
        )),
    }
}

/// The bootstrap override shipped in `envoyfilter/observability.yaml` (`custom_bootstrap.json`,
/// which Istio merges into a sidecar's bootstrap): its stats tag-extraction rules, and whatever
/// else it sets.
pub fn bootstrap_override() -> Result<Value, String> {
    let path = crate::repo_root().join("envoyfilter/observability.yaml");
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let doc: Value = serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let bootstrap = doc["data"]["custom_bootstrap.json"]
        .as_str()
        .ok_or("observability.yaml: no data.custom_bootstrap.json")?;
    let bootstrap: Value = serde_json::from_str(bootstrap)
        .map_err(|e| format!("observability.yaml: custom_bootstrap.json is not JSON: {e}"))?;
    if !bootstrap.is_object() {
        return Err("observability.yaml: custom_bootstrap.json is not an object".into());
    }
    Ok(bootstrap)
}

/// Merges `over` into `base` as Istio merges a bootstrap override (protobuf merge on the JSON
/// form): objects field by field, lists appended, anything else replaced.
pub fn merge_bootstrap(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                match base.get_mut(key) {
                    Some(existing) => merge_bootstrap(existing, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Array(base), Value::Array(over)) => base.extend(over.iter().cloned()),
        (base, over) => *base = over.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_override_merges_as_protobuf_does() {
        let mut base = json!({"a": {"b": 1, "c": [1]}, "d": "x"});
        merge_bootstrap(&mut base, &json!({"a": {"c": [2], "e": true}, "d": "y"}));
        assert_eq!(
            base,
            json!({"a": {"b": 1, "c": [1, 2], "e": true}, "d": "y"})
        );
    }

    #[test]
    fn the_shipped_override_carries_tag_rules() {
        let over = bootstrap_override().expect("observability.yaml");
        assert!(over["stats_config"]["stats_tags"].as_array().is_some());
    }
}
