"""Run a stage's units on the local process or on a Ray cluster, with the same results and resume rules.

A stage hands `run_units` its pending units (one source video, one group of clips) and three callables:

  make_worker()      builds the unit function once per worker (a model loaded once per Ray actor);
                     `work = make_worker(); result = work(item)`
  prepare(unit)      optional CPU work (decode, frame preparation) that feeds the model workers; on Ray it runs
                     as separate tasks ahead of the actors, so a model worker never waits for a decode
  on_result(unit, result)   called in the driver process, in completion order: the stage writes the
                     unit's `PartStore` part here, so parts, schema and resume rules are the local ones

A unit whose worker raises, or whose Ray actor dies (segfault in a decoder, OOM killer), goes to
`on_error(unit, one-line reason)`; without `on_error` the error stops the run. Ray is imported only when
`engine="ray"` (the optional extra `shotcap[ray]`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable

ENGINES = ("local", "ray")


class EngineError(RuntimeError, ValueError):
    """The engine cannot run (Ray missing, no cluster at the address, a unit failed without on_error)."""


@dataclass(frozen=True)
class EngineOptions:
    """What `--engine`, `--workers`, `--ray-address` and `--gpus-per-worker` ask for."""

    engine: str = "local"
    workers: int = 1
    ray_address: str | None = None  # None: start a local Ray; "auto": join the running cluster
    num_gpus: float | None = None  # per model worker; None: 1 when the cluster has GPUs; 0.5: two per GPU
    num_cpus: float | None = None  # per model worker (default 1, or 0.5 with a prepare step)

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; choose one of: {', '.join(ENGINES)}")
        if self.workers < 1:
            raise ValueError("--workers must be at least 1")
        if self.num_gpus is not None and self.num_gpus < 0:
            raise ValueError("--gpus-per-worker must not be negative")


def add_engine_args(parser) -> None:
    """`--engine local|ray`, `--ray-address`, `--gpus-per-worker` on a stage's argument parser."""
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="local: this process (and its --workers); ray: Ray actors (default local)")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="with --engine ray: 'auto' joins the running cluster, ray://host:10001 a remote "
                             "one; default: start Ray on this machine")
    parser.add_argument("--gpus-per-worker", type=float, default=None, metavar="G",
                        help="with --engine ray: GPUs per actor (default 1 when the cluster has GPUs, else 0; "
                             "0.5 packs two actors per GPU, 0 keeps them off the GPUs)")


def options_from_args(args, workers: int | None = None) -> EngineOptions:
    return EngineOptions(engine=args.engine, workers=max(1, int(workers or getattr(args, "workers", 1) or 1)),
                         ray_address=args.ray_address, num_gpus=args.gpus_per_worker)


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}"[:300] if text else type(e).__name__


def run_units(units: Iterable, make_worker: Callable[[], Callable[[Any], Any]],
              on_result: Callable[[Any, Any], None], *, prepare: Callable[[Any], Any] | None = None,
              on_error: Callable[[Any, str], None] | None = None, uses_gpu: bool = True,
              options: EngineOptions | None = None, **kwargs) -> int:
    """Process every unit; returns how many were processed. `kwargs` are `EngineOptions` fields.
    `uses_gpu=False` (cutting clips, say) keeps Ray actors off the GPUs whatever the options say."""
    opts = options or EngineOptions(**kwargs)
    units = list(units)
    if not units:
        return 0
    if opts.engine == "ray":
        return _run_ray(units, make_worker, on_result, prepare, on_error, opts, uses_gpu)
    return _run_local(units, make_worker, on_result, prepare, on_error)


# ---------------------------------------------------------------- local: this process

def _run_local(units, make_worker, on_result, prepare, on_error) -> int:
    work = make_worker()
    for unit in units:
        try:
            result = work(prepare(unit) if prepare else unit)
        except Exception as e:
            if on_error is None:
                raise
            on_error(unit, one_line(e))
            continue
        on_result(unit, result)
    return len(units)


# ---------------------------------------------------------------- ray: actors fed by prepare tasks

def init_ray(address: str | None = None, num_cpus: int | None = None):
    """Connect to (or start) Ray once per process; the module, for the caller's further use."""
    try:
        import ray
    except ImportError:
        raise EngineError("--engine ray needs Ray: pip install 'shotcap[ray]'") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                     log_to_driver=True, configure_logging=False,
                     runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise EngineError(f"cannot start or reach Ray at {address or 'this machine'}: {one_line(e)}") from None
    return ray


class _Worker:
    """The Ray actor: builds the unit function once, then runs units."""

    def __init__(self, make_worker):
        self.work = make_worker()

    def run(self, item):
        return self.work(item)


def _call(fn, arg):
    return fn(arg)


