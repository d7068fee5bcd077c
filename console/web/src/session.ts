// What the console knows about the caller and the server: the caller's identity and rights
// from GET /api/v1/whoami, and which parts this process runs from GET /api/v1/services.
import { createContext } from "preact";
import { useContext } from "preact/hooks";

/** The answer of GET /api/v1/whoami. */
export interface WhoAmI {
  auth: boolean;
  subject: string | null;
  role: string | null;
  /** Route classes the caller may use (gateway/src/policy.rs). */
  allowed: string[];
}

/** Parts a page may need; the console hides pages of parts the process does not run. */
export type Part = "serving" | "registry" | "pipelines" | "optimizer";

export interface Session {
  who: WhoAmI;
  parts: Set<Part>;
  /** Serving's `--model-control-mode`: the repository API loads and unloads only in `explicit` and `on-demand`. */
  modelControlMode: string | null;
  /** Whether the caller's role allows requests of `routeClass` (e.g. "registry_write"). */
  can(routeClass: string): boolean;
  signOut(): void;
}

export const SessionContext = createContext<Session | null>(null);

export function useSession(): Session {
  const session = useContext(SessionContext);
  if (!session) throw new Error("useSession outside the signed-in console");
  return session;
}

/** Parts of the process named by `/api/v1/services` (`nexus serve` and `nexus up` list
 * theirs; `nexus registry` has no such list and runs the registry alone). */
export function partsOf(services: { name: string }[] | null): Set<Part> {
  if (services === null) return new Set(["registry"]);
  const names = new Set(services.map((s) => s.name));
  const parts = new Set<Part>();
  for (const part of ["serving", "registry", "pipelines", "optimizer"] as Part[]) {
    if (names.has(part)) parts.add(part);
  }
  return parts;
}
