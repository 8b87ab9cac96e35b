"""A bench session: groups of jobs (one model, batch and size in every framework) measured each in a
fresh interpreter, the same-work check on each group, and the rows ``parity bench`` prints and
``parity.bench_pair`` returns. The twins and users' pairs go through the same code.

Numpy and the standard library at import: frameworks run in the workers (the peak probe imports torch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from parity.bench import jobs, results

if TYPE_CHECKING:
    from parity.bench import profiling
    from parity.bench.peaks import Peak


class NotSameWorkError(RuntimeError):
    """The frameworks did not compute the same first step (the message gives both figures)."""


@dataclass
class Session:
    """What a bench measured so far (kept after every group: a run stopped midway keeps it)."""

    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # the same-work check of every group, and failures
    refused: list[str] = field(default_factory=list)  # groups whose rows are not reported, and why
    profiles: list[tuple[str, list[profiling.Op]]] = field(default_factory=list)
    settings: dict = field(default_factory=dict)  # framework -> the settings its worker reported
    single: dict[tuple, float] = field(default_factory=dict)  # (model, batch, size, framework) -> img/s, 1 device
    failures: list[str] = field(default_factory=list)  # "framework: error" of every run that failed
    mismatches: list[str] = field(default_factory=list)  # the same-work text of every refused group


def peaks(device: str, dtype: str) -> tuple[Peak, Peak]:
    """(nominal peak, achievable) of ``device`` for ``dtype``: MFU's two denominators."""
    from parity.bench import peaks as p

    if device == "cpu":
        # bf16: the faster of torch's bf16 and fp32 products (without a bf16 kernel, XLA computes bf16
        # dots in fp32, far above torch's bf16 product)
        probes = {d: p.cpu_peak_probe(d) for d in dict.fromkeys([dtype, "fp32"])}
        best = max(probes, key=probes.get)
        return p.cpu_nominal_peak(), p.Peak(probes[best], f"measured: the best {best} torch matmul (up to 2048^3)"
                                            + (f"; bf16 {probes['bf16'] / 1e9:.1f} GFLOP/s" if best != dtype else ""))
    return p.gpu_peak(dtype, tf32=True), p.Peak(p.gpu_peak_probe(dtype), f"measured: 8192^3 {dtype} torch matmul")


def step_flops(ms: dict[str, jobs.Measurement]) -> tuple[float | None, dict]:
    """A pair group's FLOPs per step for MFU, and the counts beside it: torch's FlopCounterMode count
    where a torch worker ran (MFU's count), else XLA's cost analysis; (None, {}) for the twins (their
    analytic count, netspecs.counts)."""
    counts = {k: v for m in ms.values() for k, v in m.flops.items()}
    if not counts:
        return None, {}
    source = "torch" if "torch" in counts else "xla"
    return counts[source], {"flops_source": "torch FlopCounterMode" if source == "torch" else "XLA cost analysis",
                            "torch_flops": counts.get("torch", float("nan")),
                            "xla_flops": counts.get("xla", float("nan"))}


def group(session: Session, label: str, job_list: list[jobs.Job], peak: float, achievable: float,
          on_job: Callable[[jobs.Job, bool], None] = lambda job, done: None,
          failed: Callable[[str, str], None] = lambda fw, text: None) -> None:
    """Measure one group (``job_list``: one job per framework, same model and batch) into ``session``:
    the rows of the frameworks that ran, unless the same-work check refuses them (``session.mismatches``);
    a failed run is in ``session.failures``. ``JobError`` (the input is wrong) is raised, not recorded: no
    framework could run it. ``on_job(job, done)`` before and after each job (progress), ``failed(framework,
    error)`` for each failed run."""
    ms: dict[str, jobs.Measurement] = {}
    for job in job_list:
        on_job(job, False)
        try:
            ms[job.framework] = jobs.run_job(job)
            session.settings[job.framework] = ms[job.framework].settings
        except jobs.JobError:
            raise
        except RuntimeError as e:  # one failed run must not lose the others' numbers
            session.failures.append(f"{job.framework}: {e}")
            failed(job.framework, str(e))
        on_job(job, True)
    model = job_list[0].model
    missing = [j.framework for j in job_list if j.framework not in ms]
    if missing:  # the others' numbers are kept, and the run exits non-zero
        session.refused.append(f"{model} ({', '.join(missing)} failed)")
        session.notes.append(f"{label}: {', '.join(missing)} failed (its error is above); the others reported")
    if len(ms) >= 2:
        ok, text = results.same_work(ms, job_list[0].device, job_list[0].dtype)
        session.notes.append(f"{label}: {text}")
        if not ok:
            session.refused.append(f"{model}: the frameworks did not do the same work ({text})")
            session.mismatches.append(f"{label}: {text}")
            return
    elif ms:
        session.notes.append(f"{label}: same work not checked (only {next(iter(ms))} ran)")
    else:
        return
    from parity.bench import profiling

    for fw, m in ms.items():
        if m.profile:
            session.profiles.append((f"{label} {fw}", [profiling.Op(**op) for op in m.profile]))
    flops, counts = step_flops(ms)
    rows = [{**results.derived(m, peak, achievable, flops), **counts} for m in ms.values()]
    ref = next((r for r in rows if r["framework"] == "torch-compile"), None)
    for r in rows:
        r["vs_torch_compile"] = r["images_per_s"] / ref["images_per_s"] if ref else float("nan")
        key = (r["model"], r["batch"], r["size"], r["framework"])
        if r["devices"] == 1:
            session.single[key] = r["images_per_s"]
        one = session.single.get(key)
        r["scaling"] = r["images_per_s"] / (r["devices"] * one) if r["devices"] > 1 and one else float("nan")
    session.rows += rows


