// Experiments and their runs (the MLflow tracking API): the experiment list, a runs table
// searched with MLflow's own filter grammar and sorted and paged on the server, and a run's
// page with its metric histories as charts, its params, tags and artifacts.
import { Link, useLocation } from "wouter-preact";
import { useEffect, useState } from "preact/hooks";
import { usePoll } from "../hooks";
import { download } from "../api";
import { mlflow, proxiedRoot, isSystemTag, type Run, type FileInfo } from "../mlflow";
import { elapsed, formatBytes, formatNumber, formatTime } from "../format";
import { ErrorBox, Grid, KeyValues, Loader, Loading, PagedGrid, Pager, SearchForm, Section, Status, usePagedSearch } from "../components/ui";
import { Chart } from "../components/chart";

const PAGE_SIZE = 50;

export function ExperimentsPage() {
  const { search, list } = usePagedSearch((q, signal) =>
    mlflow.searchExperiments({ max_results: PAGE_SIZE, page_token: q.page_token, filter: q.search || undefined, order_by: ["last_update_time DESC"] }, signal),
  );
  return (
    <div class="page">
      <h1>Experiments</h1>
      <SearchForm search={search} placeholder="filter, e.g. name LIKE '%fraud%'" />
      <PagedGrid title="Experiments" testId="experiments" columns={["ID", "Name", "Artifacts", "Updated"]} state={list} pages={search.pages}>
        {(data) =>
          (data.experiments ?? []).map((x) => (
            <tr key={x.experiment_id}>
              <td>{x.experiment_id}</td>
              <td>
                <Link href={`/experiments/${encodeURIComponent(x.experiment_id)}`}>{x.name}</Link>
              </td>
              <td class="muted">{x.artifact_location}</td>
              <td>{formatTime(x.last_update_time)}</td>
            </tr>
          ))
        }
      </PagedGrid>
    </div>
  );
}

/** An `order_by` key of runs/search for a column: attributes by name, metrics, params and
 * tags quoted with backticks (their keys may hold any character). */
function orderKey(column: string): string {
  const [kind, ...rest] = column.split(".");
  const name = rest.join(".");
  return kind === "attributes" ? column : `${kind}.\`${name}\``;
}

