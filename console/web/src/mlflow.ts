// The MLflow REST API as this server speaks it (/api/2.0/mlflow/…, /api/2.0/mlflow-artifacts/…),
// typed for what the registry pages read.
import { getJson, postJson, withQuery } from "./api";

export interface KeyValue {
  key: string;
  value: string;
}

export interface Metric {
  key: string;
  value: number;
  timestamp: number;
  step: number;
}

export interface Experiment {
  experiment_id: string;
  name: string;
  artifact_location?: string;
  lifecycle_stage?: string;
  creation_time?: number;
  last_update_time?: number;
  tags?: KeyValue[];
}

export interface RunInfo {
  run_id: string;
  run_name?: string;
  experiment_id: string;
  status: string;
  start_time?: number;
  end_time?: number;
  artifact_uri?: string;
  lifecycle_stage?: string;
  user_id?: string;
}

export interface Run {
  info: RunInfo;
  data: { metrics?: Metric[]; params?: KeyValue[]; tags?: KeyValue[] };
}

export interface ModelVersion {
  name: string;
  version: string;
  creation_timestamp?: number;
  last_updated_timestamp?: number;
  current_stage?: string;
  description?: string;
  source?: string;
  run_id?: string;
  run_link?: string;
  status?: string;
  status_message?: string;
  tags?: KeyValue[];
  aliases?: string[];
}

export interface RegisteredModel {
  name: string;
  creation_timestamp?: number;
  last_updated_timestamp?: number;
  description?: string;
  latest_versions?: ModelVersion[];
  tags?: KeyValue[];
  aliases?: { alias: string; version: string }[];
}

export interface FileInfo {
  path: string;
  is_dir: boolean;
  file_size?: number;
}

const API = "/api/2.0/mlflow";

/** A string literal of MLflow's filter grammar. */
export function quote(value: string): string {
  if (!value.includes("'")) return `'${value}'`;
  if (!value.includes('"')) return `"${value}"`;
  throw new Error(`cannot quote ${value} in an MLflow filter`);
}

export const mlflow = {
  searchExperiments: (body: { max_results: number; page_token?: string; filter?: string; order_by?: string[] }, signal?: AbortSignal) =>
    postJson<{ experiments?: Experiment[]; next_page_token?: string }>(`${API}/experiments/search`, body, signal),
  getExperiment: (id: string, signal?: AbortSignal) =>
    getJson<{ experiment: Experiment }>(withQuery(`${API}/experiments/get`, { experiment_id: id }), signal),
  searchRuns: (
    body: { experiment_ids: string[]; filter?: string; order_by?: string[]; max_results: number; page_token?: string },
    signal?: AbortSignal,
  ) => postJson<{ runs?: Run[]; next_page_token?: string }>(`${API}/runs/search`, { run_view_type: "ACTIVE_ONLY", ...body }, signal),
  getRun: (id: string, signal?: AbortSignal) => getJson<{ run: Run }>(withQuery(`${API}/runs/get`, { run_id: id }), signal),
  metricHistory: async (runId: string, key: string, signal?: AbortSignal) => {
    const points: Metric[] = [];
    let token: string | undefined;
    do {
      const page = await getJson<{ metrics?: Metric[]; next_page_token?: string }>(
        withQuery(`${API}/metrics/get-history`, { run_id: runId, metric_key: key, max_results: 25000, page_token: token }),
        signal,
      );
      points.push(...(page.metrics ?? []));
      token = page.next_page_token;
    } while (token);
    return points;
  },
  searchModels: (query: { filter?: string; max_results: number; page_token?: string; order_by?: string }, signal?: AbortSignal) =>
    getJson<{ registered_models?: RegisteredModel[]; next_page_token?: string }>(withQuery(`${API}/registered-models/search`, query), signal),
  getModel: (name: string, signal?: AbortSignal) =>
    getJson<{ registered_model: RegisteredModel }>(withQuery(`${API}/registered-models/get`, { name }), signal),
  searchVersions: (name: string, signal?: AbortSignal) =>
    getJson<{ model_versions?: ModelVersion[] }>(
      withQuery(`${API}/model-versions/search`, { filter: `name = ${quote(name)}`, max_results: 10000 }),
      signal,
    ),
  getVersion: (name: string, version: string, signal?: AbortSignal) =>
    getJson<{ model_version: ModelVersion }>(withQuery(`${API}/model-versions/get`, { name, version }), signal),
  setAlias: (name: string, alias: string, version: string) => postJson(`${API}/registered-models/alias`, { name, alias, version }),
  listArtifacts: (path: string, signal?: AbortSignal) =>
    getJson<{ files?: FileInfo[] }>(withQuery("/api/2.0/mlflow-artifacts/artifacts", { path }), signal),
  /** The download address of an artifact below the proxy's root. */
  artifactPath: (path: string) => `/api/2.0/mlflow-artifacts/artifacts/${path.split("/").map(encodeURIComponent).join("/")}`,
};

/** Where a run's artifacts are in the artifact proxy (`mlflow-artifacts:/1/<run>/artifacts`
 * → `1/<run>/artifacts`); null when they are stored elsewhere. */
export function proxiedRoot(uri: string | undefined): string | null {
  if (!uri?.startsWith("mlflow-artifacts:")) return null;
  return uri.replace(/^mlflow-artifacts:\/*/, "").replace(/\/+$/, "");
}

/** Tags MLflow sets itself (`mlflow.*`), shown apart from the user's. */
export const isSystemTag = (key: string) => key.startsWith("mlflow.");
