// Models being served: every model and version with its state and reason (the repository
// index), how it is served (its config: platform/backend, batching, instances), and live
// request rate, p50/p99 latency, queue time and batch size from the server's metrics.
import { Link } from "wouter-preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { getJson, postJson, call } from "../api";
import { usePoll } from "../hooks";
import { figures, snapshot, type Snapshot, type VersionFigures } from "../metrics";
import { formatMs, formatNumber } from "../format";
import { useSession } from "../session";
import { ActionButton, ErrorBox, Grid, KeyValues, Loading, numeric, Section, Status } from "../components/ui";
import { Chart } from "../components/chart";

/** One row of POST /v2/repository/index. */
export interface IndexEntry {
  name: string;
  version?: string;
  state?: string;
  reason?: string;
}

/** The parts of a model config (GET /v2/models/{m}/config) the pages show. */
export interface ModelConfig {
  name?: string;
  platform?: string;
  backend?: string;
  max_batch_size?: number;
  input?: { name: string; data_type: string; dims: (number | string)[] }[];
  output?: { name: string; data_type: string; dims: (number | string)[] }[];
  instance_group?: { kind?: string; count?: number; gpus?: number[] }[];
  dynamic_batching?: { preferred_batch_size?: number[]; max_queue_delay_microseconds?: number | string };
  [key: string]: unknown;
}

const METRICS_INTERVAL_MS = 2000;
/** Points of history kept per version for the charts (five minutes at one per 2 s). */
const HISTORY = 150;

export interface History {
  t: number[];
  rate: number[];
  p50: (number | null)[];
  p99: (number | null)[];
}

/** Polls the server's metrics and keeps each version's latest figures and their history. */
export function useServingFigures() {
  const last = useRef<Snapshot | null>(null);
  const history = useRef(new Map<string, History>());
  const [latest, setLatest] = useState<Map<string, VersionFigures>>(new Map());
  const metrics = usePoll(
    async (signal) => {
      const now = snapshot(await getJson("/api/v1/metrics", signal), Date.now());
      const before = last.current;
      last.current = now;
      if (!before) return;
      const current = new Map<string, VersionFigures>();
      for (const f of figures(before, now)) {
        const key = `${f.model}/${f.version}`;
        current.set(key, f);
        const h = history.current.get(key) ?? { t: [], rate: [], p50: [], p99: [] };
        h.t.push(now.at / 1000);
        h.rate.push(f.requestsPerSec);
        h.p50.push(f.p50 === null ? null : f.p50 * 1000);
        h.p99.push(f.p99 === null ? null : f.p99 * 1000);
        if (h.t.length > HISTORY) for (const series of Object.values(h)) series.shift();
        history.current.set(key, h);
      }
      setLatest(current);
    },
    [],
    METRICS_INTERVAL_MS,
  );
  return { latest, history: history.current, error: metrics.error };
}

/** Configs of the models that have a ready version, fetched once per model. */
function useConfigs(names: string[]) {
  const [configs, setConfigs] = useState<Record<string, ModelConfig | Error>>({});
  useEffect(() => {
    for (const name of names) {
      if (configs[name]) continue;
      getJson<ModelConfig>(`/v2/models/${encodeURIComponent(name)}/config`)
        .then((c) => setConfigs((all) => ({ ...all, [name]: c })))
        .catch((e) => setConfigs((all) => ({ ...all, [name]: e })));
    }
  }, [names.join("\u0000")]);
  return configs;
}

export function placement(config: ModelConfig | undefined): string {
  const groups = config?.instance_group ?? [];
  if (!groups.length) return "—";
  return groups
    .map((g) => `${g.count ?? 1}× ${(g.kind ?? "KIND_AUTO").replace("KIND_", "")}${g.gpus?.length ? ` (GPU ${g.gpus.join(",")})` : ""}`)
    .join(", ");
}

export function runtime(config: ModelConfig | undefined): string {
  if (!config) return "—";
  return [config.platform, config.backend].filter(Boolean).join(" / ") || "—";
}

export function batching(config: ModelConfig | undefined): string {
  if (!config) return "—";
  const max = config.max_batch_size ?? 0;
  if (!max) return "no batching";
  const dynamic = config.dynamic_batching;
  if (!dynamic) return `max ${max}`;
  const delay = Number(dynamic.max_queue_delay_microseconds ?? 0);
  return `max ${max}, dynamic (≤ ${delay} µs)`;
}

