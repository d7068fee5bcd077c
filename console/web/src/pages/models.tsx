// Registered models (the MLflow model registry): the list, a model's versions with their
// aliases, tags and source runs, moving an alias (roles with registry writes), and, where
// this process also serves models, which versions it serves now, so an alias move's hot
// swap shows as it happens.
import { Link } from "wouter-preact";
import { useState } from "preact/hooks";
import { postJson } from "../api";
import { usePoll } from "../hooks";
import { mlflow, type ModelVersion } from "../mlflow";
import { formatTime } from "../format";
import { useSession } from "../session";
import { ActionButton, ErrorBox, Grid, KeyValues, Loader, PagedGrid, SearchForm, Section, Status, usePagedSearch } from "../components/ui";
import type { IndexEntry } from "./serving";

const PAGE_SIZE = 50;

export function ModelsPage() {
  const { search, list } = usePagedSearch(
    (q, signal) =>
      mlflow.searchModels(
        {
          max_results: PAGE_SIZE,
          page_token: q.page_token,
          filter: q.search ? `name ILIKE '%${q.search.replace(/'/g, "")}%'` : undefined,
          order_by: "name ASC",
        },
        signal,
      ),
    [],
    10_000,
  );
  return (
    <div class="page">
      <h1>Registered models</h1>
      <SearchForm search={search} placeholder="name contains…" />
      <PagedGrid title="Models" testId="registered-models" columns={["Name", "Latest version", "Aliases", "Updated"]} state={list} pages={search.pages}>
        {(data) =>
          (data.registered_models ?? []).map((m) => (
            <tr key={m.name}>
              <td>
                <Link href={`/models/${encodeURIComponent(m.name)}`}>{m.name}</Link>
              </td>
              <td>{Math.max(0, ...(m.latest_versions ?? []).map((v) => Number(v.version))) || "—"}</td>
              <td>
                {(m.aliases ?? []).map((a) => (
                  <span class="chip" key={a.alias}>
                    @{a.alias} → {a.version}
                  </span>
                ))}
              </td>
              <td>{formatTime(m.last_updated_timestamp)}</td>
            </tr>
          ))
        }
      </PagedGrid>
    </div>
  );
}

/** The versions of `name` this process serves now (from its repository index). */
function useServed(name: string) {
  const session = useSession();
  const enabled = session.parts.has("serving") && session.can("inference_read");
  const index = usePoll(
    (signal) => (enabled ? postJson<IndexEntry[]>("/v2/repository/index", {}, signal) : Promise.resolve([] as IndexEntry[])),
    [name, enabled],
    enabled ? 2000 : null,
  );
  const served = new Map<string, IndexEntry>();
  for (const e of index.data ?? []) if (e.name === name && e.version) served.set(e.version, e);
  return { enabled, served, error: index.error };
}

function sourceRun(v: ModelVersion) {
  return v.run_id ? <Link href={`/runs/${encodeURIComponent(v.run_id)}`}>{v.run_id.slice(0, 12)}</Link> : <span class="muted">—</span>;
}

