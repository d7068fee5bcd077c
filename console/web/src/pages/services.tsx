// The parts of this Nexus process and their health checks (GET /api/v1/services).
import { getJson } from "../api";
import { usePoll } from "../hooks";
import { Grid, Loader, Section, Status } from "../components/ui";

export interface Service {
  name: string;
  status: "up" | "down";
  version: string;
  address: string;
  settings?: Record<string, unknown>;
  checks: Record<string, { status: "ok" | "error"; error?: string }>;
}

export function ServicesPage() {
  const services = usePoll((signal) => getJson<{ services: Service[] }>("/api/v1/services", signal), [], 5000);
  return (
    <div class="page">
      <h1>Services</h1>
      <p class="lead">Each part of this process and the checks it must pass to be ready (refreshed every 5 s).</p>
      <Loader state={services}>
        {({ services: list }) => (
          <Section title={list.every((s) => s.status === "up") ? "All ready" : "Not ready"}>
            <Grid testId="services" columns={["Service", "Status", "Address", "Checks", "Version"]}>
              {list.map((s) => (
                <tr key={s.name} data-service={s.name}>
                  <td>{s.name}</td>
                  <td>
                    <Status value={s.status === "up" ? "UP" : "DOWN"} />
                  </td>
                  <td>
                    <code>{s.address}</code>
                    {Object.entries(s.settings ?? {}).map(([k, v]) => (
                      <div key={k} class="muted small">
                        {k}: {String(v)}
                      </div>
                    ))}
                  </td>
                  <td>
                    {Object.entries(s.checks).map(([what, c]) => (
                      <div key={what}>
                        {what}: <Status value={c.status === "ok" ? "OK" : "ERROR"} /> {c.error}
                      </div>
                    ))}
                    {!Object.keys(s.checks).length && <span class="muted">—</span>}
                  </td>
                  <td>{s.version}</td>
                </tr>
              ))}
            </Grid>
          </Section>
        )}
      </Loader>
    </div>
  );
}