# the frameworks a pair runs in: its Flax module as written (no conv_impl to choose), torch compiled and eager
PAIR_FRAMEWORKS = ("jax", "torch-compile", "torch-eager")


def pair_jobs(pair: dict, frameworks: tuple[str, ...] = PAIR_FRAMEWORKS, **options: object) -> list[jobs.Job]:
    """One job per framework for a pair (``PairSpec.to_json()``), its batch the first input's first size."""
    from parity.bench.pairs import PairSpec

    spec = PairSpec.from_json(pair)
    bad = [f for f in frameworks if f not in PAIR_FRAMEWORKS]
    if bad:
        raise ValueError(f"frameworks: a pair runs in {', '.join(PAIR_FRAMEWORKS)}, got {bad}")
    for key, allowed in (("mode", ("train", "infer")), ("optimizer", ("sgd", "adamw"))):
        if options.get(key, allowed[0]) not in allowed:
            raise ValueError(f"{key}: expected one of {allowed}, got {options[key]!r}")
    fixed = sorted({"batch", "size", "model", "framework", "pair"} & set(options))
    if fixed:
        raise ValueError(f"{fixed}: a pair's batch and size are its input shape (give input_shape)")
    if options.get("dtype", "fp32") != "fp32":
        raise ValueError(f"dtype: a pair is benched in fp32 (its Flax module's dtypes are its own), "
                         f"got {options['dtype']!r}")
    if options.get("devices", 1) != 1:
        raise ValueError("devices: a pair is benched on one device (data-parallel runs take the twins)")
    base = jobs.Job(spec.label, frameworks[0], batch=spec.batch, size=spec.input_shapes[0][-1], pair=spec.to_json(),
                    **options)
    return [replace(base, framework=fw) for fw in frameworks]


def check_pair_input(job_list: list[jobs.Job], timeout: float = 1800) -> None:
    """Build and validate a pair in both frameworks before any timing (one fresh interpreter): a spec
    that does not import, modules that reject the input, parameters that do not map and a loss that
    is not a scalar raise ``JobError`` naming the problem."""
    jobs.run_job(replace(job_list[0], framework="torch-eager"), timeout, check=True)


def bench_pair(torch_spec: str = "", flax_spec: str = "", input_shape: tuple | list | None = None, *,
               port: str | None = None, kwargs: dict | None = None, weights: str | None = None,
               tokens: int | None = None, images: bool = True, loss: tuple[str, str] | None = None,
               frameworks: tuple[str, ...] = PAIR_FRAMEWORKS, **options: object) -> list[dict]:
    """Throughput of a user's torch/Flax pair (``torch_spec``, ``flax_spec``: MODULE:NAME of a class or
    factory, both called with ``kwargs``), or of a saved port (``port``), as ``parity bench`` races the
    twins: each framework in a fresh interpreter, the same weights and batch, the same-work check on
    the first step, compile time apart (docs/benchmark.md, "Your own models").

    ``input_shape``: torch's layout, e.g. (16, 3, 64, 64), or a list of shapes for several inputs (a
    port's own by default). ``loss``: (torch MODULE:FN, flax MODULE:FN); default cross-entropy on seeded
    labels for (batch, classes) outputs, else mean squared error against a seeded target. ``options``:
    ``parity.bench.jobs.Job``'s fields (``mode``, ``optimizer``, ``steps``, ``warmup``, ``device``,
    ``compile_mode``, ``profile``, ``xla_cpu_flags``, ``seed``). Returns the bench's rows (one per framework);
    raises ``JobError`` for wrong input and ``NotSameWorkError`` when the frameworks computed different things.
    """
    from parity.bench.pairs import PairSpec

    shapes = [] if input_shape is None else (
        [list(s) for s in input_shape] if input_shape and isinstance(input_shape[0], (tuple, list))
        else [list(input_shape)])
    spec = PairSpec(torch_spec, flax_spec, dict(kwargs or {}), shapes, tokens, weights,
                    list(loss) if loss else None, port, images)
    job_list = pair_jobs(spec.to_json(), tuple(frameworks), **options)
    check_pair_input(job_list)
    peak, achievable = peaks(job_list[0].device, job_list[0].dtype)
    session = Session()
    group(session, spec.label, job_list, peak.flops, achievable.flops)
    if session.mismatches:
        raise NotSameWorkError(f"{spec.label}: the frameworks did not do the same work: "
                               + "; ".join(session.mismatches))
    if session.failures:
        raise RuntimeError(f"{spec.label}: " + "\n".join(session.failures))
    return session.rows
