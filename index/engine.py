"""The one engine that runs every stage's units: in this process, in local worker processes, or on Ray actors.

A stage says three things (`Stage`): how to list its units, how to process one, how to merge the parts.

    class Split(Stage):
        name = "split"
        def units(self): ...               # driver: every unit of this run, finished or not
        def load(self): ...                # each worker, once: the model the units need
        def process(self, model, unit): ...  # a worker: one unit -> Output (rows, per-clip failures)
        def merge(self, store): ...        # driver: the stage's manifest from its parts

    report = run_stage(Split(...), store, EngineOptions(workers=2))

`--workers N` means the same on every command: N processes here (each loads its model once) or, with
`--engine ray`, N Ray actors. Whatever runs the units, the driver alone writes the parts (`index.manifest.PartStore`),
so the output is the same for `--workers 1`, `--workers 2` and `--engine ray`, and resume rules are one.

Failure rules (the same on every engine):
- `BadInput` raised by a unit (unreadable, too short, deleted or changed source, a refused prompt) is that unit's
  failure, recorded with its one-line reason; the run goes on. So is a worker process that dies (a decoder
  crash, the OOM killer): the units it held are retried one at a time to find the one that kills it.
- Any other exception is a bug: the run stops with its traceback and nothing is recorded as failed, so fixing
  the code and re-running redoes the unit.
- Ctrl-C stops the workers (a second Ctrl-C is not needed) and raises `Interrupted` with what was kept.
"""

from __future__ import annotations

import abc
import contextlib
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

ENGINES = ("local", "ray")
DIED = "worker process died while processing this unit (a decoder crash or out of memory)"


class BadInput(Exception):
    """A unit's input cannot be used; `str(e)` is the one-line reason recorded in failed.jsonl."""


class UsageError(ValueError):
    """A user mistake found before any work (a bad option, a missing input): one line, exit status 2.
    Commands catch this (and its subclasses) only, so a ValueError from a bug still stops with its traceback."""


class EngineError(UsageError, RuntimeError):
    """The engine cannot run (Ray missing, no cluster at the address, a worker that cannot start)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C: the workers are stopped; the message says what was kept."""


@dataclass
class Unit:
    key: str  # names the unit's part: derived from all its output depends on (content hash, clip ids)
    path: str  # the source, for failure records
    data: Any = None  # what `process` needs (picklable; never a loaded model)
    weight: int = 1  # progress units it stands for (videos, clips)
    ids: tuple = ()  # clip ids it covers: recorded with a failure, so a re-run skips exactly those


@dataclass
class Output:
    rows: Any  # pandas DataFrame: the unit's part
    failures: list = field(default_factory=list)  # (item id, reason): clips of the unit that could not be done


class Stage(abc.ABC):
    """One stage of the pipeline. The object is pickled to every worker: keep models out of it (see `load`)."""

    name = ""  # parts under OUT_DIR/.parts/NAME
    unit_name = "units"  # for progress lines ("videos", "clips")
    uses_gpu = False  # on Ray: one GPU share per worker when the cluster has GPUs
    driver_only: tuple = ()  # attributes the workers do not need (the input manifest): not pickled to them

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in self.driver_only}

    @abc.abstractmethod
    def units(self) -> list[Unit]:
        """Driver: every unit of this run, finished or not (the engine skips those the store has done)."""

    def load(self) -> Any:
        """Each worker, once: what `process` needs (a model). The default needs nothing."""
        return None

    def prepare(self, unit: Unit) -> Unit:
        """Optional CPU work ahead of `process` (decoding frames). On Ray it runs in separate CPU tasks
        ahead of the model workers; elsewhere in the worker, just before `process`."""
        return unit

    has_prepare = False  # True when `prepare` does work worth its own Ray tasks

    @abc.abstractmethod
    def process(self, state: Any, unit: Unit) -> Output:
        """A worker: one unit. Raise `BadInput` for bad input; anything else stops the run."""

    @abc.abstractmethod
    def merge(self, store) -> Any:
        """Driver, after the units: the stage's result from its parts."""


