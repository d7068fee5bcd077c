"""The Kubeflow Pipelines (kfp 2.x, pinned in requirements-dev.txt) pipelines that test_kfp.py
compiles, runs through Nexus and, where it can, through `kfp.local.SubprocessRunner(use_venv=False)`.

Every component here runs without a container: lightweight Python components (their command is
`sh -c '<pip prelude>; python3 -m kfp.dsl.executor_main ...'`) and container components whose
command is plain `sh`. Most lightweight components pass `install_kfp_package=False` (no
`pip install kfp` prelude: it costs ~1 s a step on a small machine); `make_data` and `square` keep
the default prelude so the real `pip install 'kfp==…'` line is exercised too. Either way the
step's `python3` must be able to `import kfp`.

Values are chosen so that a wrong edge shows: every pipeline output depends on several tasks.
"""


from typing import List, NamedTuple, Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output, OutputPath

IMAGE = "python:3.11"  # kfp.local's SubprocessRunner warns unless the image name says python


def light(func):
    """A lightweight Python component without the `pip install kfp` prelude."""
    return dsl.component(func, base_image=IMAGE, install_kfp_package=False)


# --- components ------------------------------------------------------------------------------


@dsl.component(base_image=IMAGE)  # default prelude: `pip install kfp==<this version>` first
def make_data(
    n: int, prefix: str, data: Output[Dataset], model: Output[Model]
) -> NamedTuple("MadeData", [("count", int), ("names", List[str])]):
    rows = [f"{prefix}{i}" for i in range(n)]
    with open(data.path, "w") as f:
        f.write("\n".join(rows) + "\n")
    data.metadata["rows"] = n
    with open(model.path, "w") as f:
        f.write(f"weights={n * 7}")
    model.metadata["framework"] = "none"
    # (the component's source is all that runs: the NamedTuple type is built here again)
    return NamedTuple("MadeData", [("count", int), ("names", List[str])])(n, rows)


@light
def describe(
    data: Input[Dataset], model: Input[Model], suffix: str, report: Output[Artifact], summary: OutputPath(str)
) -> int:
    lines = open(data.path).read().splitlines()
    weights = open(model.path).read()
    rows = int(data.metadata["rows"])  # metadata numbers may come back as floats (protobuf Struct)
    with open(report.path, "w") as f:
        f.write(f"{len(lines)} rows, first={lines[0]}, meta_rows={rows}, "
                f"framework={model.metadata.get('framework')}, {weights}{suffix}")
    with open(summary, "w") as f:
        f.write("|".join(lines))
    return len(lines)


@dsl.component(base_image=IMAGE)
def square(x: int) -> int:
    return x * x


@light
def add(a: int, b: int) -> int:
    return a + b


@light
def total(xs: List[int]) -> int:
    # Collected ints may arrive as floats (protobuf Struct numbers): int() keeps the output an int.
    return int(sum(xs))


@light
def shout(name: str, mark: str) -> str:
    return name.upper() + mark


@light
def split(text: str, sep: str) -> List[str]:
    return text.split(sep)


@light
def join(words: List[str], sep: str) -> str:
    return sep.join(sorted(words))


@light
def weigh(name: str, weight: str, factor: float) -> float:
    return round(float(weight) * factor + len(name), 3)


@light
def sum_floats(xs: List[float]) -> float:
    return round(sum(xs), 3)


@light
def write_part(text: str, part: Output[Dataset]):
    with open(part.path, "w") as f:
        f.write(text)
    part.metadata["length"] = len(text)


@light
def merge_parts(parts: Input[List[Dataset]], merged: Output[Dataset]) -> int:
    texts = sorted(open(p.path).read() for p in parts)
    with open(merged.path, "w") as f:
        f.write(",".join(texts))
    return len(parts)


@light
def copy_data(data: Input[Dataset], tag: str, out: Output[Dataset]):
    with open(out.path, "w") as f:
        f.write(tag + ":" + open(data.path).read())


@light
def stamp(text: str) -> str:
    return "stamp:" + text