export function ModelPage({ name }: { name: string }) {
  const session = useSession();
  const model = usePoll((signal) => mlflow.getModel(name, signal), [name], 5000);
  const versions = usePoll((signal) => mlflow.searchVersions(name, signal), [name], 5000);
  const serving = useServed(name);
  const m = model.data?.registered_model;
  const all = [...(versions.data?.model_versions ?? [])].sort((a, b) => Number(b.version) - Number(a.version));
  const aliases = m?.aliases ?? [];
  const reload = () => {
    model.reload();
    versions.reload();
  };
  return (
    <div class="page">
      <p class="crumbs">
        <Link href="/models">Registered models</Link> /
      </p>
      <h1 data-testid="model-name">{name}</h1>
      <ErrorBox error={model.error} />
      {m?.description && <p>{m.description}</p>}
      <Section title="Aliases">
        {aliases.length ? (
          <Grid testId="aliases" columns={["Alias", "Version", serving.enabled && "Served here"]}>
              {aliases.map((a) => {
                const served = serving.served.get(a.version);
                return (
                  <tr key={a.alias} data-alias={a.alias} data-version={a.version}>
                    <td>@{a.alias}</td>
                    <td>
                      <Link href={`/models/${encodeURIComponent(name)}/versions/${encodeURIComponent(a.version)}`}>{a.version}</Link>
                    </td>
                    {serving.enabled && <td>{served ? <Status value={served.state} /> : <span class="muted">not served</span>}</td>}
                  </tr>
                );
              })}
          </Grid>
        ) : (
          <p class="muted">No aliases.</p>
        )}
        {session.can("registry_write") && all.length > 0 && <AliasForm name={name} versions={all} aliases={aliases.map((a) => a.alias)} onDone={reload} />}
      </Section>
      {serving.enabled && (
        <Section title="Serving">
          <ErrorBox error={serving.error} />
          <p data-testid="served-versions">
            {serving.served.size ? (
              [...serving.served.values()].map((e) => (
                <span class="chip" key={e.version} data-version={e.version} data-state={e.state}>
                  version {e.version}: {e.state}
                </span>
              ))
            ) : (
              <span class="muted">This server does not serve {name} (serve it with --model models:/{name}@ALIAS).</span>
            )}
          </p>
        </Section>
      )}
      <Section title="Versions">
        <Loader state={versions}>
          {() => (
            <Grid testId="versions" columns={["Version", "Status", "Aliases", "Created", "Source run", "Tags"]}>
              {all.map((v) => (
                <tr key={v.version} data-version={v.version}>
                  <td>
                    <Link href={`/models/${encodeURIComponent(name)}/versions/${encodeURIComponent(v.version)}`}>{v.version}</Link>
                  </td>
                  <td>
                    <Status value={v.status} />
                  </td>
                  <td>
                    {aliases
                      .filter((a) => a.version === v.version)
                      .map((a) => (
                        <span class="chip" key={a.alias}>
                          @{a.alias}
                        </span>
                      ))}
                  </td>
                  <td>{formatTime(v.creation_timestamp)}</td>
                  <td>{sourceRun(v)}</td>
                  <td>
                    {(v.tags ?? []).map((t) => (
                      <span class="chip" key={t.key}>
                        {t.key}={t.value}
                      </span>
                    ))}
                  </td>
                </tr>
              ))}
            </Grid>
          )}
        </Loader>
      </Section>
      <Section title="Tags">
        <KeyValues entries={(m?.tags ?? []).map((t) => [t.key, t.value])} empty="No tags." />
      </Section>
    </div>
  );
}

/** Points an alias (new or existing) at a version. */
function AliasForm(props: { name: string; versions: ModelVersion[]; aliases: string[]; onDone: () => void }) {
  const [alias, setAlias] = useState(props.aliases[0] ?? "champion");
  const [version, setVersion] = useState(props.versions[0].version);
  return (
    <div class="inline-form" data-testid="alias-form">
      <label>
        Alias{" "}
        <input list="known-aliases" value={alias} data-testid="alias-name" onInput={(e) => setAlias((e.target as HTMLInputElement).value)} />
        <datalist id="known-aliases">
          {props.aliases.map((a) => (
            <option key={a} value={a} />
          ))}
        </datalist>
      </label>
      <label>
        → version{" "}
        <select value={version} data-testid="alias-version" onChange={(e) => setVersion((e.target as HTMLSelectElement).value)}>
          {props.versions.map((v) => (
            <option key={v.version} value={v.version}>
              {v.version}
            </option>
          ))}
        </select>
      </label>
      <ActionButton
        label="Set alias"
        testId="set-alias"
        disabled={!alias.trim()}
        run={async () => {
          await mlflow.setAlias(props.name, alias.trim(), version);
          props.onDone();
        }}
      />
    </div>
  );
}

export function VersionPage({ name, version }: { name: string; version: string }) {
  const found = usePoll((signal) => mlflow.getVersion(name, version, signal), [name, version], 5000);
  const serving = useServed(name);
  const v = found.data?.model_version;
  const served = serving.served.get(version);
  return (
    <div class="page">
      <p class="crumbs">
        <Link href="/models">Registered models</Link> / <Link href={`/models/${encodeURIComponent(name)}`}>{name}</Link> /
      </p>
      <h1 data-testid="version-title">
        {name} version {version}
      </h1>
      <ErrorBox error={found.error} />
      {v && (
        <Section title="Version">
          <KeyValues
            entries={[
              [
                "Status",
                <>
                  <Status value={v.status} /> {v.status_message}
                </>,
              ],
              ["Aliases", (v.aliases ?? []).map((a) => `@${a}`).join(", ") || "—"],
              serving.enabled && ["Served here", served ? <Status value={served.state} /> : "no"],
              ["Source", <code>{v.source}</code>],
              ["Source run", sourceRun(v)],
              ["Created", formatTime(v.creation_timestamp)],
              ["Description", v.description || "—"],
            ]}
          />
          <h3>Tags</h3>
          <KeyValues entries={(v.tags ?? []).map((t) => [t.key, t.value])} empty="No tags." />
        </Section>
      )}
    </div>
  );
}