def _run_ray(units, make_worker, on_result, prepare, on_error, opts: EngineOptions, uses_gpu: bool) -> int:
    ray = init_ray(opts.ray_address)
    from ray.exceptions import RayActorError, RayTaskError

    gpus = opts.num_gpus if uses_gpu else 0.0
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    cpus = opts.num_cpus if opts.num_cpus is not None else (0.5 if prepare else 1.0)
    # an actor Ray cannot place never starts and its unit never ends: start no more than the cluster holds
    total = ray.cluster_resources()
    fit = int((total.get("CPU", 0) - (1 if prepare else 0)) // cpus) if cpus > 0 else opts.workers
    if gpus > 0:
        fit = min(fit, int(total.get("GPU", 0) // gpus))
    if fit < 1:
        raise EngineError(f"the Ray cluster has no room for one worker (each asks {cpus:g} CPU and {gpus:g} GPU, "
                          f"{'plus 1 CPU for decoding, ' if prepare else ''}the cluster has "
                          f"{total.get('CPU', 0):g} CPU and {total.get('GPU', 0):g} GPU)")
    workers = min(opts.workers, len(units), fit)
    if workers < min(opts.workers, len(units)):
        print(f"ray: {opts.workers} workers asked, {workers} fit this cluster", file=sys.stderr)
    # without a GPU of its own, an actor must not see the machine's GPUs (Ray leaves them visible)
    env = {"TOKENIZERS_PARALLELISM": "false", **({"CUDA_VISIBLE_DEVICES": ""} if gpus == 0 else {})}
    actor_cls = ray.remote(_Worker).options(num_cpus=cpus, num_gpus=gpus, max_concurrency=1,
                                            runtime_env={"env_vars": env})
    prep_task = ray.remote(_call).options(num_cpus=1, max_retries=0) if prepare else None
    worker_ref = ray.put(make_worker)  # shipped once, not once per actor call
    prepare_ref = ray.put(prepare) if prepare else None

    def start_actor():
        return actor_cls.remote(worker_ref)

    def reason(e: BaseException) -> str:
        if isinstance(e, RayTaskError):
            cause = e.as_instanceof_cause()
            inner = getattr(e, "cause", None) or cause
            return one_line(inner) if isinstance(inner, BaseException) else one_line(cause)
        if isinstance(e, RayActorError):
            return "worker process died while processing this unit"
        return one_line(e)

    def fail(unit, e: BaseException) -> None:
        if on_error is None:
            raise EngineError(f"a unit failed on Ray: {reason(e)}") from None
        on_error(unit, reason(e))

    actors = [start_actor() for _ in range(workers)]
    try:
        return _schedule(ray, units, actors, start_actor, prep_task, prepare_ref, on_result, fail, workers)
    finally:  # also when on_result raises (an OSError writing a part): no actor outlives the run
        for actor in actors:
            ray.kill(actor, no_restart=True)


def _schedule(ray, units, actors, start_actor, prep_task, prepare_ref, on_result, fail, workers) -> int:
    """Feed idle actors in unit order; `actors` is updated in place when a dead actor is replaced."""
    from ray.exceptions import RayActorError, RayTaskError

    prepare = prep_task is not None
    idle = list(actors)
    queue = list(reversed(range(len(units))))  # pop() gives the units in order
    ahead = workers * 2  # prepared items kept in flight ahead of the model workers
    preparing: dict = {}  # ref -> unit index
    ready: list[tuple[int, Any]] = []  # (unit index, prepared ref) waiting for an idle actor
    running: dict = {}  # ref -> (unit index, actor)
    done = 0
    while queue or preparing or ready or running:
        while prepare and queue and len(preparing) + len(ready) < ahead:
            i = queue.pop()
            preparing[prep_task.remote(prepare_ref, units[i])] = i
        while idle and (ready or (not prepare and queue)):
            i, item = ready.pop(0) if prepare else (queue.pop(), None)
            actor = idle.pop()
            running[actor.run.remote(item if prepare else units[i])] = (i, actor)
        finished, _ = ray.wait(list(preparing) + list(running), num_returns=1)
        ref = finished[0]
        if ref in preparing:
            # the ref goes to an actor as is: the data moves worker to worker, a failed prepare fails that call
            ready.append((preparing.pop(ref), ref))
            continue
        i, actor = running.pop(ref)
        try:
            result = ray.get(ref)
        except RayActorError as e:  # the actor is gone: a fresh one takes its place
            if getattr(e, "actor_init_failed", False):  # make_worker() failed (no model): no unit is to blame
                lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                raise EngineError(f"a Ray worker could not start: {lines[-1] if lines else 'unknown error'}") from None
            fail(units[i], e)
            actors.remove(actor)
            actor = start_actor()
            actors.append(actor)
        except RayTaskError as e:
            fail(units[i], e)
        else:
            on_result(units[i], result)
        done += 1
        idle.append(actor)
    return done