# --- dataflow: parameters, artifacts, loops, Collected, nested pipeline, pipeline outputs ----


class InnerOut(NamedTuple):
    sq: int
    copy: Dataset


@dsl.pipeline(name="inner")
def inner(x: int, data: Input[Dataset]) -> InnerOut:
    s = square(x=x)
    c = copy_data(data=data, tag="inner")
    return InnerOut(s.output, c.outputs["out"])


class DataflowOut(NamedTuple):
    count: int
    squares_total: int
    shouted: str
    weighted: float
    merged_count: int
    merged: Dataset
    report: Artifact
    summary: str
    inner_sq: int
    inner_copy: Dataset
    stamped: str


@dsl.pipeline(name="nexus-kfp-dataflow")
def dataflow(n: int = 3, prefix: str = "row", mark: str = "!", factor: float = 0.5) -> DataflowOut:
    md = make_data(n=n, prefix=prefix)
    d = describe(data=md.outputs["data"], model=md.outputs["model"], suffix=mark)
    # a constant list
    with dsl.ParallelFor([1, 2, 3, 4]) as x:
        sq = square(x=x)
    tot = total(xs=dsl.Collected(sq.output))
    # an upstream task's output list (kfp.local can only loop over a task's single `Output`), and
    # a pipeline parameter used inside the loop
    sp = split(text=d.outputs["summary"], sep="|")
    with dsl.ParallelFor(sp.output) as name:
        sh = shout(name=name, mark=mark)
    j = join(words=dsl.Collected(sh.output), sep="+")
    # a list of dicts, with item fields (loop item fields are typed STRING by the compiler)
    with dsl.ParallelFor([{"label": "a", "w": "1.5"}, {"label": "bb", "w": "2"}, {"label": "ccc", "w": "4.25"}]) as it:
        wt = weigh(name=it.label, weight=it.w, factor=0.5)
    sf = sum_floats(xs=dsl.Collected(wt.output))
    # artifacts collected out of a loop
    with dsl.ParallelFor(["x", "yy", "zzz"], parallelism=2) as t:
        wp = write_part(text=t)
    mp = merge_parts(parts=dsl.Collected(wp.outputs["part"]))
    # a pipeline used as a component
    inn = inner(x=d.outputs["Output"], data=md.outputs["data"])
    # ordering only
    st = stamp(text=prefix).after(tot, j)
    return DataflowOut(
        count=md.outputs["count"],
        squares_total=tot.output,
        shouted=j.output,
        weighted=sf.output,
        merged_count=mp.outputs["Output"],
        merged=mp.outputs["merged"],
        report=d.outputs["report"],
        summary=d.outputs["summary"],
        inner_sq=inn.outputs["sq"],
        inner_copy=inn.outputs["copy"],
        stamped=st.output,
    )


# --- conditions inside loops, nested loops, dict/bool/list parameters ---------------------------


@light
def fmt(opts: dict, loud: bool, sizes: List[int]) -> str:
    # int(): kfp.local hands list-parameter ints over as floats (protobuf Struct numbers)
    text = f"{opts['unit']}/{opts['mode']}: {'+'.join(str(int(s)) for s in sizes)}"
    return text.upper() if loud else text


@light
def tag(word: str, opts: dict) -> str:
    return f"{word}@{opts['unit']}"


@dsl.pipeline(name="nexus-kfp-nested-loops")
def nested_loops(
    limit: int = 2,
    opts: dict = {"unit": "cm", "mode": "fast"},  # strings only: kfp.local turns dict numbers into floats
    loud: bool = False,
    sizes: List[int] = [1, 2, 3, 4],
) -> str:
    with dsl.ParallelFor(sizes) as x:
        with dsl.If(x > limit):
            square(x=x)
            with dsl.ParallelFor(["a", "b"]) as w:
                tag(word=w, opts=opts)  # (not x: see outer_item)
    return fmt(opts=opts, loud=loud, sizes=sizes).output


# --- pipelines returning an artifact / a list of artifacts ------------------------------------


