// A pipeline run's DAG, laid out by dagre and drawn as SVG: each step a node coloured by its
// state, sub-DAGs (loop bodies, condition branches, nested pipelines) as labelled boxes
// around their steps, and each dependency an arrow. The shape comes from the run's own
// graph (GET /api/v1/pipelines/runs/{id} → graph), the states from its task records.
import dagre from "@dagrejs/dagre";
import { useMemo } from "preact/hooks";

export interface OutlineNode {
  id: string;
  name: string;
  parent?: string;
  kind: "exec" | "dag";
  condition?: string;
  loop?: { items: unknown[] | null; input?: string; item: string; parallelism: number };
  always: boolean;
  retries: number;
  cache: boolean;
}

export interface Outline {
  nodes: OutlineNode[];
  edges: { from: string; to: string }[];
}

export interface TaskRecord {
  path: string;
  name: string;
  status: string;
  attempts: number;
  cached: boolean;
  outputs: {
    parameters?: Record<string, unknown>;
    artifacts?: Record<string, { name: string; uri: string; dir?: boolean; metadata?: Record<string, unknown>; metadata_only?: boolean; schema_title?: string }[]>;
  } | null;
  error: string | null;
  started_at: number | null;
  finished_at: number | null;
}

/** What the records say about one node: its own record, and one per loop iteration. */
export interface NodeState {
  own?: TaskRecord;
  iterations: TaskRecord[];
  /** The state to show; null before the step was first seen. */
  status: string | null;
}

/**
 * The node a task record belongs to. Records carry loop iteration indexes in their paths
 * (`fan/0/step`), the outline does not (`fan/step`): the segment after a loop's own is its
 * iteration.
 */
export function nodeOfPath(path: string, loops: Set<string>): { id: string; iteration: boolean } {
  let id = "";
  let iteration = false;
  let skipNext = false;
  for (const segment of path.split("/")) {
    if (skipNext) {
      skipNext = false;
      iteration = true;
      continue;
    }
    id = id ? `${id}/${segment}` : segment;
    skipNext = loops.has(id);
  }
  return { id, iteration };
}

/** Several iterations' states as one: running, failed or cancelled wins over the rest. */
function combined(records: TaskRecord[]): string | null {
  if (!records.length) return null;
  const has = (s: string) => records.some((r) => r.status === s);
  for (const s of ["RUNNING", "FAILED", "CANCELLED", "PENDING"]) if (has(s)) return s;
  return records.every((r) => r.status === "SKIPPED") ? "SKIPPED" : "SUCCEEDED";
}

export function nodeStates(outline: Outline, tasks: TaskRecord[]): Map<string, NodeState> {
  const loops = new Set(outline.nodes.filter((n) => n.loop).map((n) => n.id));
  const states = new Map<string, NodeState>(outline.nodes.map((n) => [n.id, { iterations: [], status: null }]));
  for (const task of tasks) {
    const { id, iteration } = nodeOfPath(task.path, loops);
    const state = states.get(id);
    if (!state) continue;
    if (iteration) state.iterations.push(task);
    else state.own = task;
  }
  for (const state of states.values()) {
    state.status = state.own?.status ?? combined(state.iterations);
  }
  return states;
}

interface Placed {
  node: OutlineNode;
  x: number;
  y: number;
  width: number;
  height: number;
  cluster: boolean;
}

interface Layout {
  width: number;
  height: number;
  nodes: Placed[];
  edges: { from: string; to: string; points: { x: number; y: number }[] }[];
}

const NODE_HEIGHT = 54;
/** Widths of a character of a node's name (13 px, bold), its state line and a box's label. */
const NAME_CHAR = 8;
const STATE_CHAR = 6.6;
const LABEL_CHAR = 6.6;

/** Names as people read them: a compiled KFP pipeline calls a parameter
 * `inputs.parameter_values['pipelinechannel--limit']`; this shows `limit`. */
export function readable(text: string): string {
  return text.replace(/inputs\.parameter_values\['([^']*)'\]/g, "$1").replace(/pipelinechannel--/g, "");
}

