// The console's frame: it learns who the caller is (asking for an API key or JWT when the
// server wants one), which parts this process runs, then routes the address after `#` to a
// page. The addresses the MLflow client prints (`/#/experiments/1/runs/…`,
// `/#/models/NAME/versions/2`) are routes here.
import { useEffect, useState } from "preact/hooks";
import { Link, Redirect, Route, Router, Switch, useLocation } from "wouter-preact";
import { useHashLocation } from "wouter-preact/use-hash-location";
import { ApiError, call, credential, getJson, setCredential } from "./api";
import { SessionContext, partsOf, useSession, type Part, type Session, type WhoAmI } from "./session";
import { ErrorBox, Loading } from "./components/ui";
import { ServingModelPage, ServingPage } from "./pages/serving";
import { ExperimentPage, ExperimentsPage, RunPage, RunRedirect } from "./pages/experiments";
import { ModelPage, ModelsPage, VersionPage } from "./pages/models";
import { PipelineRunPage, PipelinesPage } from "./pages/pipelines";
import { OptimizerPage } from "./pages/optimizer";
import { ServicesPage, type Service } from "./pages/services";

/** A route parameter as written in the address, decoded (names may hold any character). */
const decode = (value: string | undefined) => {
  try {
    return decodeURIComponent(value ?? "");
  } catch {
    return value ?? "";
  }
};

type Start = { state: "loading" } | { state: "sign-in"; refused?: unknown } | { state: "failed"; error: unknown } | { state: "ready"; session: Session };

/** Asks the server who the stored credential (or none) is and what the process runs. */
async function open(signOut: () => void): Promise<Session> {
  const who = await getJson<WhoAmI>("/api/v1/whoami");
  let services: Service[] | null = null;
  try {
    services = (await getJson<{ services: Service[] }>("/api/v1/services")).services;
  } catch (e) {
    // `nexus registry` has no service list: the registry is all there is.
    if (!(e instanceof ApiError && e.status === 404)) throw e;
  }
  const allowed = new Set(who.allowed);
  const serving = services?.find((s) => s.name === "serving");
  const modelControlMode = typeof serving?.settings?.model_control_mode === "string" ? serving.settings.model_control_mode : null;
  return { who, parts: partsOf(services), modelControlMode, can: (c) => allowed.has(c), signOut };
}

export function App() {
  const [start, setStart] = useState<Start>({ state: "loading" });
  const signOut = () => {
    setCredential(null);
    setStart({ state: "sign-in" });
  };
  const begin = async () => {
    try {
      setStart({ state: "ready", session: await open(signOut) });
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        // No credential, or one the server no longer takes (revoked, expired).
        const refused = credential() ? e : undefined;
        setCredential(null);
        setStart({ state: "sign-in", refused });
      } else {
        setStart({ state: "failed", error: e });
      }
    }
  };
  useEffect(() => {
    begin();
  }, []);

  switch (start.state) {
    case "loading":
      return <Loading what="Connecting" />;
    case "failed":
      return (
        <div class="center">
          <h1>Nexus</h1>
          <ErrorBox error={start.error} />
          <button onClick={begin}>Try again</button>
        </div>
      );
    case "sign-in":
      return <SignIn refused={start.refused} onSignedIn={begin} />;
    case "ready":
      return (
        <SessionContext.Provider value={start.session}>
          <Router hook={useHashLocation}>
            <Shell />
          </Router>
        </SessionContext.Provider>
      );
  }
}

/** The credential form: an API key (`nexus token create`) or a JWT, checked against
 * `whoami` before it is kept for this tab. */
function SignIn({ refused, onSignedIn }: { refused?: unknown; onSignedIn: () => void }) {
  const [value, setValue] = useState("");
  const [error, setError] = useState<unknown>(refused);
  const [busy, setBusy] = useState(false);
  return (
    <div class="center">
      <form
        class="card signin"
        data-testid="sign-in"
        onSubmit={async (e) => {
          e.preventDefault();
          setBusy(true);
          setError(null);
          try {
            const token = value.trim();
            await call("/api/v1/whoami", { token });
            setCredential(token);
            onSignedIn();
          } catch (err) {
            setError(err);
          } finally {
            setBusy(false);
          }
        }}
      >
        <h1>Nexus console</h1>
        <p>This server requires authentication. Paste an API key (from <code>nexus token create</code>) or a JWT.</p>
        <input
          type="password"
          autocomplete="off"
          value={value}
          data-testid="credential"
          placeholder="nexus_… or eyJ…"
          onInput={(e) => setValue((e.target as HTMLInputElement).value)}
        />
        <button class="primary" type="submit" disabled={busy || !value.trim()}>
          Sign in
        </button>
        <p class="muted small">Kept in this tab only (session storage) and sent as a bearer token to this server.</p>
        <ErrorBox error={error} />
      </form>
    </div>
  );
}

