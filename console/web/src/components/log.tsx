// A step's log as it is written: GET /api/v1/pipelines/runs/{id}/logs?step=…&follow=true
// streams new lines until the step ends, read here chunk by chunk through fetch (with the
// credential in its header, which an EventSource could not send).
import { useEffect, useRef, useState } from "preact/hooks";
import { call, withQuery } from "../api";
import { ErrorBox } from "./ui";

/** The most text kept on the page; older lines are dropped beyond it. */
const MAX_CHARS = 2_000_000;

export function LogView({ runId, step, follow }: { runId: string; step: string; follow: boolean }) {
  const [text, setText] = useState("");
  const [error, setError] = useState<unknown>(null);
  const [streaming, setStreaming] = useState(false);
  const box = useRef<HTMLPreElement>(null);

  useEffect(() => {
    const controller = new AbortController();
    setText("");
    setError(null);
    setStreaming(true);
    (async () => {
      try {
        const response = await call(
          withQuery(`/api/v1/pipelines/runs/${encodeURIComponent(runId)}/logs`, { step, follow: String(follow) }),
          { signal: controller.signal },
        );
        const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          setText((t) => {
            const all = t + value;
            return all.length > MAX_CHARS ? all.slice(all.length - MAX_CHARS) : all;
          });
        }
      } catch (e) {
        if (!(e instanceof DOMException && e.name === "AbortError")) setError(e);
      } finally {
        if (!controller.signal.aborted) setStreaming(false);
      }
    })();
    return () => controller.abort();
    // Restarted when the step changes, and once more when it ends (to read to the end).
  }, [runId, step, follow]);

  useEffect(() => {
    const el = box.current;
    if (el && el.scrollHeight - el.scrollTop - el.clientHeight < 80) el.scrollTop = el.scrollHeight;
  }, [text]);

  return (
    <div class="log">
      <div class="log-head">
        <span>
          Log of <code>{step}</code>
        </span>
        <span class={streaming ? "live" : "muted"} data-testid="log-state">
          {streaming ? (follow ? "● streaming" : "loading") : "complete"}
        </span>
      </div>
      <ErrorBox error={error} />
      <pre ref={box} data-testid="log">
        {text || (streaming ? "" : "(empty)")}
      </pre>
    </div>
  );
}