export function ExperimentPage({ id }: { id: string }) {
  const experiment = usePoll((signal) => mlflow.getExperiment(id, signal), [id]);
  const [order, setOrder] = useState<{ column: string; ascending: boolean }>({ column: "attributes.start_time", ascending: false });
  const { search, pages, list: runs } = usePagedSearch(
    (q, signal) =>
      mlflow.searchRuns(
        {
          experiment_ids: [id],
          filter: q.search || undefined,
          order_by: [`${orderKey(order.column)} ${order.ascending ? "ASC" : "DESC"}`],
          max_results: PAGE_SIZE,
          page_token: q.page_token,
        },
        signal,
      ),
    [id, order.column, order.ascending],
    10_000,
  );
  const rows = runs.data?.runs ?? [];
  // The columns of this page: every param and metric key its runs have.
  const params = [...new Set(rows.flatMap((r) => (r.data.params ?? []).map((p) => p.key)))].sort();
  const metrics = [...new Set(rows.flatMap((r) => (r.data.metrics ?? []).map((m) => m.key)))].sort();
  const sortBy = (column: string) => {
    pages.reset();
    setOrder((o) => ({ column, ascending: o.column === column ? !o.ascending : false }));
  };
  const Header = ({ column, label }: { column: string; label: string }) => (
    <th class="sortable" onClick={() => sortBy(column)} data-column={column}>
      {label}
      {order.column === column ? (order.ascending ? " ▲" : " ▼") : ""}
    </th>
  );
  return (
    <div class="page">
      <p class="crumbs">
        <Link href="/experiments">Experiments</Link> /
      </p>
      <h1 data-testid="experiment-name">{experiment.data?.experiment.name ?? id}</h1>
      <ErrorBox error={experiment.error} />
      <SearchForm
        search={search}
        testId="run-filter"
        placeholder="MLflow filter, e.g. metrics.accuracy > 0.9 and params.lr = '0.1'"
      />
      <Loader state={runs}>
        {(data) => (
        <Section title="Runs">
          <div class="table-scroll">
            <Grid
              testId="runs"
              columns={[
                <Header key="run" column="attributes.run_name" label="Run" />,
                <Header key="status" column="attributes.status" label="Status" />,
                <Header key="started" column="attributes.start_time" label="Started" />,
                "Duration",
                ...params.map((p) => <Header key={`p.${p}`} column={`params.${p}`} label={p} />),
                ...metrics.map((m) => <Header key={`m.${m}`} column={`metrics.${m}`} label={m} />),
              ]}
            >
                {rows.map((r) => {
                  const param = new Map((r.data.params ?? []).map((p) => [p.key, p.value]));
                  const metric = new Map((r.data.metrics ?? []).map((m) => [m.key, m.value]));
                  return (
                    <tr key={r.info.run_id} data-run-id={r.info.run_id}>
                      <td>
                        <Link href={`/experiments/${encodeURIComponent(id)}/runs/${encodeURIComponent(r.info.run_id)}`}>
                          {r.info.run_name || r.info.run_id}
                        </Link>
                      </td>
                      <td>
                        <Status value={r.info.status} />
                      </td>
                      <td>{formatTime(r.info.start_time)}</td>
                      <td>{elapsed(r.info.start_time, r.info.end_time)}</td>
                      {params.map((p) => (
                        <td key={p}>{param.get(p) ?? ""}</td>
                      ))}
                      {metrics.map((m) => (
                        <td key={m} class="num">
                          {formatNumber(metric.get(m))}
                        </td>
                      ))}
                    </tr>
                  );
                })}
            </Grid>
          </div>
          {!rows.length && <p class="muted">No runs match.</p>}
          <Pager pages={pages} nextToken={data.next_page_token} />
        </Section>
        )}
      </Loader>
    </div>
  );
}

/** `/runs/{id}`: a run named without its experiment (a source run of a model version). */
export function RunRedirect({ run }: { run: string }) {
  const [, navigate] = useLocation();
  const found = usePoll((signal) => mlflow.getRun(run, signal), [run]);
  useEffect(() => {
    const info = found.data?.run.info;
    if (info) navigate(`/experiments/${encodeURIComponent(info.experiment_id)}/runs/${encodeURIComponent(info.run_id)}`, { replace: true });
  }, [found.data]);
  return <div class="page">{found.error ? <ErrorBox error={found.error} /> : <Loading />}</div>;
}

function MetricChart({ run, metric }: { run: string; metric: string }) {
  const history = usePoll((signal) => mlflow.metricHistory(run, metric, signal), [run, metric]);
  if (history.error) return <ErrorBox error={history.error} />;
  if (!history.data) return <Loading what={`Loading ${metric}`} />;
  const points = [...history.data].sort((a, b) => a.step - b.step || a.timestamp - b.timestamp);
  return (
    <Chart
      title={metric}
      testId={`metric-chart-${metric}`}
      x={points.map((p) => p.step)}
      xLabel="step"
      series={[{ label: metric, values: points.map((p) => p.value) }]}
    />
  );
}