@dsl.pipeline(name="nexus-kfp-artifact-out")
def artifact_out(text: str = "solo") -> Dataset:
    w = write_part(text=text)
    return copy_data(data=w.outputs["part"], tag="copy").outputs["out"]


@dsl.pipeline(name="nexus-kfp-collected-out")
def collected_out(texts: List[str] = ["p", "qq", "rrr"]) -> List[Dataset]:
    with dsl.ParallelFor(texts) as t:  # a loop over a pipeline parameter
        w = write_part(text=t)
    return dsl.Collected(w.outputs["part"])


# --- control: If/Elif/Else, OneOf, an exit handler --------------------------------------------


@light
def classify(x: int, threshold: int) -> str:
    if x > 2 * threshold:
        return "big"
    if x > threshold:
        return "medium"
    return "small"


@light
def label(kind: str, x: int) -> str:
    return f"{kind}:{x}"


@light
def record_status(path: str, status: dsl.PipelineTaskFinalStatus) -> str:
    """An exit task: writes the final state it was given to `path` (a JSON object)."""
    import json

    with open(path, "w") as f:
        json.dump({"state": status.state, "error_code": status.error_code}, f)
    return status.state


class ControlOut(NamedTuple):
    first: str
    second: str


@dsl.pipeline(name="nexus-kfp-control")
def control(x: int, y: int, status_path: str, threshold: int = 5) -> ControlOut:
    # Pipeline outputs may not come from inside an ExitHandler group (the compiler refuses), so
    # the exit handler guards a task of its own here; `failing` has one around a failure.
    exit_task = record_status(path=status_path)
    with dsl.ExitHandler(exit_task):
        stamp(text="guarded")
    c = classify(x=x, threshold=threshold)
    with dsl.If(c.output == "big"):
        big = label(kind="big", x=x)
    with dsl.Elif(c.output == "medium"):
        medium = label(kind="medium", x=x)
    with dsl.Else():
        small = label(kind="small", x=x)
    sq = square(x=y)
    with dsl.If(sq.output > 100):
        hi = label(kind="sq-high", x=sq.output)
    with dsl.Elif(sq.output > 20):
        mid = label(kind="sq-mid", x=sq.output)
    with dsl.Else():
        lo = stamp(text="low")
    return ControlOut(
        first=dsl.OneOf(big.output, medium.output, small.output),
        second=dsl.OneOf(hi.output, mid.output, lo.output),
    )


# --- failure, retries, caching -----------------------------------------------------------------


@light
def bump(counter_path: str, fail_times: int, x: int) -> int:
    """Appends a line to `counter_path`; fails while it has at most `fail_times` lines."""
    with open(counter_path, "a") as f:
        f.write("call\n")
    calls = len(open(counter_path).read().splitlines())
    if calls <= fail_times:
        raise RuntimeError(f"failing on purpose: call {calls} of {fail_times} planned failures")
    return x * 10


@dsl.pipeline(name="nexus-kfp-failing")
def failing(status_path: str, counter_path: str):
    exit_task = record_status(path=status_path)
    with dsl.ExitHandler(exit_task):
        ok = square(x=3)
        # fails on every attempt: 1 retry = 2 calls
        bad = bump(counter_path=counter_path, fail_times=1000, x=ok.output).set_retry(
            num_retries=1, backoff_duration="0s"
        )
        square(x=bad.output)  # never runs
        stamp(text="after").after(bad)  # never runs


@dsl.pipeline(name="nexus-kfp-retry")
def retry(counter_path: str, fail_times: int = 2) -> int:
    flaky = bump(counter_path=counter_path, fail_times=fail_times, x=7)
    flaky.set_retry(num_retries=3, backoff_duration="0s", backoff_factor=1.0)
    return flaky.output


@dsl.pipeline(name="nexus-kfp-caching")
def caching(a_path: str, b_path: str, c_path: str, x: int = 4) -> int:
    a = bump(counter_path=a_path, fail_times=0, x=x)  # cached on a rerun with the same inputs
    b = bump(counter_path=b_path, fail_times=0, x=a.output).set_caching_options(False)  # runs again
    c = bump(counter_path=c_path, fail_times=0, x=b.output)  # same inputs again: cached
    return c.output