@dataclass(frozen=True)
class EngineOptions:
    """What `--engine`, `--workers`, `--ray-address` and `--gpus-per-worker` ask for."""

    engine: str = "local"
    workers: int = 1
    ray_address: str | None = None  # None: start a local Ray; "auto": join the running cluster
    num_gpus: float | None = None  # per Ray worker; None: 1 when the cluster has GPUs; 0.5: two per GPU
    num_cpus: float | None = None  # per Ray worker (default 1, or 0.5 with a prepare step)
    progress: bool = True

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise UsageError(f"unknown engine {self.engine!r}; choose one of: {', '.join(ENGINES)}")
        if self.workers < 1:
            raise UsageError("--workers must be at least 1")
        if self.num_gpus is not None and self.num_gpus < 0:
            raise UsageError("--gpus-per-worker must not be negative")


def add_engine_args(parser, what: str = "units") -> None:
    """`--workers`, `--engine local|ray`, `--ray-address`, `--gpus-per-worker` on a stage's argument parser."""
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help=f"workers processing {what} at once: processes here (each loads its model once), "
                             "or Ray actors with --engine ray")
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="local: this machine; ray: Ray actors on a cluster (pip install 'shotcap[ray]')")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="with --engine ray: 'auto' joins the running cluster, ray://host:10001 a remote "
                             "one (default: start Ray on this machine)")
    parser.add_argument("--gpus-per-worker", type=float, default=None, metavar="G",
                        help="with --engine ray: GPUs per actor (default: 1 when the cluster has GPUs, else 0; "
                             "0.5 packs two actors per GPU)")


def options_from_args(args, progress: bool = True) -> EngineOptions:
    return EngineOptions(engine=args.engine, workers=int(args.workers), ray_address=args.ray_address,
                         num_gpus=args.gpus_per_worker, progress=progress)


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if isinstance(e, BadInput):
        return text[:300] or type(e).__name__
    return f"{type(e).__name__}: {text}"[:300] if text else type(e).__name__


# ---------------------------------------------------------------- the run

@dataclass
class RunReport:
    units: int = 0  # units of this run
    skipped: int = 0  # finished (or failed) in an earlier run
    done: int = 0  # processed now
    failed: int = 0  # failed now
    seconds: float = 0.0
    processed: list = field(default_factory=list)  # the units that succeeded now
    weight: int = 0  # what the units processed now stand for (videos, clips)


def run_stage(stage: Stage, store, options: EngineOptions | None = None, progress=None) -> RunReport:
    """Process every unit of `stage` that `store` (a `PartStore`) has not done; the driver writes each part.
    `progress`: an `index.progress.Progress`-like object, or None for one made from `options.progress`."""
    from .progress import Progress

    opts = options or EngineOptions()
    t0 = time.perf_counter()
    units = stage.units()
    todo = [u for u in units if not store.done(u.key)]
    report = RunReport(units=len(units), skipped=len(units) - len(todo))
    bar = progress or Progress(sum(u.weight for u in todo), stage.name, stage.unit_name, enabled=opts.progress)

    def ok(unit: Unit, out) -> None:
        out = out if isinstance(out, Output) else Output(out)
        for k, (item, reason) in enumerate(out.failures):  # before the part, which marks the unit done
            store.fail(f"{unit.key}-{k}", unit.path, f"clip {item}: {reason}", ids=(item,))
        store.write(unit.key, out.rows)
        report.done += 1
        report.weight += unit.weight
        report.processed.append(unit)
        bar.advance(unit.weight, unit.path)

    def fail(unit: Unit, reason: str) -> None:
        store.fail(unit.key, unit.path, reason, ids=unit.ids)
        report.done += 1
        report.failed += 1
        report.weight += unit.weight
        bar.advance(unit.weight, unit.path)

    run = _run_ray if opts.engine == "ray" else _run_here if opts.workers <= 1 or len(todo) == 1 else _run_pool
    try:
        with bar:
            if todo:
                run(stage, todo, ok, fail, opts)
    except KeyboardInterrupt:
        ignore_ctrl_c()
        total = sum(u.weight for u in todo)
        raise Interrupted(f"{report.weight} of {total} {stage.unit_name} done in this run are kept in "
                          f"{store.dir.parent.parent}") from None
    report.seconds = time.perf_counter() - t0
    return report