export function loopText(node: OutlineNode): string {
  const loop = node.loop!;
  const over = loop.items ? JSON.stringify(loop.items) : `'${loop.input}'`;
  return readable(`for each ${loop.item} in ${over}${loop.parallelism ? `, ${loop.parallelism} at once` : ""}`);
}

export function conditionText(node: OutlineNode): string {
  return readable(`if ${node.condition}`);
}

/** The label of a group box: what makes it a group. */
function clusterLabel(node: OutlineNode): string {
  if (node.loop) return `⟳ ${node.name}: ${loopText(node)}`;
  if (node.condition) return `◇ ${node.name}: ${conditionText(node)}`;
  return node.name;
}

/** `text` cut to `width` pixels of characters `char` wide, with an ellipsis when cut. */
function fit(text: string, width: number, char: number): string {
  const room = Math.max(4, Math.floor(width / char));
  return text.length <= room ? text : `${text.slice(0, room - 1)}…`;
}

export function layout(outline: Outline): Layout {
  const children = new Map<string, string[]>();
  for (const n of outline.nodes) {
    if (n.parent) children.set(n.parent, [...(children.get(n.parent) ?? []), n.id]);
  }
  const isCluster = (id: string) => (children.get(id)?.length ?? 0) > 0;
  const outgoing = new Set(outline.edges.map((e) => e.from));
  const incoming = new Set(outline.edges.map((e) => e.to));
  // An arrow to (from) a group goes to its first (from its last) steps: dagre lays out
  // edges between nodes, not boxes, and these are the steps that really wait (finish last).
  const ends = (id: string, first: boolean): string[] => {
    if (!isCluster(id)) return [id];
    const kids = children.get(id)!.filter((k) => !(first ? incoming : outgoing).has(k));
    return kids.flatMap((k) => ends(k, first));
  };

  const g = new dagre.graphlib.Graph({ compound: true, multigraph: true });
  g.setGraph({ rankdir: "TB", nodesep: 28, ranksep: 48, marginx: 12, marginy: 12 });
  g.setDefaultEdgeLabel(() => ({}));
  const byId = new Map(outline.nodes.map((n) => [n.id, n]));
  // A step that runs once per loop iteration has a longer state line ("· 3/4 iterations").
  const inLoop = (n: OutlineNode) => {
    for (let p: OutlineNode | undefined = n; p; p = p.parent ? byId.get(p.parent) : undefined) if (p.loop) return true;
    return false;
  };
  for (const n of outline.nodes) {
    if (isCluster(n.id)) {
      g.setNode(n.id, { width: 0, height: 0 });
    } else {
      const name = (n.name.length + (n.loop || n.condition ? 2 : 0)) * NAME_CHAR;
      const state = (inLoop(n) ? 30 : 20) * STATE_CHAR;
      g.setNode(n.id, { width: Math.round(Math.max(name, state, 110) + 24), height: NODE_HEIGHT });
    }
  }
  for (const n of outline.nodes) if (n.parent) g.setParent(n.id, n.parent);
  const edges: { from: string; to: string; source: string; target: string }[] = [];
  for (const e of outline.edges) {
    for (const source of ends(e.from, false)) {
      for (const target of ends(e.to, true)) {
        edges.push({ from: e.from, to: e.to, source, target });
        g.setEdge(source, target, {}, `${e.from}\u0000${e.to}\u0000${source}\u0000${target}`);
      }
    }
  }
  dagre.layout(g);
  const graph = g.graph();
  const nodes: Placed[] = outline.nodes.map((node) => {
    const placed = g.node(node.id);
    return {
      node,
      x: placed.x ?? 0,
      y: placed.y ?? 0,
      width: placed.width,
      height: placed.height,
      cluster: isCluster(node.id),
    };
  });
  // Boxes of groups first, so their steps are drawn on top.
  nodes.sort((a, b) => Number(b.cluster) - Number(a.cluster) || depth(a.node) - depth(b.node));
  function depth(n: OutlineNode): number {
    let d = 0;
    for (let p = n.parent; p; p = byId.get(p)?.parent) d++;
    return d;
  }
  return {
    width: graph.width ?? 0,
    height: graph.height ?? 0,
    nodes,
    edges: edges.map((e) => ({
      from: e.from,
      to: e.to,
      points: g.edge({ v: e.source, w: e.target, name: `${e.from}\u0000${e.to}\u0000${e.source}\u0000${e.target}` }).points ?? [],
    })),
  };
}

