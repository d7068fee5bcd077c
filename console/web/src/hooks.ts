// Loading data for a page: once, or again every few seconds while the page is open.
import { useCallback, useEffect, useRef, useState } from "preact/hooks";

export interface Loaded<T> {
  data?: T;
  error: unknown;
  loading: boolean;
  /** Loads again now. */
  reload: () => void;
}

/**
 * Runs `load` when `deps` change and then every `intervalMs` (null: once), keeping the last
 * data while a reload is under way; a load still running when the page goes is aborted.
 */
export function usePoll<T>(
  load: (signal: AbortSignal) => Promise<T>,
  deps: unknown[],
  intervalMs: number | null = null,
): Loaded<T> {
  const [state, setState] = useState<{ data?: T; error: unknown; loading: boolean }>({
    error: undefined,
    loading: true,
  });
  const [tick, setTick] = useState(0);
  const loadRef = useRef(load);
  loadRef.current = load;

  useEffect(() => {
    const controller = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    let stopped = false;
    const run = async () => {
      try {
        const data = await loadRef.current(controller.signal);
        if (!stopped) setState({ data, error: undefined, loading: false });
      } catch (error) {
        if (stopped || (error instanceof DOMException && error.name === "AbortError")) return;
        setState((s) => ({ data: s.data, error, loading: false }));
      }
      if (!stopped && intervalMs !== null) timer = setTimeout(run, intervalMs);
    };
    setState((s) => ({ ...s, loading: true }));
    run();
    return () => {
      stopped = true;
      controller.abort();
      if (timer) clearTimeout(timer);
    };
    // `deps` says when to start over; `load` may be a new closure on every render, so the
    // ref holds the latest one instead.
  }, [...deps, intervalMs, tick]);

  const reload = useCallback(() => setTick((t) => t + 1), []);
  return { ...state, reload };
}
