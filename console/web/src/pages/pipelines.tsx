// Pipeline runs: the list (filtered and paged by the server), submitting a Nexus spec or a
// compiled KFP pipeline with its parameters, and a run's page with its DAG drawn from the
// run's own graph, updated live, a step's log streamed, its parameters, outputs and
// metrics, and cancel.
import { Link, useLocation } from "wouter-preact";
import { useMemo, useState } from "preact/hooks";
import { parse as parseYaml } from "yaml";
import { postJson, withQuery, getJson } from "../api";
import { usePoll } from "../hooks";
import { elapsed, formatTime } from "../format";
import { useSession } from "../session";
import { ActionButton, ErrorBox, Grid, KeyValues, Loader, Loading, Pager, SearchForm, Section, Status, usePagedSearch } from "../components/ui";
import { DagView, conditionText, loopText, nodeStates, type NodeState, type Outline, type OutlineNode, type TaskRecord } from "../components/dag";
import { LogView } from "../components/log";

interface RunRecord {
  id: string;
  name: string;
  kind: string;
  status: string;
  parameters: Record<string, unknown> | null;
  outputs: TaskRecord["outputs"];
  error: string | null;
  created_at: number;
  started_at: number | null;
  finished_at: number | null;
  tasks?: TaskRecord[];
}

const STATUSES = ["", "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"];
const PAGE_SIZE = 50;
const terminal = (status: string) => !["PENDING", "RUNNING"].includes(status);

export function PipelinesPage() {
  const session = useSession();
  const [status, setStatus] = useState("");
  const { search, pages, list } = usePagedSearch(
    (q, signal) =>
      getJson<{ runs: RunRecord[]; next_page_token?: string }>(
        withQuery("/api/v1/pipelines/runs", { status, name: q.search, limit: PAGE_SIZE, page_token: q.page_token }),
        signal,
      ),
    [status],
    3000,
  );
  const [submitting, setSubmitting] = useState(false);
  return (
    <div class="page">
      <h1>Pipelines</h1>
      {session.can("pipeline_submit") && (
        <div class="toolbar">
          <button class="primary" data-testid="open-submit" onClick={() => setSubmitting((s) => !s)}>
            {submitting ? "Close" : "Submit a pipeline"}
          </button>
        </div>
      )}
      {submitting && <SubmitForm />}
      <SearchForm search={search} placeholder="name contains…">
        <select
          value={status}
          onChange={(e) => {
            pages.reset();
            setStatus((e.target as HTMLSelectElement).value);
          }}
        >
          {STATUSES.map((s) => (
            <option key={s} value={s}>
              {s || "any status"}
            </option>
          ))}
        </select>
      </SearchForm>
      <Loader state={list}>
        {(data) => (
          <Section title="Runs">
            <Grid testId="pipeline-runs" columns={["Run", "Pipeline", "Kind", "Status", "Created", "Duration"]}>
              {data.runs.map((r) => (
                <tr key={r.id} data-run-id={r.id}>
                  <td>
                    <Link href={`/pipelines/runs/${r.id}`}>
                      <code>{r.id.slice(0, 12)}</code>
                    </Link>
                  </td>
                  <td>{r.name}</td>
                  <td>{r.kind}</td>
                  <td>
                    <Status value={r.status} />
                  </td>
                  <td>{formatTime(r.created_at)}</td>
                  <td>{elapsed(r.started_at, r.finished_at)}</td>
                </tr>
              ))}
            </Grid>
            {!data.runs.length && <p class="muted">No runs.</p>}
            <Pager pages={pages} nextToken={data.next_page_token} />
          </Section>
        )}
      </Loader>
    </div>
  );
}

/** A spec's declared parameters with their defaults: a Nexus spec's `parameters`, or a
 * compiled KFP pipeline's `root.inputDefinitions.parameters`. Empty when the text does not
 * parse yet; the server checks the spec itself on submission. */
function declaredParameters(text: string): [string, unknown][] {
  try {
    const doc = parseYaml(text);
    const kfp = doc?.root?.inputDefinitions?.parameters;
    if (kfp && typeof kfp === "object") {
      return Object.entries(kfp).map(([k, v]) => [k, (v as { defaultValue?: unknown })?.defaultValue ?? ""]);
    }
    const nexus = doc?.parameters;
    if (nexus && typeof nexus === "object") {
      return Object.entries(nexus).map(([k, v]) => [k, v && typeof v === "object" && "default" in v ? (v as { default: unknown }).default : v]);
    }
  } catch {
    // Not YAML (yet): no parameter fields.
  }
  return [];
}

const BASE_DIR_KEY = "nexus.pipeline-base-dir";

/** A spec of the server's pipeline library (`--pipeline-library`: the examples, for `nexus up`). */
interface LibraryEntry {
  name: string;
  file: string;
  spec: string;
  base_dir: string;
}