export function ServingPage() {
  const session = useSession();
  const index = usePoll((signal) => postJson<IndexEntry[]>("/v2/repository/index", {}, signal), [], 3000);
  const live = useServingFigures();
  const entries = index.data ?? [];
  const ready = [...new Set(entries.filter((e) => e.state === "READY").map((e) => e.name))];
  const configs = useConfigs(ready);
  const control = session.can("model_control") && controlsModels(session.modelControlMode);

  return (
    <div class="page">
      <h1>Models</h1>
      <p class="lead">
        What this server serves, with each version's state and the live figures from its own metrics (refreshed every{" "}
        {METRICS_INTERVAL_MS / 1000} s; rates and percentiles are over the last interval).
        {session.can("model_control") && !control && " Models load at start-up (model control mode " + session.modelControlMode + "); start with --model-control-mode explicit or on-demand to load and unload them here."}
      </p>
      <ErrorBox error={index.error} />
      <ErrorBox error={live.error} />
      {index.loading && !index.data ? (
        <Loading />
      ) : (
        <Section title={`${new Set(entries.map((e) => e.name)).size} models`}>
          <Grid testId="serving-models" columns={["Model", "Version", "State", "Runtime", "Batching", "Placement", numeric("req/s"), numeric("p50"), numeric("p99"), numeric("queue"), numeric("batch"), control && ""]}>
              {entries.map((e) => {
                const config = configs[e.name];
                const c = config instanceof Error ? undefined : config;
                const f = live.latest.get(`${e.name}/${e.version}`);
                return (
                  <tr key={`${e.name}/${e.version}`} data-model={e.name} data-version={e.version ?? ""}>
                    <td>
                      <Link href={`/serving/${encodeURIComponent(e.name)}`}>{e.name}</Link>
                    </td>
                    <td>{e.version || "—"}</td>
                    <td>
                      <Status value={e.state} />
                      {e.reason && <div class="reason">{e.reason}</div>}
                    </td>
                    <td>{runtime(c)}</td>
                    <td>{batching(c)}</td>
                    <td>{placement(c)}</td>
                    <td class="num" data-testid="rate">{f ? formatNumber(f.requestsPerSec, 3) : "—"}</td>
                    <td class="num">{formatMs(f?.p50)}</td>
                    <td class="num" data-testid="p99">{formatMs(f?.p99)}</td>
                    <td class="num">{f?.queueMs == null ? "—" : `${formatNumber(f.queueMs, 3)} ms`}</td>
                    <td class="num">{formatNumber(f?.batchSize, 3)}</td>
                    {control && (
                      <td>
                        <ControlButtons model={e.name} loaded={e.state === "READY"} onDone={index.reload} />
                      </td>
                    )}
                  </tr>
                );
              })}
          </Grid>
        </Section>
      )}
    </div>
  );
}

/** Whether the repository API loads and unloads in this model control mode (explicit, and
 * on-demand, which also loads a model when a request asks for it): elsewhere nothing is offered. */
function controlsModels(mode: string | null): boolean {
  return mode === "explicit" || mode === "on-demand";
}

/** Load or unload (Triton's repository API), for roles with model control. The server
 * refuses both unless it runs with --model-control-mode explicit or on-demand, and says so. */
export function ControlButtons({ model, loaded, onDone }: { model: string; loaded: boolean; onDone: () => void }) {
  const path = (what: string) => `/v2/repository/models/${encodeURIComponent(model)}/${what}`;
  return loaded ? (
    <ActionButton label="Unload" danger run={async () => (await call(path("unload"), { json: {} }), onDone())} />
  ) : (
    <ActionButton label="Load" run={async () => (await call(path("load"), { json: {} }), onDone())} />
  );
}

export function ServingModelPage({ model }: { model: string }) {
  const session = useSession();
  const index = usePoll((signal) => postJson<IndexEntry[]>("/v2/repository/index", {}, signal), [], 3000);
  const versions = (index.data ?? []).filter((e) => e.name === model);
  const ready = versions.some((v) => v.state === "READY");
  // Only a loaded model's config: in on-demand mode asking for another's would load it.
  const config = usePoll(
    (signal) =>
      ready ? getJson<ModelConfig>(`/v2/models/${encodeURIComponent(model)}/config`, signal) : Promise.resolve(null),
    [model, ready],
  );
  const live = useServingFigures();
  const c = config.data;
  return (
    <div class="page">
      <p class="crumbs">
        <Link href="/serving">Models</Link> /
      </p>
      <h1>{model}</h1>
      <ErrorBox error={index.error} />
      <Section
        title="Versions"
        actions={
          session.can("model_control") &&
          controlsModels(session.modelControlMode) && (
            <ControlButtons model={model} loaded={ready} onDone={index.reload} />
          )
        }
      >
        <Grid columns={["Version", "State", "Reason"]}>
            {versions.map((v) => (
              <tr key={v.version}>
                <td>{v.version}</td>
                <td>
                  <Status value={v.state} />
                </td>
                <td>{v.reason || "—"}</td>
              </tr>
            ))}
        </Grid>
      </Section>
      <ErrorBox error={live.error} />
      {versions.map((v) => {
        const h = live.history.get(`${model}/${v.version}`);
        if (!h || h.t.length < 2) return null;
        return (
          <Section key={v.version} title={`Version ${v.version}: live`}>
            <div class="charts">
              <Chart title="requests / s" x={h.t} time series={[{ label: "req/s", values: h.rate }]} />
              <Chart
                title="latency (ms)"
                x={h.t}
                time
                series={[
                  { label: "p50", values: h.p50 },
                  { label: "p99", values: h.p99 },
                ]}
              />
            </div>
          </Section>
        );
      })}
      <Section title="Configuration">
        <ErrorBox error={config.error} />
        {c && (
          <>
            <KeyValues
              entries={[
                ["Runtime", runtime(c)],
                ["Batching", batching(c)],
                ["Placement", placement(c)],
              ]}
            />
            <h3>Inputs and outputs</h3>
            <Grid columns={["", "Name", "Type", "Shape"]}>
                {[...(c.input ?? []).map((t) => ["input", t] as const), ...(c.output ?? []).map((t) => ["output", t] as const)].map(
                  ([kind, t]) => (
                    <tr key={`${kind}/${t.name}`}>
                      <td>{kind}</td>
                      <td>{t.name}</td>
                      <td>{t.data_type?.replace("TYPE_", "")}</td>
                      <td>[{(t.dims ?? []).join(", ")}]</td>
                    </tr>
                  ),
                )}
            </Grid>
            <details>
              <summary>Full configuration (JSON)</summary>
              <pre>{JSON.stringify(c, null, 2)}</pre>
            </details>
          </>
        )}
      </Section>
    </div>
  );
}