export function RunPage({ experiment, run }: { experiment: string; run: string }) {
  const found = usePoll((signal) => mlflow.getRun(run, signal), [run], 10_000);
  const parent = usePoll((signal) => mlflow.getExperiment(experiment, signal), [experiment]);
  const r: Run | undefined = found.data?.run;
  const tags = r?.data.tags ?? [];
  return (
    <div class="page">
      <p class="crumbs">
        <Link href="/experiments">Experiments</Link> /{" "}
        <Link href={`/experiments/${encodeURIComponent(experiment)}`}>{parent.data?.experiment.name ?? experiment}</Link> /
      </p>
      <h1 data-testid="run-name">{r?.info.run_name ?? run}</h1>
      <ErrorBox error={found.error} />
      {r && (
        <>
          <Section title="Run">
            <KeyValues
              entries={[
                ["Run ID", r.info.run_id],
                ["Status", r.info.status],
                ["Started", formatTime(r.info.start_time)],
                ["Ended", formatTime(r.info.end_time)],
                ["Duration", elapsed(r.info.start_time, r.info.end_time)],
                ["User", r.info.user_id ?? ""],
                ["Artifacts", r.info.artifact_uri ?? ""],
              ]}
            />
          </Section>
          <Section title="Metrics">
            {(r.data.metrics ?? []).length ? (
              <>
                <KeyValues entries={(r.data.metrics ?? []).map((m) => [m.key, `${formatNumber(m.value, 6)} (step ${m.step})`])} />
                <div class="charts">
                  {(r.data.metrics ?? []).map((m) => (
                    <MetricChart key={m.key} run={r.info.run_id} metric={m.key} />
                  ))}
                </div>
              </>
            ) : (
              <p class="muted">No metrics logged.</p>
            )}
          </Section>
          <Section title="Parameters">
            <KeyValues entries={(r.data.params ?? []).map((p) => [p.key, p.value])} empty="No parameters logged." />
          </Section>
          <Section title="Tags">
            <KeyValues entries={tags.filter((t) => !isSystemTag(t.key)).map((t) => [t.key, t.value])} empty="No tags." />
            {tags.some((t) => isSystemTag(t.key)) && (
              <details>
                <summary>System tags</summary>
                <KeyValues entries={tags.filter((t) => isSystemTag(t.key)).map((t) => [t.key, t.value])} />
              </details>
            )}
          </Section>
          <Section title="Artifacts">
            <Artifacts uri={r.info.artifact_uri} />
          </Section>
        </>
      )}
    </div>
  );
}

/** A run's artifacts as folders to open and files to download. */
function Artifacts({ uri }: { uri?: string }) {
  const root = proxiedRoot(uri);
  const [folder, setFolder] = useState("");
  const [error, setError] = useState<unknown>(null);
  const listing = usePoll(
    (signal) => (root === null ? Promise.resolve({ files: [] as FileInfo[] }) : mlflow.listArtifacts(folder ? `${root}/${folder}` : root, signal)),
    [root, folder],
  );
  if (root === null) return <p class="muted">Stored at {uri}, outside this server's artifact proxy.</p>;
  const files = listing.data?.files ?? [];
  return (
    <div class="artifacts" data-testid="artifacts">
      <p class="crumbs">
        <button class="link" onClick={() => setFolder("")}>
          artifacts
        </button>
        {folder.split("/").filter(Boolean).map((part, i, all) => (
          <span key={i}>
            {" / "}
            <button class="link" onClick={() => setFolder(all.slice(0, i + 1).join("/"))}>
              {part}
            </button>
          </span>
        ))}
      </p>
      <ErrorBox error={listing.error ?? error} />
      {!files.length && !listing.loading && <p class="muted">No artifacts here.</p>}
      <ul class="files">
        {files.map((f) => {
          const path = folder ? `${folder}/${f.path}` : f.path;
          return (
            <li key={f.path}>
              {f.is_dir ? (
                <button class="link" onClick={() => setFolder(path)}>
                  📁 {f.path}/
                </button>
              ) : (
                <button
                  class="link"
                  data-artifact={path}
                  onClick={() => download(mlflow.artifactPath(`${root}/${path}`), f.path.split("/").pop()!).catch(setError)}
                >
                  ⬇ {f.path}
                </button>
              )}{" "}
              <span class="muted">{formatBytes(f.file_size)}</span>
            </li>
          );
        })}
      </ul>
    </div>
  );
}