function SubmitForm() {
  const [, navigate] = useLocation();
  const [spec, setSpec] = useState("");
  const [values, setValues] = useState<Record<string, string>>({});
  const [name, setName] = useState("");
  // Not secret: where the server resolves relative `workdir`s, remembered for next time.
  const [baseDir, setBaseDir] = useState(localStorage.getItem(BASE_DIR_KEY) ?? "");
  const declared = useMemo(() => declaredParameters(spec), [spec]);
  const library = usePoll((signal) => getJson<{ pipelines: LibraryEntry[] }>("/api/v1/pipelines/library", signal), []);
  const offered = library.data?.pipelines ?? [];
  return (
    <Section title="Submit a pipeline" id="submit">
      <p class="muted">
        A Nexus pipeline spec or a compiled Kubeflow Pipelines YAML. Steps with a relative <code>workdir</code> need the folder it is
        relative to on the server (the CLI sends the spec file's folder).
      </p>
      <div class="form">
        {offered.length > 0 && (
          <label>
            From this server's library{" "}
            <select
              data-testid="library"
              value=""
              onChange={(e) => {
                const chosen = offered.find((p) => p.file === (e.target as HTMLSelectElement).value);
                if (!chosen) return;
                setSpec(chosen.spec);
                setBaseDir(chosen.base_dir);
                setValues({});
              }}
            >
              <option value="">choose a pipeline…</option>
              {offered.map((p) => (
                <option key={p.file} value={p.file}>
                  {p.name} ({p.file})
                </option>
              ))}
            </select>
          </label>
        )}
        <label>
          Spec file{" "}
          <input
            type="file"
            accept=".yaml,.yml,.json"
            data-testid="spec-file"
            onChange={async (e) => {
              const file = (e.target as HTMLInputElement).files?.[0];
              if (file) setSpec(await file.text());
            }}
          />
        </label>
        <textarea rows={12} value={spec} data-testid="spec" placeholder="name: my-pipeline\nsteps: …" onInput={(e) => setSpec((e.target as HTMLTextAreaElement).value)} />
        {declared.length > 0 && (
          <fieldset>
            <legend>Parameters</legend>
            {declared.map(([key, fallback]) => (
              <label key={key} class="param">
                <span>{key}</span>
                <input
                  data-param={key}
                  placeholder={fallback === undefined || fallback === null ? "" : String(typeof fallback === "object" ? JSON.stringify(fallback) : fallback)}
                  value={values[key] ?? ""}
                  onInput={(e) => setValues((v) => ({ ...v, [key]: (e.target as HTMLInputElement).value }))}
                />
              </label>
            ))}
          </fieldset>
        )}
        <label>
          Run name <input value={name} placeholder="(the pipeline's name)" onInput={(e) => setName((e.target as HTMLInputElement).value)} />
        </label>
        <label>
          Base folder on the server{" "}
          <input
            value={baseDir}
            data-testid="base-dir"
            placeholder="/path/to/examples/pipelines"
            onInput={(e) => setBaseDir((e.target as HTMLInputElement).value)}
          />
        </label>
        <ActionButton
          label="Submit"
          testId="submit"
          disabled={!spec.trim()}
          run={async () => {
            // Values typed are strings; the server converts them to each parameter's type,
            // as it does for `nexus pipeline submit --param k=v`.
            const parameters = Object.fromEntries(Object.entries(values).filter(([, v]) => v !== ""));
            if (baseDir) localStorage.setItem(BASE_DIR_KEY, baseDir);
            const { run } = await postJson<{ run: RunRecord }>("/api/v1/pipelines/runs", {
              spec,
              parameters,
              name: name || undefined,
              base_dir: baseDir || undefined,
            });
            navigate(`/pipelines/runs/${run.id}`);
          }}
        />
      </div>
    </Section>
  );
}

export function PipelineRunPage({ id }: { id: string }) {
  const session = useSession();
  const [selected, setSelected] = useState<string | undefined>();
  const [done, setDone] = useState(false);
  const found = usePoll(
    async (signal) => {
      const body = await getJson<{ run: RunRecord; graph: Outline }>(`/api/v1/pipelines/runs/${encodeURIComponent(id)}`, signal);
      if (terminal(body.run.status)) setDone(true);
      return body;
    },
    [id],
    done ? null : 1000,
  );
  const run = found.data?.run;
  const graph = found.data?.graph;
  const states = useMemo(() => (graph ? nodeStates(graph, run?.tasks ?? []) : new Map<string, NodeState>()), [graph, run]);
  return (
    <div class="page">
      <p class="crumbs">
        <Link href="/pipelines">Pipelines</Link> /
      </p>
      <h1>
        {run?.name ?? "Run"} <code class="muted">{id.slice(0, 12)}</code>
      </h1>
      <ErrorBox error={found.error} />
      {!run ? (
        !found.error && <Loading />
      ) : (
        <>
          <Section
            title="Run"
            actions={
              session.can("pipeline_cancel") &&
              !terminal(run.status) && (
                <ActionButton
                  label="Cancel run"
                  danger
                  testId="cancel"
                  run={async () => {
                    await postJson(`/api/v1/pipelines/runs/${encodeURIComponent(id)}/cancel`, {});
                    found.reload();
                  }}
                />
              )
            }
          >
            <KeyValues
              entries={[
                [
                  "Status",
                  <span data-testid="run-status" data-status={run.status}>
                    <Status value={run.status} />
                    {!terminal(run.status) && <span class="live"> ● live</span>}
                  </span>,
                ],
                ["Kind", run.kind],
                ["Created", formatTime(run.created_at)],
                ["Duration", elapsed(run.started_at, run.finished_at)],
                !!run.error && ["Error", <span class="error-text">{run.error}</span>],
              ]}
            />
          </Section>
          <Section title="Graph">
            {graph && <DagView outline={graph} states={states} selected={selected} onSelect={setSelected} />}
            <p class="muted legend">
              Click a step for its log and outputs. <span class="badge state-succeeded">SUCCEEDED</span>{" "}
              <span class="badge state-running">RUNNING</span> <span class="badge state-failed">FAILED</span>{" "}
              <span class="badge state-skipped">SKIPPED</span> <span class="badge state-not-started">NOT STARTED</span> ⟳ loop ◇
              condition
            </p>
          </Section>
          {selected && graph && (
            <StepPanel
              runId={id}
              node={graph.nodes.find((n) => n.id === selected)!}
              states={states}
              runDone={terminal(run.status)}
            />
          )}
          <Section title="Parameters">
            <KeyValues entries={Object.entries(run.parameters ?? {})} empty="No parameters." />
          </Section>
          <Section title="Outputs">
            <Outputs outputs={run.outputs} done={terminal(run.status)} />
          </Section>
        </>
      )}
    </div>
  );
}

function Outputs({ outputs, done }: { outputs: TaskRecord["outputs"]; done: boolean }) {
  const parameters = Object.entries(outputs?.parameters ?? {});
  const artifacts = Object.entries(outputs?.artifacts ?? {});
  if (!parameters.length && !artifacts.length) return <p class="muted">{done ? "None." : "None yet."}</p>;
  return (
    <>
      {parameters.length > 0 && <KeyValues entries={parameters} />}
      {artifacts.map(([key, list]) => (
        <div key={key} class="artifact">
          <h3>
            {key} <span class="muted">{list[0]?.schema_title ?? "artifact"}</span>
          </h3>
          {list.map((a, i) => (
            <div key={i}>
              {!a.metadata_only && (
                <p>
                  <code>{a.uri}</code>
                  {a.dir ? " (folder)" : ""}
                </p>
              )}
              {a.metadata && Object.keys(a.metadata).length > 0 && <KeyValues entries={Object.entries(a.metadata)} />}
            </div>
          ))}
        </div>
      ))}
    </>
  );
}

/** The selected step: each of its records (one, or one per loop iteration), the chosen one's
 * outputs, and its log, streamed while it runs. */
function StepPanel(props: { runId: string; node: OutlineNode; states: Map<string, NodeState>; runDone: boolean }) {
  const node = props.node;
  const state = props.states.get(node.id);
  // A loop's own record only sums up its iterations: the iterations are what ran.
  const records = state?.iterations.length ? state.iterations : state?.own ? [state.own] : [];
  const [chosen, setChosen] = useState<string | undefined>();
  const record = records.find((r) => r.path === chosen) ?? records[0];
  return (
    <Section title={`${node.kind === "dag" ? "Group" : "Step"} ${node.id}`} id="step">
      <KeyValues
        entries={[
          !!node.loop && ["Loop", loopText(node)],
          !!node.condition && ["Condition", conditionText(node)],
          !!node.always && ["Runs", "even when what it depends on failed"],
          !!node.retries && ["Retries", node.retries],
          !!node.cache && ["Cache", "on"],
        ]}
        empty=""
      />
      {!record ? (
        <p class="muted">Not started yet.</p>
      ) : (
        <>
          {records.length > 1 && (
            <p>
              Iteration:{" "}
              <select value={record.path} onChange={(e) => setChosen((e.target as HTMLSelectElement).value)}>
                {records.map((r) => (
                  <option key={r.path} value={r.path}>
                    {r.path} ({r.status})
                  </option>
                ))}
              </select>
            </p>
          )}
          <KeyValues
            entries={[
              [
                "Status",
                <span data-testid="step-status">
                  <Status value={record.status} />
                  {record.cached ? " (from cache)" : ""}
                </span>,
              ],
              ["Attempts", record.attempts],
              ["Duration", elapsed(record.started_at, record.finished_at)],
              !!record.error && ["Error", <span class="error-text">{record.error}</span>],
            ]}
          />
          <h3>Outputs</h3>
          <Outputs outputs={record.outputs} done={terminal(record.status)} />
          <LogView runId={props.runId} step={record.path} follow={!terminal(record.status) && !props.runDone} />
        </>
      )}
    </Section>
  );
}
