// Every call the console makes to its own server. The credential, when the user gave one,
// travels in the Authorization header only: never in a URL (URLs land in logs and browser
// history) and never in a log line. Failures become an ApiError with the HTTP status and the
// server's own message, whichever API's error shape it came in.

const CREDENTIAL_KEY = "nexus.credential";

/** The API key or JWT of this browser tab (sessionStorage: gone when the tab closes). */
export function credential(): string | null {
  return sessionStorage.getItem(CREDENTIAL_KEY);
}

export function setCredential(value: string | null): void {
  if (value) sessionStorage.setItem(CREDENTIAL_KEY, value);
  else sessionStorage.removeItem(CREDENTIAL_KEY);
}

/** A refused or failed call: `status` is the HTTP status (0 when the server was not reached). */
export class ApiError extends Error {
  constructor(
    public readonly status: number,
    message: string,
    public readonly code?: string,
  ) {
    super(message);
  }

  /** What kind of failure, as a heading: 401 and 403 are shown as such. */
  get title(): string {
    switch (this.status) {
      case 0:
        return "Server not reached";
      case 401:
        return "Not authenticated (401)";
      case 403:
        return "Forbidden (403)";
      case 404:
        return "Not found (404)";
      case 429:
        return "Rate limited (429)";
      default:
        return `Error ${this.status}`;
    }
  }
}

/** The message of an error body: V2's `{"error": "..."}`, MLflow's `{"error_code",
 * "message"}` or the pipelines' `{"error": {"code", "message"}}`. */
function describe(status: number, text: string): ApiError {
  try {
    const body = JSON.parse(text);
    if (typeof body?.error === "string") return new ApiError(status, body.error);
    if (body?.error && typeof body.error.message === "string") {
      return new ApiError(status, body.error.message, body.error.code);
    }
    if (typeof body?.message === "string") return new ApiError(status, body.message, body.error_code);
  } catch {
    // Not JSON: the text itself is the message.
  }
  return new ApiError(status, text.trim() || `HTTP ${status}`);
}

export interface CallOptions {
  method?: string;
  /** Sent as JSON. */
  json?: unknown;
  signal?: AbortSignal;
  /** Use this credential instead of the stored one (checking a new one at sign-in). */
  token?: string | null;
}

/** Calls `path` on this server; resolves to the response when its status is 2xx. */
export async function call(path: string, options: CallOptions = {}): Promise<Response> {
  const headers: Record<string, string> = {};
  const token = options.token !== undefined ? options.token : credential();
  if (token) headers.Authorization = `Bearer ${token}`;
  let body: string | undefined;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(options.json);
  }
  let response: Response;
  try {
    response = await fetch(path, {
      method: options.method ?? (body === undefined ? "GET" : "POST"),
      headers,
      body,
      signal: options.signal,
      cache: "no-store",
    });
  } catch (e) {
    if (e instanceof DOMException && e.name === "AbortError") throw e;
    throw new ApiError(0, `the server did not answer: ${e}`);
  }
  if (!response.ok) throw describe(response.status, await response.text());
  return response;
}

export async function getJson<T>(path: string, signal?: AbortSignal): Promise<T> {
  return (await call(path, { signal })).json() as Promise<T>;
}

export async function postJson<T>(path: string, json: unknown, signal?: AbortSignal): Promise<T> {
  return (await call(path, { json, signal })).json() as Promise<T>;
}

/** `path?k=v&…`, leaving out empty values. */
export function withQuery(path: string, query: Record<string, string | number | undefined | null>): string {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") params.set(key, String(value));
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

/** Downloads `path` with the credential and hands the bytes to the browser as a file:
 * a plain link could not carry the Authorization header. */
export async function download(path: string, filename: string): Promise<void> {
  const blob = await (await call(path)).blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