def _attempt(stage: Stage, state, unit: Unit, prepared: bool = False) -> tuple[str, Any]:
    """('ok', Output) or ('fail', reason) for bad input; a bug raises."""
    try:
        return "ok", stage.process(state, unit if prepared else stage.prepare(unit))
    except BadInput as e:
        return "fail", one_line(e)
    except MemoryError:
        return "fail", "out of memory while processing this unit"


# ---------------------------------------------------------------- this process

def _run_here(stage: Stage, todo: list[Unit], ok, fail, opts: EngineOptions) -> None:
    state = stage.load()
    for unit in todo:
        status, payload = _attempt(stage, state, unit)
        (ok if status == "ok" else fail)(unit, payload)


# ---------------------------------------------------------------- local worker processes

_worker: dict = {}


def _init_worker(stage: Stage, threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's: it stops the workers itself
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)  # N workers share the cores instead of each taking all of them
    _worker["stage"] = stage
    try:
        if "torch" in sys.modules or stage.uses_gpu:
            import torch

            torch.set_num_threads(threads)
        _worker["state"] = stage.load()
    except BaseException as e:  # reported by the first unit instead of breaking the pool silently
        _worker["error"] = e


def _work(unit: Unit):
    if "error" in _worker:
        raise _worker["error"]
    return _attempt(_worker["stage"], _worker.get("state"), unit)


def _pool(stage: Stage, workers: int) -> ProcessPoolExecutor:
    threads = max(1, (os.cpu_count() or 1) // workers)
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_init_worker,
                               initargs=(stage, threads))


_command_line = False  # inside a command run from the command line (see ctrl_c_guard)


def ignore_ctrl_c() -> None:
    """After the first Ctrl-C a command run from the command line is on its way out: a later one must not break
    its cleanup or the interpreter's exit (a KeyboardInterrupt in an exit hook prints a traceback). Called from
    Python (a notebook, a test) the caller's handler stays as it is."""
    if _command_line and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def ctrl_c_guard(argv):
    """Around a command's main: argv None means the process is that command (a console script, python -m)."""
    global _command_line
    outer, _command_line = _command_line, argv is None
    try:
        yield
    finally:
        _command_line = outer


def _stop(pool: ProcessPoolExecutor) -> None:
    """Kill the workers now (a bug, Ctrl-C): nothing waits for their units. Another Ctrl-C meanwhile is ignored,
    so the cleanup always finishes and leaves no process or thread for the interpreter's exit to wait on."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    leaving = _command_line and isinstance(sys.exc_info()[1], KeyboardInterrupt)  # see ignore_ctrl_c
    try:
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            try:
                proc.kill()
            except (OSError, AttributeError):
                pass
        pool.shutdown(wait=True, cancel_futures=True)
    finally:
        if main and not leaving:
            signal.signal(signal.SIGINT, previous)


def _run_pool(stage: Stage, todo: list[Unit], ok, fail, opts: EngineOptions) -> None:
    workers = opts.workers
    pending, suspects = list(reversed(todo)), []
    while pending:
        pool = _pool(stage, workers)
        running: dict = {}
        try:
            while pending or running:
                while pending and len(running) < 2 * workers:
                    unit = pending.pop()
                    try:
                        running[pool.submit(_work, unit)] = unit
                    except BrokenProcessPool:  # broke while we were recording: the unit is not lost
                        pending.append(unit)
                        raise
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    status, payload = fut.result()  # a bug in a worker raises here, with its traceback
                    unit = running.pop(fut)
                    (ok if status == "ok" else fail)(unit, payload)
        except BrokenProcessPool:  # a worker died: the units it may have held are tried alone below
            suspects += running.values()
            pool.shutdown(wait=True)
        except BaseException:
            _stop(pool)
            raise
        else:
            pool.shutdown(wait=True)
    for unit in suspects:  # one at a time, so a unit that kills its worker cannot take others with it
        pool = _pool(stage, 1)
        try:
            status, payload = pool.submit(_work, unit).result()
            (ok if status == "ok" else fail)(unit, payload)
        except BrokenProcessPool:
            fail(unit, DIED)
        except BaseException:
            _stop(pool)
            raise
        finally:
            pool.shutdown(wait=True)


# ---------------------------------------------------------------- Ray actors fed by prepare tasks

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


class _Actor:
    """A Ray actor: loads the stage's state once, then processes units."""

    def __init__(self, stage: Stage):
        self.stage = stage
        self.state = stage.load()

    def run(self, item):
        if isinstance(item, tuple):  # a prepare task's ('fail', reason)
            return item
        return _attempt(self.stage, self.state, item, prepared=self.stage.has_prepare)