# --- the kfp.local 2.17.3 loop bug -------------------------------------------------------------


@light
def base() -> int:
    return 100


@dsl.pipeline(name="nexus-kfp-loop-upstream")
def loop_upstream() -> int:
    b = base()
    with dsl.ParallelFor([1, 2, 3]) as item:
        s = add(a=b.output, b=item)  # a = 100 on a cluster; kfp.local 2.17.3 passes the item
    return total(xs=dsl.Collected(s.output)).output


@light
def pair(a: str, b: str) -> str:
    return f"{a}-{b}"


@dsl.pipeline(name="nexus-kfp-outer-item")
def outer_item(outers: List[str] = ["p", "q"]) -> str:
    with dsl.ParallelFor(outers) as outer:
        with dsl.ParallelFor(["a", "b"]) as inner:
            pr = pair(a=outer, b=inner)  # a = the outer item on a cluster; kfp.local 2.17.3: the inner one
        j = join(words=dsl.Collected(pr.output), sep=",")
    return join(words=dsl.Collected(j.output), sep=";").output


# --- container components (kfp.local's SubprocessRunner refuses these) ------------------------


@dsl.container_component
def produce(msg: str, n: int, text: OutputPath(str), data: Output[Dataset]):
    return dsl.ContainerSpec(
        image="alpine:3.20",
        command=["sh", "-c", 'mkdir -p "$(dirname "$2")" "$(dirname "$3")" && printf "%s-%s" "$0" "$1" > "$2" && seq 1 "$1" > "$3"'],
        args=[msg, n, text, data.path],
    )  # fmt: skip


@dsl.container_component
def decorate(data: Input[Dataset], prefix: str, out: Output[Artifact], suffix: Optional[str] = None):
    return dsl.ContainerSpec(
        image="alpine:3.20",
        command=["sh", "-c", 'mkdir -p "$(dirname "$1")" && { printf "%s" "$2"; tr "\\n" "," < "$0"; printf "%s" "${4:-}"; } > "$1"'],
        args=[
            data.path,
            out.path,
            dsl.ConcatPlaceholder(["<", prefix, ">"]),
            dsl.IfPresentPlaceholder(input_name="suffix", then=["--suffix", suffix], else_=["--no-suffix"]),
        ],
    )  # fmt: skip


@light
def count_lines(data: Input[Dataset]) -> int:
    return len(open(data.path).read().splitlines())


class ContainersOut(NamedTuple):
    text: str
    lines: int
    decorated: Artifact
    plain: Artifact


@dsl.pipeline(name="nexus-kfp-containers")
def containers(msg: str = "hi", n: int = 3) -> ContainersOut:
    p = produce(msg=msg, n=n)
    cl = count_lines(data=p.outputs["data"])
    dec = decorate(data=p.outputs["data"], prefix=p.outputs["text"], suffix="END")
    plain = decorate(data=p.outputs["data"], prefix="plain").after(cl)
    return ContainersOut(
        text=p.outputs["text"], lines=cl.output, decorated=dec.outputs["out"], plain=plain.outputs["out"]
    )


# --- metrics: Output[Metrics] filled by log_metric (metadata only, no file) ------------------


@light
def evaluate(score: float, metrics: dsl.Output[dsl.Metrics]):
    metrics.log_metric("acc", score)
    metrics.log_metric("n", 3)


@light
def read_acc(metrics: Input[dsl.Metrics]) -> str:
    return f"acc={metrics.metadata['acc']}"


class MetricsOut(NamedTuple):
    metrics: dsl.Metrics
    seen: str


@dsl.pipeline(name="nexus-kfp-metrics")
def metrics_out(score: float = 0.9) -> MetricsOut:
    ev = evaluate(score=score)
    return MetricsOut(metrics=ev.outputs["metrics"], seen=read_acc(metrics=ev.outputs["metrics"]).output)
