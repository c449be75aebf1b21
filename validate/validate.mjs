// Validates Kubernetes manifests offline against their schemas: Istio's CRDs
// (@kubernetes-models/istio, Istio 1.29) and core kinds (kubernetes-models).
//
//   node validate/validate.mjs <file.yaml>...      exit 0: every document valid
//
// Each document must be a kind this script knows; an unknown kind is an error, not a pass.
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import { EnvoyFilter } from "@kubernetes-models/istio/networking.istio.io/v1alpha3/EnvoyFilter";
import { WasmPlugin } from "@kubernetes-models/istio/extensions.istio.io/v1alpha1/WasmPlugin";
import { ProxyConfig } from "@kubernetes-models/istio/networking.istio.io/v1beta1/ProxyConfig";
import { ConfigMap } from "kubernetes-models/v1/ConfigMap";
import { Service } from "kubernetes-models/v1/Service";
import { Deployment } from "kubernetes-models/apps/v1/Deployment";

const kinds = {
  "networking.istio.io/v1alpha3 EnvoyFilter": EnvoyFilter,
  "extensions.istio.io/v1alpha1 WasmPlugin": WasmPlugin,
  "networking.istio.io/v1beta1 ProxyConfig": ProxyConfig,
  "v1 ConfigMap": ConfigMap,
  "v1 Service": Service,
  "apps/v1 Deployment": Deployment,
};

let failures = 0;
let checked = 0;
for (const file of process.argv.slice(2)) {
  const docs = parseAllDocuments(readFileSync(file, "utf8"));
  for (const [i, doc] of docs.entries()) {
    const where = `${file} (document ${i + 1})`;
    if (doc.errors.length > 0) {
      console.error(`${where}: not YAML: ${doc.errors[0].message}`);
      failures++;
      continue;
    }
    const obj = doc.toJS();
    if (obj === null) continue;
    const Model = kinds[`${obj.apiVersion} ${obj.kind}`];
    if (!Model) {
      console.error(`${where}: unknown kind ${obj.apiVersion} ${obj.kind}`);
      failures++;
      continue;
    }
    try {
      new Model(obj).validate();
      checked++;
      console.log(`${where}: ${obj.kind} ${obj.metadata?.name}: valid`);
    } catch (e) {
      console.error(`${where}: ${obj.kind} ${obj.metadata?.name}: ${e.message}`);
      failures++;
    }
  }
}
if (checked === 0 && failures === 0) {
  console.error("no manifests given");
  process.exit(2);
}
process.exit(failures === 0 ? 0 : 1);
