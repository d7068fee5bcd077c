// The optimiser: traffic weights per model version over time (from its traffic decisions),
// its recent decisions with their reasons, batching settings against the latency SLO, and
// the switch that freezes the weights.
import { getJson, postJson, withQuery } from "../api";
import { usePoll } from "../hooks";
import { formatNumber, formatTime } from "../format";
import { useSession } from "../session";
import { ActionButton, ErrorBox, Grid, KeyValues, Loading, numeric, Section } from "../components/ui";
import { Chart } from "../components/chart";

interface Decision {
  id: string;
  kind: "traffic" | "batching" | "promotion";
  model: string;
  timestamp_ms: number;
  reason: string;
  weights?: Record<string, number>;
  batching?: {
    version: string;
    max_queue_delay_us: number;
    preferred_batch_size: number;
    observed_p99_ms: number;
    observed_throughput: number;
    slo_ms: number;
  };
  promotion?: { registered_model: string; alias: string; from_version: string; to_version: string; probability: number };
}

interface State {
  frozen: boolean;
  models: Record<string, { weights: Record<string, number>; arms: Record<string, { count: number; sum: number }> }>;
}

/** Decisions read per refresh (the optimiser keeps its latest ones). */
const DECISIONS = 1000;

/** One series per key over the union of times, null where a decision did not name it. */
function aligned(points: { t: number; values: Record<string, number> }[]) {
  const keys = [...new Set(points.flatMap((p) => Object.keys(p.values)))].sort();
  return {
    x: points.map((p) => p.t),
    series: keys.map((k) => ({ label: k, values: points.map((p) => (k in p.values ? p.values[k] : null)) })),
  };
}

export function OptimizerPage() {
  const session = useSession();
  const state = usePoll((signal) => getJson<State>("/api/v1/optimizer/state", signal), [], 2000);
  const decisions = usePoll(
    (signal) => getJson<{ decisions: Decision[] }>(withQuery("/api/v1/optimizer/decisions", { limit: DECISIONS }), signal),
    [],
    2000,
  );
  const all = decisions.data?.decisions ?? [];
  const models = [...new Set([...Object.keys(state.data?.models ?? {}), ...all.map((d) => d.model)])].sort();
  return (
    <div class="page">
      <h1>Optimiser</h1>
      <ErrorBox error={state.error} />
      {!state.data ? (
        !state.error && <Loading />
      ) : (
        <Section
          title="Traffic routing"
          actions={
            session.can("optimizer_write") ? (
              <ActionButton
                label={state.data.frozen ? "Unfreeze weights" : "Freeze weights"}
                testId="freeze"
                danger={!state.data.frozen}
                run={async () => {
                  await postJson("/api/v1/optimizer/freeze", { frozen: !state.data!.frozen });
                  state.reload();
                }}
              />
            ) : null
          }
        >
          <p data-testid="frozen">
            Weights are <strong>{state.data.frozen ? "frozen" : "adjusting"}</strong>
            {state.data.frozen ? ": the bandit learns but does not move traffic." : "."}
          </p>
          {!Object.keys(state.data.models).length && (
            <p class="muted">No model is routed (start the server with --route-model MODEL to split traffic between versions).</p>
          )}
          {Object.entries(state.data.models).map(([model, m]) => (
            <div key={model}>
              <h3>{model}</h3>
              <KeyValues
                empty="No split now: one version is served."
                entries={Object.entries(m.weights).map(([v, w]) => [
                  `version ${v}`,
                  `${(w * 100).toFixed(1)} % of traffic${m.arms[v] ? `, ${m.arms[v].count} rewards, mean ${formatNumber(m.arms[v].count ? m.arms[v].sum / m.arms[v].count : null, 3)}` : ""}`,
                ])}
              />
            </div>
          ))}
        </Section>
      )}
      <ErrorBox error={decisions.error} />
      {models.map((model) => {
        const mine = all.filter((d) => d.model === model);
        const traffic = mine.filter((d) => d.kind === "traffic" && d.weights);
        const batching = mine.filter((d) => d.kind === "batching" && d.batching);
        const weights = aligned(traffic.map((d) => ({ t: d.timestamp_ms / 1000, values: d.weights! })));
        const versions = [...new Set(batching.map((d) => d.batching!.version))].sort();
        return (
          <Section key={model} title={`${model}: over time`}>
            <div class="charts">
              {traffic.length > 0 && (
                <Chart
                  title="traffic weight per version"
                  time
                  x={weights.x}
                  series={weights.series.map((s) => ({ ...s, label: `v${s.label}`, stepped: true }))}
                />
              )}
              {versions.map((v) => {
                const mineV = batching.filter((d) => d.batching!.version === v);
                return (
                  <Chart
                    key={v}
                    title={`version ${v}: p99 vs SLO (ms)`}
                    time
                    x={mineV.map((d) => d.timestamp_ms / 1000)}
                    series={[
                      { label: "observed p99", values: mineV.map((d) => d.batching!.observed_p99_ms) },
                      { label: "SLO", values: mineV.map((d) => d.batching!.slo_ms), dash: [6, 4] },
                    ]}
                  />
                );
              })}
            </div>
            {versions.length > 0 && (
              <Grid testId="batching" columns={["Version", numeric("max queue delay"), numeric("preferred batch"), numeric("observed p99"), numeric("SLO"), numeric("throughput")]}>
                  {versions.map((v) => {
                    const b = batching.filter((d) => d.batching!.version === v).pop()!.batching!;
                    return (
                      <tr key={v}>
                        <td>{v}</td>
                        <td class="num">{b.max_queue_delay_us} µs</td>
                        <td class="num">{b.preferred_batch_size}</td>
                        <td class={`num ${b.observed_p99_ms > b.slo_ms ? "over" : ""}`}>{formatNumber(b.observed_p99_ms, 3)} ms</td>
                        <td class="num">{formatNumber(b.slo_ms, 3)} ms</td>
                        <td class="num">{formatNumber(b.observed_throughput, 3)}/s</td>
                      </tr>
                    );
                  })}
              </Grid>
            )}
            {!traffic.length && !versions.length && <p class="muted">No traffic or batching decisions yet.</p>}
          </Section>
        );
      })}
      <Section title="Recent decisions (latest 50)">
        {!all.length ? (
          <p class="muted">None yet.</p>
        ) : (
          <Grid testId="decisions" columns={["Time", "Kind", "Model", "Reason"]}>
              {[...all]
                .reverse()
                .slice(0, 50)
                .map((d) => (
                  <tr key={d.id}>
                    <td>{formatTime(d.timestamp_ms)}</td>
                    <td>{d.kind}</td>
                    <td>{d.model}</td>
                    <td>{d.reason}</td>
                  </tr>
                ))}
          </Grid>
        )}
      </Section>
    </div>
  );
}
