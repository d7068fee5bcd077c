// Small pieces every page uses: errors (401/403 shown as such), data that is still loading,
// status badges, tables, a search box, and a pager over page tokens.
import { isValidElement, type ComponentChildren, type JSX } from "preact";
import { useState } from "preact/hooks";
import { ApiError } from "../api";
import { usePoll, type Loaded } from "../hooks";

export function ErrorBox({ error }: { error: unknown }) {
  if (!error) return null;
  const e = error instanceof ApiError ? error : null;
  return (
    <div class="error" role="alert" data-status={e?.status ?? ""}>
      <strong>{e ? e.title : "Error"}</strong>
      <span>{e ? e.message : String(error)}</span>
    </div>
  );
}

export function Loading({ what = "Loading" }: { what?: string }) {
  return <p class="muted">{what}…</p>;
}

/**
 * What a page shows of data it loads: the last error, "Loading…" until the first answer, then
 * the data (kept on screen while it is loaded again).
 */
export function Loader<T>(props: { state: Loaded<T>; children: (data: T) => ComponentChildren }) {
  const { data, error, loading } = props.state;
  return (
    <>
      <ErrorBox error={error} />
      {data !== undefined ? props.children(data) : loading && <Loading />}
    </>
  );
}

/** A run, task or model state as a coloured badge (class `state-<lowercase>`). */
export function Status({ value }: { value: string | null | undefined }) {
  const text = value || "NOT STARTED";
  return <span class={`badge state-${text.toLowerCase().replace(/[^a-z]+/g, "-")}`}>{text}</span>;
}

export function Section(props: { title: string; actions?: ComponentChildren; children: ComponentChildren; id?: string }) {
  return (
    <section class="card" id={props.id} data-section={props.title}>
      <header>
        <h2>{props.title}</h2>
        <div class="actions">{props.actions}</div>
      </header>
      {props.children}
    </section>
  );
}

/** A table with a header row: a string is a plain column title, an element its own `<th>`. */
export function Grid(props: { testId?: string; columns: (string | JSX.Element | false)[]; children: ComponentChildren }) {
  return (
    <table class="grid" data-testid={props.testId}>
      <thead>
        <tr>{props.columns.map((c) => (typeof c === "string" ? <th key={c}>{c}</th> : c))}</tr>
      </thead>
      <tbody>{props.children}</tbody>
    </table>
  );
}

/** One page of a list the server pages, in a card: its rows in a `Grid`, the pager under them. */
export function PagedGrid<T extends { next_page_token?: string }>(props: {
  title: string;
  testId: string;
  columns: string[];
  state: Loaded<T>;
  pages: ReturnType<typeof usePages>;
  children: (data: T) => ComponentChildren;
}) {
  return (
    <Loader state={props.state}>
      {(data) => (
        <Section title={props.title}>
          <Grid testId={props.testId} columns={props.columns}>
            {props.children(data)}
          </Grid>
          <Pager pages={props.pages} nextToken={data.next_page_token} />
        </Section>
      )}
    </Loader>
  );
}

/** A column title of `Grid` for a column of numbers (aligned right). */
export const numeric = (title: string) => (
  <th key={title} class="num">
    {title}
  </th>
);

/** Two columns of keys and values; elements are shown as they are, lists and objects as JSON. */
export function KeyValues({ entries, empty = "None" }: { entries: ([string, unknown] | false | null | undefined)[]; empty?: string }) {
  const rows = entries.filter((e): e is [string, unknown] => !!e);
  if (!rows.length) return empty ? <p class="muted">{empty}</p> : null;
  return (
    <table class="kv">
      <tbody>
        {rows.map(([k, v]) => (
          <tr key={k}>
            <th>{k}</th>
            <td>{isValidElement(v) ? v : v !== null && typeof v === "object" ? <code>{JSON.stringify(v)}</code> : String(v)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/**
 * Paging over a list the server pages with tokens: keeps the tokens of the pages already
 * seen, so Previous goes back without the server keeping any state.
 */
export function usePages() {
  const [tokens, setTokens] = useState<(string | undefined)[]>([undefined]);
  const current = tokens[tokens.length - 1];
  return {
    token: current,
    page: tokens.length,
    next: (token: string) => setTokens((t) => [...t, token]),
    previous: () => setTokens((t) => (t.length > 1 ? t.slice(0, -1) : t)),
    reset: () => setTokens([undefined]),
  };
}

/**
 * The text of a search box and the search last submitted, which is what a page's query uses:
 * a new search starts again at the first page.
 */
export function useSearch() {
  const pages = usePages();
  const [text, setText] = useState("");
  const [applied, setApplied] = useState("");
  return {
    pages,
    text,
    setText,
    applied,
    submit: () => {
      pages.reset();
      setApplied(text);
    },
  };
}

/**
 * A list the server searches and pages: the search box's state, and the page `load` fetches
 * for the search last submitted (again when `deps` change, and every `intervalMs`).
 */
export function usePagedSearch<T>(
  load: (query: { page_token?: string; search: string }, signal: AbortSignal) => Promise<T>,
  deps: unknown[] = [],
  intervalMs: number | null = null,
) {
  const search = useSearch();
  const list = usePoll(
    (signal) => load({ page_token: search.pages.token, search: search.applied }, signal),
    [...deps, search.pages.token, search.applied],
    intervalMs,
  );
  return { search, pages: search.pages, list };
}

/** A search box (and any other fields given as children) with its Search button. */
export function SearchForm(props: {
  search: ReturnType<typeof useSearch>;
  placeholder: string;
  testId?: string;
  children?: ComponentChildren;
}) {
  const { search } = props;
  return (
    <form
      class="search"
      onSubmit={(e) => {
        e.preventDefault();
        search.submit();
      }}
    >
      <input
        value={search.text}
        data-testid={props.testId}
        placeholder={props.placeholder}
        onInput={(e) => search.setText((e.target as HTMLInputElement).value)}
      />
      {props.children}
      <button type="submit">Search</button>
    </form>
  );
}

export function Pager({ pages, nextToken }: { pages: ReturnType<typeof usePages>; nextToken?: string }) {
  return (
    <div class="pager">
      <button disabled={pages.page <= 1} onClick={pages.previous}>
        ‹ Previous
      </button>
      <span>Page {pages.page}</span>
      <button disabled={!nextToken} onClick={() => nextToken && pages.next(nextToken)}>
        Next ›
      </button>
    </div>
  );
}

/** A button for an action that changes something; shows the failure next to it. */
export function ActionButton(props: {
  label: string;
  run: () => Promise<unknown>;
  danger?: boolean;
  testId?: string;
  disabled?: boolean;
}) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  return (
    <span class="action">
      <button
        class={props.danger ? "danger" : "primary"}
        disabled={busy || props.disabled}
        data-testid={props.testId}
        onClick={async () => {
          setBusy(true);
          setError(null);
          try {
            await props.run();
          } catch (e) {
            setError(e);
          } finally {
            setBusy(false);
          }
        }}
      >
        {busy ? "…" : props.label}
      </button>
      <ErrorBox error={error} />
    </span>
  );
}
