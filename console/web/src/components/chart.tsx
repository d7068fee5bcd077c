// A line chart drawn by uPlot. The uPlot instance is left on the chart's element as
// `uplot`, so a test (or someone in the browser's console) can ask where each data point
// was drawn (`uplot.valToPos`) and check the canvas there.
import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

export interface ChartSeries {
  label: string;
  /** One value per x; null where the series has none. */
  values: (number | null)[];
  /** Steps instead of slopes between points (traffic weights). */
  stepped?: boolean;
  dash?: number[];
}

export interface ChartProps {
  title?: string;
  /** x values, ascending: steps, or Unix times in seconds when `time`. */
  x: number[];
  series: ChartSeries[];
  time?: boolean;
  xLabel?: string;
  yLabel?: string;
  height?: number;
  testId?: string;
}

const COLORS = ["#2f5bd3", "#d9480f", "#2b8a3e", "#9c36b5", "#e67700", "#0b7285", "#c2255c"];

export function Chart(props: ChartProps) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);

  // A new chart when the series change shape; new data only otherwise.
  const shape = JSON.stringify([props.series.map((s) => [s.label, s.stepped, s.dash]), props.time, props.height]);
  useEffect(() => {
    const el = box.current!;
    const width = Math.max(el.clientWidth, 320);
    const sparse = props.x.length <= 500;
    const options: uPlot.Options = {
      title: props.title,
      width,
      height: props.height ?? 220,
      // One point alone gets a unit of room either side, not a scale of 0 to 100.
      scales: { x: { time: !!props.time, range: (_u, min, max) => (min === max ? [min - 1, max + 1] : [min, max]) } },
      axes: [{ label: props.xLabel }, { label: props.yLabel, size: 60 }],
      series: [
        { label: props.xLabel ?? (props.time ? "time" : "x") },
        ...props.series.map((s, i) => ({
          label: s.label,
          stroke: COLORS[i % COLORS.length],
          width: 2,
          dash: s.dash,
          spanGaps: true,
          paths: s.stepped ? uPlot.paths.stepped!({ align: 1 }) : undefined,
          points: { show: sparse, size: 7, fill: COLORS[i % COLORS.length] },
        })),
      ],
    };
    const u = new uPlot(options, [props.x, ...props.series.map((s) => s.values)] as uPlot.AlignedData, el);
    plot.current = u;
    (el as HTMLDivElement & { uplot?: uPlot }).uplot = u;
    const resize = new ResizeObserver(() => {
      const w = Math.max(el.clientWidth, 320);
      if (Math.abs(w - u.width) > 2) u.setSize({ width: w, height: u.height });
    });
    resize.observe(el);
    return () => {
      resize.disconnect();
      u.destroy();
      plot.current = null;
    };
  }, [shape]);

  useEffect(() => {
    plot.current?.setData([props.x, ...props.series.map((s) => s.values)] as uPlot.AlignedData);
  }, [props.x, props.series]);

  return <div class="chart" ref={box} data-testid={props.testId} />;
}