const PAGES: { href: string; label: string; part: Part | "services"; reads: string }[] = [
  { href: "/serving", label: "Models", part: "serving", reads: "inference_read" },
  { href: "/experiments", label: "Experiments", part: "registry", reads: "registry_read" },
  { href: "/models", label: "Registered models", part: "registry", reads: "registry_read" },
  { href: "/pipelines", label: "Pipelines", part: "pipelines", reads: "pipeline_read" },
  { href: "/optimizer", label: "Optimiser", part: "optimizer", reads: "optimizer_read" },
  { href: "/services", label: "Services", part: "services", reads: "inference_read" },
];

function Shell() {
  const session = useSession();
  const [location] = useLocation();
  // `nexus registry` runs the registry alone and has no service list.
  const hasServices = session.parts.size > 1 || session.parts.has("serving");
  const pages = PAGES.filter((p) => (p.part === "services" ? hasServices : session.parts.has(p.part)));
  const home = pages.find((p) => session.can(p.reads))?.href ?? pages[0]?.href ?? "/experiments";
  return (
          <div class="shell">
            <nav class="side">
              <div class="brand">Nexus</div>
              {pages.map((p) => (
                <Link
                  key={p.href}
                  href={p.href}
                  class={`${location === p.href || location.startsWith(`${p.href}/`) ? "active" : ""} ${session.can(p.reads) ? "" : "denied"}`}
                  title={session.can(p.reads) ? undefined : "your role may not read this"}
                >
                  {p.label}
                </Link>
              ))}
            </nav>
            <main>
              <header class="top">
                <span />
                <Identity />
              </header>
              <Switch>
                <Route path="/">
                  <Redirect to={home} replace />
                </Route>
                <Route path="/serving">
                  <ServingPage />
                </Route>
                <Route path="/serving/:model">{(p) => <ServingModelPage model={decode(p.model)} />}</Route>
                <Route path="/experiments">
                  <ExperimentsPage />
                </Route>
                <Route path="/experiments/:id">{(p) => <ExperimentPage id={decode(p.id)} />}</Route>
                <Route path="/experiments/:id/runs/:run">{(p) => <RunPage experiment={decode(p.id)} run={decode(p.run)} />}</Route>
                <Route path="/runs/:run">{(p) => <RunRedirect run={decode(p.run)} />}</Route>
                <Route path="/models">
                  <ModelsPage />
                </Route>
                <Route path="/models/:name">{(p) => <ModelPage name={decode(p.name)} />}</Route>
                <Route path="/models/:name/versions/:version">
                  {(p) => <VersionPage name={decode(p.name)} version={decode(p.version)} />}
                </Route>
                <Route path="/pipelines">
                  <PipelinesPage />
                </Route>
                <Route path="/pipelines/runs/:id">{(p) => <PipelineRunPage id={decode(p.id)} />}</Route>
                <Route path="/optimizer">
                  <OptimizerPage />
                </Route>
                <Route path="/services">
                  <ServicesPage />
                </Route>
                <Route>
                  <div class="page">
                    <h1>Not found</h1>
                    <p>
                      No console page at <code>#{location}</code>. <Link href={home}>Home</Link>
                    </p>
                  </div>
                </Route>
              </Switch>
            </main>
          </div>
  );
}

function Identity() {
  const session = useSession();
  if (!session.who.auth) {
    return (
      <span class="identity muted" data-testid="identity" data-role="">
        authentication off
      </span>
    );
  }
  return (
    <span class="identity" data-testid="identity" data-role={session.who.role ?? ""}>
      {session.who.subject} <span class="badge">{session.who.role}</span>{" "}
      <button class="link" onClick={session.signOut}>
        Sign out
      </button>
    </span>
  );
}
