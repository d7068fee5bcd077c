// Validates custom resources the Kubernetes OpenAPI schema (kubernetes-validate) does not
// cover: Argo CD Applications and Prometheus Operator ServiceMonitors.
//
//   node validate-crds.mjs < resources.json      # [{"name": "...", "object": {...}}, ...]
//
// Two checks per resource, both from the upstream projects' own schemas as packaged by
// kubernetes-models (npm):
//   1. schema: the JSON Schema validator generated from the CRD / Go types (required fields,
//      types, enums, patterns such as Prometheus durations);
//   2. strict: the resource as a TypeScript object literal typed with the same models, so the
//      compiler reports every unknown field (the API server would silently prune it).
// Prints {"errors": ["name: message", ...]} and exits 1 when there is any error.

import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import { Application } from "@kubernetes-models/argo-cd/argoproj.io/v1alpha1/Application";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const KINDS = {
  "argoproj.io/v1alpha1/Application": {
    model: Application,
    module: "@kubernetes-models/argo-cd/argoproj.io/v1alpha1/Application",
    type: "IApplication",
  },
  "monitoring.coreos.com/v1/ServiceMonitor": {
    model: ServiceMonitor,
    module: "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor",
    type: "IServiceMonitor",
  },
};

const here = dirname(fileURLToPath(import.meta.url));
const resources = JSON.parse(readFileSync(0, "utf8"));
const errors = [];

// 1. Schema validation.
const typed = [];
for (const [i, { name, object }] of resources.entries()) {
  const key = `${object.apiVersion}/${object.kind}`;
  const kind = KINDS[key];
  if (!kind) {
    errors.push(`${name}: no schema for ${key}`);
    continue;
  }
  try {
    new kind.model(object).validate();
  } catch (e) {
    errors.push(`${name}: schema: ${e.message}`);
  }
  typed.push({ i, name, kind, object });
}

// 2. Strict typing of the same objects, compiled in memory next to node_modules.
const file = join(here, "__resources__.ts");
const lines = [];
const origin = new Map(); // line number -> resource name
for (const kind of new Set(typed.map((t) => t.kind))) {
  lines.push(`import type { ${kind.type} } from "${kind.module}";`);
}
for (const { i, name, kind, object } of typed) {
  origin.set(lines.length, name);
  lines.push(`export const r${i}: ${kind.type} = ${JSON.stringify(object)};`);
}
const source = lines.join("\n") + "\n";
const options = {
  strict: true,
  noEmit: true,
  skipLibCheck: true,
  target: ts.ScriptTarget.ES2022,
  module: ts.ModuleKind.NodeNext,
  moduleResolution: ts.ModuleResolutionKind.NodeNext,
  types: [],
};
const host = ts.createCompilerHost(options);
const getSourceFile = host.getSourceFile.bind(host);
host.getSourceFile = (path, version, ...rest) =>
  path === file ? ts.createSourceFile(path, source, version) : getSourceFile(path, version, ...rest);
const fileExists = host.fileExists.bind(host);
host.fileExists = (path) => path === file || fileExists(path);
const program = ts.createProgram([file], options, host);
for (const d of ts.getPreEmitDiagnostics(program)) {
  const text = ts.flattenDiagnosticMessageText(d.messageText, "\n");
  if (d.file && d.file.fileName === file && d.start !== undefined) {
    const { line } = d.file.getLineAndCharacterOfPosition(d.start);
    errors.push(`${origin.get(line) ?? "resources"}: strict: ${text}`);
  } else {
    errors.push(`typescript: ${text}`);
  }
}

process.stdout.write(JSON.stringify({ checked: resources.length, errors }) + "\n");
process.exit(errors.length ? 1 : 0);