function iterationSummary(state: NodeState | undefined): string {
  if (!state?.iterations.length) return "";
  const done = state.iterations.filter((t) => t.status === "SUCCEEDED").length;
  return ` · ${done}/${state.iterations.length} iterations`;
}

export function DagView(props: {
  outline: Outline;
  states: Map<string, NodeState>;
  selected?: string;
  onSelect: (id: string) => void;
}) {
  const placed = useMemo(() => layout(props.outline), [JSON.stringify(props.outline)]);
  if (!props.outline.nodes.length) return <p class="muted">This pipeline has no steps.</p>;
  return (
    <div class="dag-scroll">
      <svg
        class="dag"
        data-testid="dag"
        width={placed.width}
        height={placed.height}
        viewBox={`0 0 ${placed.width} ${placed.height}`}
        role="img"
        aria-label="pipeline graph"
      >
        <defs>
          <marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
            <path d="M 0 0 L 10 5 L 0 10 z" fill="#7a8699" />
          </marker>
        </defs>
        {placed.nodes.filter((p) => p.cluster).map((p) => {
          const state = props.states.get(p.node.id);
          const status = state?.status ?? "NOT STARTED";
          return (
            <g
              key={p.node.id}
              class={`cluster state-${status.toLowerCase().replace(/ /g, "-")}${props.selected === p.node.id ? " selected" : ""}`}
              data-node-id={p.node.id}
              data-state={status}
              data-kind={p.node.loop ? "loop" : p.node.condition ? "condition" : "dag"}
              onClick={(e) => {
                e.stopPropagation();
                props.onSelect(p.node.id);
              }}
            >
              <title>{clusterLabel(p.node)}</title>
              <rect x={p.x - p.width / 2} y={p.y - p.height / 2} width={p.width} height={p.height} rx={8} />
              <text x={p.x - p.width / 2 + 10} y={p.y - p.height / 2 + 16} class="cluster-label">
                {fit(`${clusterLabel(p.node)} · ${status}`, p.width - 20, LABEL_CHAR)}
              </text>
            </g>
          );
        })}
        {placed.edges.map((e, i) => (
          <path
            key={i}
            class="edge"
            data-from={e.from}
            data-to={e.to}
            d={e.points.map((pt, j) => `${j ? "L" : "M"} ${pt.x} ${pt.y}`).join(" ")}
            marker-end="url(#arrow)"
          />
        ))}
        {placed.nodes.filter((p) => !p.cluster).map((p) => {
          const state = props.states.get(p.node.id);
          const status = state?.status ?? "NOT STARTED";
          const subtitle = p.node.loop ? "⟳ " : p.node.condition ? "◇ " : "";
          return (
            <g
              key={p.node.id}
              class={`node state-${status.toLowerCase().replace(/ /g, "-")}${props.selected === p.node.id ? " selected" : ""}`}
              data-node-id={p.node.id}
              data-state={status}
              data-kind={p.node.loop ? "loop" : p.node.condition ? "condition" : p.node.kind}
              transform={`translate(${p.x - p.width / 2}, ${p.y - p.height / 2})`}
              onClick={() => props.onSelect(p.node.id)}
            >
              <title>{p.node.loop ? loopText(p.node) : p.node.condition ? conditionText(p.node) : p.node.id}</title>
              <rect width={p.width} height={p.height} rx={8} />
              <text x={12} y={22} class="node-name">
                {subtitle}
                {p.node.name}
              </text>
              <text x={12} y={41} class="node-state">
                {status}
                {state?.own?.cached ? " · cached" : ""}
                {iterationSummary(state)}
              </text>
            </g>
          );
        })}
      </svg>
    </div>
  );
}