def _prepare(stage: Stage, unit: Unit):
    try:
        return stage.prepare(unit)
    except BadInput as e:
        return "fail", one_line(e)


def _run_ray(stage: Stage, todo: list[Unit], ok, fail, opts: EngineOptions) -> None:
    ray = init_ray(opts.ray_address)
    prepare = stage.has_prepare
    gpus = opts.num_gpus if stage.uses_gpu else 0.0
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
    workers = min(opts.workers, len(todo), fit)
    if workers < min(opts.workers, len(todo)):
        print(f"ray: {opts.workers} workers asked, {workers} fit this cluster", file=sys.stderr)
    # without a GPU of its own, an actor must not see the machine's GPUs (Ray leaves them visible)
    env = {"TOKENIZERS_PARALLELISM": "false", **({"CUDA_VISIBLE_DEVICES": ""} if gpus == 0 else {})}
    actor_cls = ray.remote(_Actor).options(num_cpus=cpus, num_gpus=gpus, max_concurrency=1,
                                           runtime_env={"env_vars": env})
    prep_task = ray.remote(_prepare).options(num_cpus=1, max_retries=0) if prepare else None
    stage_ref = ray.put(stage)  # shipped once, not once per call
    actors = [actor_cls.remote(stage_ref) for _ in range(workers)]
    try:
        _schedule(ray, todo, actors, lambda: actor_cls.remote(stage_ref), prep_task, stage_ref, ok, fail, workers)
    finally:  # also on a bug or Ctrl-C: no actor outlives the run
        for actor in actors:
            ray.kill(actor, no_restart=True)


def _schedule(ray, units, actors, start_actor, prep_task, stage_ref, ok, fail, workers) -> None:
    """Feed idle actors in unit order; `actors` is updated in place when a dead actor is replaced."""
    from ray.exceptions import RayActorError, RayTaskError

    prepare = prep_task is not None
    idle = list(actors)
    queue = list(reversed(range(len(units))))  # pop() gives the units in order
    ahead = workers * 2  # prepared units kept in flight ahead of the model workers
    preparing: dict = {}  # ref -> unit index
    ready: list[tuple[int, Any]] = []  # (unit index, prepared ref) waiting for an idle actor
    running: dict = {}  # ref -> (unit index, actor)
    while queue or preparing or ready or running:
        while prepare and queue and len(preparing) + len(ready) < ahead:
            i = queue.pop()
            preparing[prep_task.remote(stage_ref, units[i])] = i
        while idle and (ready or (not prepare and queue)):
            i, item = ready.pop(0) if prepare else (queue.pop(), None)
            actor = idle.pop()
            running[actor.run.remote(item if prepare else units[i])] = (i, actor)
        finished, _ = ray.wait(list(preparing) + list(running), num_returns=1)
        ref = finished[0]
        if ref in preparing:  # the ref goes to an actor as is: the data moves worker to worker
            ready.append((preparing.pop(ref), ref))
            continue
        i, actor = running.pop(ref)
        try:
            status, payload = ray.get(ref)
        except RayActorError as e:  # the actor is gone: a fresh one takes its place
            if getattr(e, "actor_init_failed", False):  # load() failed: no unit is to blame
                lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                raise EngineError(f"a Ray worker could not start: {lines[-1] if lines else 'unknown error'}") from None
            fail(units[i], DIED)
            actors.remove(actor)
            actor = start_actor()
            actors.append(actor)
        except RayTaskError as e:  # a bug in a worker (or a prepare task): stop, with the worker's traceback
            cause = e.as_instanceof_cause()
            raise cause from None
        else:
            (ok if status == "ok" else fail)(units[i], payload)
        idle.append(actor)
