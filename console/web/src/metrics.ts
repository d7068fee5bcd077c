// Live serving figures from the server's own metrics (GET /api/v1/metrics: each model
// version's counters and histograms, the numbers :8002/metrics exports). Counters and
// histograms only grow, so two reads a few seconds apart give the figures of that interval:
// request rate from the success counter, p50/p99 from the latency histogram's buckets (as
// Prometheus' histogram_quantile does), mean queue time from Triton's queue-duration
// counter, mean batch size from the batch-size histogram.

interface Histogram {
  /** Upper bounds and cumulative counts, smallest bound first; the +Inf bucket is `count`. */
  buckets: [number, number][];
  count: number;
  sum: number;
}

/** One version in the answer of GET /api/v1/metrics. */
interface Counters {
  model: string;
  version: string;
  success: number;
  failure: number;
  queue_us: number;
  pending: number;
  latency_seconds: Histogram | null;
  batch_size: Histogram | null;
}

/** Every model version's counters at one moment. */
export interface Snapshot {
  at: number;
  versions: Map<string, Counters>;
}

/** One version's figures over the interval between two snapshots. */
export interface VersionFigures {
  model: string;
  version: string;
  requestsPerSec: number;
  failuresPerSec: number;
  /** Seconds; null when no request finished in the interval. */
  p50: number | null;
  p99: number | null;
  /** Mean time a request waited for an instance, in milliseconds. */
  queueMs: number | null;
  /** Mean rows per execution. */
  batchSize: number | null;
  /** Requests waiting now. */
  pending: number;
}

const key = (model: string, version: string) => `${model}\u0000${version}`;

export function snapshot(body: { versions: Counters[] }, at: number): Snapshot {
  return { at, versions: new Map(body.versions.map((v) => [key(v.model, v.version), v])) };
}

/** The `q` quantile of the observations between two reads of a histogram, interpolated
 * linearly inside the bucket it falls in (Prometheus' histogram_quantile); past the last
 * finite bound, that bound. */
export function quantile(q: number, before: Histogram | null | undefined, after: Histogram): number | null {
  const prior = new Map(before?.buckets ?? []);
  const total = after.count - (before?.count ?? 0);
  if (total <= 0) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const [le, cumulative] of after.buckets) {
    const count = cumulative - (prior.get(le) ?? 0);
    if (count >= rank) {
      const inBucket = count - below;
      return inBucket > 0 ? lower + ((le - lower) * (rank - below)) / inBucket : le;
    }
    lower = le;
    below = count;
  }
  return lower;
}

export function figures(before: Snapshot, after: Snapshot): VersionFigures[] {
  const seconds = (after.at - before.at) / 1000;
  const out: VersionFigures[] = [];
  if (seconds <= 0) return out;
  for (const [k, now] of after.versions) {
    const then = before.versions.get(k);
    const done = now.success - (then?.success ?? 0);
    const batches = now.batch_size ? now.batch_size.count - (then?.batch_size?.count ?? 0) : 0;
    out.push({
      model: now.model,
      version: now.version,
      requestsPerSec: done / seconds,
      failuresPerSec: (now.failure - (then?.failure ?? 0)) / seconds,
      p50: now.latency_seconds ? quantile(0.5, then?.latency_seconds, now.latency_seconds) : null,
      p99: now.latency_seconds ? quantile(0.99, then?.latency_seconds, now.latency_seconds) : null,
      queueMs: done > 0 ? (now.queue_us - (then?.queue_us ?? 0)) / done / 1000 : null,
      batchSize: batches > 0 && now.batch_size ? (now.batch_size.sum - (then?.batch_size?.sum ?? 0)) / batches : null,
      pending: now.pending,
    });
  }
  return out;
}
