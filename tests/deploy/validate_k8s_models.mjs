// Validates Kubernetes custom resources (Istio's WasmPlugin, Gateway API's
// HTTPRoute and Gateway) against the published schemas that the npm packages
// @kubernetes-models/istio (generated from Istio's CRDs) and
// @kubernetes-models/gateway-api (Gateway API's OpenAPI schemas) ship.
//
//   node validate_k8s_models.mjs FILE.json
//
// FILE.json holds a JSON array of objects (YAML documents already parsed by
// the Python side). Prints one JSON line per object: {"index", "kind", "ok",
// "errors": [...]}; exits 1 when any object is invalid.
//
// The generated schemas do not reject unknown fields (Kubernetes prunes them
// silently, which is how a typo such as `failstrategy` would go unnoticed),
// so every field name used under `spec` is also looked up in the field names
// of the package's type declarations for that API group. Free-form maps
// (labels, pluginConfig) are not walked.

import { readFileSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { WasmPlugin } from "@kubernetes-models/istio/extensions.istio.io/v1alpha1/WasmPlugin";
import { HTTPRoute } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute";
import { Gateway } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/Gateway";

const require = createRequire(import.meta.url);

function packageDir(name) {
  return dirname(require.resolve(`${name}/package.json`));
}

// Every quoted property name ("name": or "name"?:) in the .d.ts files of `dir`.
function declaredFieldNames(dir, filter = () => true) {
  const names = new Set();
  for (const file of readdirSync(dir)) {
    if (!file.endsWith(".d.ts") || !filter(file)) continue;
    const text = readFileSync(join(dir, file), "utf8");
    for (const m of text.matchAll(/"([A-Za-z0-9_$-]+)"\??:/g)) names.add(m[1]);
  }
  return names;
}

const MODELS = {
  "extensions.istio.io/v1alpha1/WasmPlugin": {
    model: WasmPlugin,
    fields: declaredFieldNames(join(packageDir("@kubernetes-models/istio"), "extensions.istio.io", "v1alpha1"), (f) =>
      f.startsWith("WasmPlugin"),
    ),
    // Values that are maps of user data, not API fields.
    opaque: ["spec.pluginConfig", "spec.selector.matchLabels"],
  },
  "gateway.networking.k8s.io/v1/HTTPRoute": {
    model: HTTPRoute,
    fields: declaredFieldNames(join(packageDir("@kubernetes-models/gateway-api"), "gateway.networking.k8s.io", "v1")),
    opaque: [],
  },
  "gateway.networking.k8s.io/v1/Gateway": {
    model: Gateway,
    fields: declaredFieldNames(join(packageDir("@kubernetes-models/gateway-api"), "gateway.networking.k8s.io", "v1")),
    opaque: ["spec.infrastructure.labels", "spec.infrastructure.annotations"],
  },
};

function unknownFields(value, path, known, opaque, out) {
  if (opaque.includes(path)) return;
  if (Array.isArray(value)) {
    value.forEach((v, i) => unknownFields(v, path, known, opaque, out));
  } else if (value && typeof value === "object") {
    for (const [k, v] of Object.entries(value)) {
      const p = path ? `${path}.${k}` : k;
      if (!known.has(k)) out.push(`${p}: unknown field \`${k}\``);
      unknownFields(v, p, known, opaque, out);
    }
  }
}

const docs = JSON.parse(readFileSync(process.argv[2], "utf8"));
let failed = false;
docs.forEach((doc, index) => {
  const key = `${doc.apiVersion}/${doc.kind}`;
  const entry = MODELS[key];
  const errors = [];
  if (!entry) {
    errors.push(`no validator for ${key} (known: ${Object.keys(MODELS).join(", ")})`);
  } else {
    try {
      new entry.model(doc).validate();
    } catch (e) {
      errors.push(String(e.message || e));
    }
    unknownFields(doc.spec, "spec", entry.fields, entry.opaque, errors);
  }
  failed ||= errors.length > 0;
  console.log(JSON.stringify({ index, kind: key, ok: errors.length === 0, errors }));
});
process.exit(failed ? 1 : 0);
