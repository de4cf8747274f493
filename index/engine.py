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
`--engine ray`, N Ray actors. Finished units go to the stage's `index.parts.PartStore` in batches (many units per
file): locally the driver writes them; on Ray each actor writes its own batches straight to the output (a folder or
a bucket) and reports only the keys a batch commits, so rows never pass through the driver, and units an actor
held but never committed are given out again. The output is the same for `--workers 1`, `--workers 2` and
`--engine ray`, and resume rules are one. The driver holds no object per unit: units are listed lazily and
checked against the store's ledger of finished keys in chunks.

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
import itertools
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

    def total(self) -> int | None:
        """How much work `units()` stands for (in `unit_name`), when they are lazy and it is cheap to know; None
        shows progress without an ETA. A list of units needs none: its total is counted."""
        return None


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
    weight: int = 0  # what the units processed now stand for (videos, clips)


CHUNK = 4096  # units whose done-ness is looked up at once


def pending(units, store, report: RunReport):
    """The units `store` has not done, in order, looked up a chunk at a time (the ledger answers many keys at
    once); counts them into `report` as they pass. `units` may be any iterable, a generator included."""
    many = getattr(store, "done_many", None)
    it = iter(units)
    while True:
        chunk = list(itertools.islice(it, CHUNK))
        if not chunk:
            return
        done = many([u.key for u in chunk]) if many is not None else [store.done(u.key) for u in chunk]
        report.units += len(chunk)
        for unit, finished in zip(chunk, done):
            if finished:
                report.skipped += 1
            else:
                yield unit


class _Recorder:
    """What happens to each finished unit: its part is written (unless a Ray worker wrote it), the report counts it
    and the progress bar moves. `forget` takes back a unit a dead Ray worker held uncommitted (it is done again)."""

    def __init__(self, store, report: RunReport, bar):
        self.store, self.report, self.bar = store, report, bar

    def ok(self, unit: Unit, out) -> None:
        if out is not None:  # None: a Ray worker wrote it
            out = out if isinstance(out, Output) else Output(out)
            reasons = [(item, f"clip {item}: {reason}") for item, reason in out.failures]
            if hasattr(self.store, "item_failure"):  # a PartStore: the unit's rows and failures in one batch
                failures = [self.store.item_failure(unit.key, unit.path, r, ids=(i,)) for i, r in reasons]
                self.store.write(unit.key, out.rows, failures)
            else:  # a stage's own store (staged clips, previews): each failure, then the rows
                for k, (item, reason) in enumerate(reasons):
                    self.store.fail(f"{unit.key}-{k}", unit.path, reason, ids=(item,))
                self.store.write(unit.key, out.rows)
        self._count(unit)

    def fail(self, unit: Unit, reason: str | None, written: bool = False) -> None:
        if not written:
            self.store.fail(unit.key, unit.path, reason, ids=unit.ids)
        self.report.failed += 1
        self._count(unit)

    def forget(self, unit: Unit, status: str) -> None:
        self.report.failed -= status != "ok"
        self.report.done -= 1
        self.report.weight -= unit.weight

    def _count(self, unit: Unit) -> None:
        self.report.done += 1
        self.report.weight += unit.weight
        self.bar.advance(unit.weight, unit.path)

    def __call__(self, status: str, unit: Unit, payload) -> None:
        (self.ok if status == "ok" else self.fail)(unit, payload)


def run_stage(stage: Stage, store, options: EngineOptions | None = None, progress=None) -> RunReport:
    """Process every unit of `stage` that `store` (a `PartStore`) has not done. Locally the driver writes the parts
    (in batches: see `index.parts`); on Ray each worker writes its own and the driver keeps only keys and counts.
    `progress`: an `index.progress.Progress`-like object, or None for one made from `options.progress`.

    `stage.units()` may be a list (its total is known: a progress bar with an ETA) or a lazy iterable (a stage over
    a manifest of millions of clips); `stage.total()` may then say how much work there is, or None."""
    from .progress import Progress

    opts = options or EngineOptions()
    t0 = time.perf_counter()
    report = RunReport()
    units = stage.units()
    todo = pending(units, store, report)
    if isinstance(units, (list, tuple)):
        todo = list(todo)
        total = sum(u.weight for u in todo)
    else:
        total = stage.total()
    bar = progress or Progress(total, stage.name, stage.unit_name, enabled=opts.progress)

    rec = _Recorder(store, report, bar)
    small = isinstance(todo, list) and len(todo) <= 1
    run = _run_ray if opts.engine == "ray" else _run_here if opts.workers <= 1 or small else _run_pool
    try:
        with bar:
            try:
                run(stage, todo, rec, opts, store)
            finally:  # what finished is kept: on success, a bug's traceback and Ctrl-C alike
                getattr(store, "flush", lambda: None)()
    except KeyboardInterrupt:
        ignore_ctrl_c()
        total_text = f" of {total}" if total else ""
        raise Interrupted(f"{report.weight}{total_text} {stage.unit_name} done in this run are kept in "
                          f"{store.out if hasattr(store, 'out') else store.dir.parent.parent}") from None
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

def _run_here(stage: Stage, todo, rec, opts: EngineOptions, store=None) -> None:
    state = None
    for unit in todo:
        if state is None:  # loaded with the first unit to do: a no-op re-run loads no model
            state = (stage.load(),)
        state_ = state[0]
        status, payload = _attempt(stage, state_, unit)
        rec(status, unit, payload)


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


def _run_pool(stage: Stage, todo, rec, opts: EngineOptions, store=None) -> None:
    workers = opts.workers
    source, back, suspects = iter(todo), [], []

    def take():
        return back.pop() if back else next(source, None)

    while True:
        pool, running = None, {}
        try:
            while True:
                while len(running) < 2 * workers:
                    unit = take()
                    if unit is None:
                        break
                    pool = pool or _pool(stage, workers)  # no unit to do: no worker started
                    try:
                        running[pool.submit(_work, unit)] = unit
                    except BrokenProcessPool:  # broke while we were recording: the unit is not lost
                        back.append(unit)
                        raise
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    status, payload = fut.result()  # a bug in a worker raises here, with its traceback
                    unit = running.pop(fut)
                    rec(status, unit, payload)
        except BrokenProcessPool:  # a worker died: the units it may have held are tried alone below
            suspects += running.values()
            pool.shutdown(wait=True)
            continue
        except BaseException:
            if pool is not None:
                _stop(pool)
            raise
        if pool is not None:
            pool.shutdown(wait=True)
        break
    for unit in suspects:  # one at a time, so a unit that kills its worker cannot take others with it
        pool = _pool(stage, 1)
        try:
            status, payload = pool.submit(_work, unit).result()
            rec(status, unit, payload)
        except BrokenProcessPool:
            rec.fail(unit, DIED)
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
    """A Ray actor: loads the stage's state once, then processes units. With a part writer (`writer`: the store's
    `writer_spec()`), it writes its units' rows and failures to the store itself, in batches, and tells the driver
    only which keys each call committed: the rows never pass through the driver."""

    def __init__(self, stage: Stage, writer=None):
        self.stage = stage
        self.state = stage.load()
        self.store = None
        if writer is not None:
            from .parts import PartStore

            self.store = PartStore.writer(*writer)

    def run(self, unit: Unit, item):
        if isinstance(item, tuple):  # a prepare task's ('fail', reason)
            status, payload = item
        else:
            status, payload = _attempt(self.stage, self.state, item, prepared=self.stage.has_prepare)
        if self.store is None:
            return status, payload, None
        if status == "ok":
            out = payload if isinstance(payload, Output) else Output(payload)
            failures = [self.store.item_failure(unit.key, unit.path, f"clip {i}: {r}", ids=(i,)) for i, r in out.failures]
            self.store.write(unit.key, out.rows, failures)
            payload = None
        else:
            self.store.fail(unit.key, unit.path, payload, ids=unit.ids)
        return status, payload, self.store.take_committed()

    def flush(self):
        if self.store is None:
            return []
        self.store.flush()
        return self.store.take_committed()


def _prepare(stage: Stage, unit: Unit):
    try:
        return stage.prepare(unit)
    except BadInput as e:
        return "fail", one_line(e)


def _run_ray(stage: Stage, todo, rec, opts: EngineOptions, store=None) -> None:
    source = iter(todo)
    first = next(source, None)
    if first is None:  # nothing to do: Ray is not even started
        return
    todo = itertools.chain([first], source)
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
    workers = min(opts.workers, fit)
    if workers < opts.workers:
        print(f"ray: {opts.workers} workers asked, {workers} fit this cluster", file=sys.stderr)
    # without a GPU of its own, an actor must not see the machine's GPUs (Ray leaves them visible)
    env = {"TOKENIZERS_PARALLELISM": "false", **({"CUDA_VISIBLE_DEVICES": ""} if gpus == 0 else {})}
    actor_cls = ray.remote(_Actor).options(num_cpus=cpus, num_gpus=gpus, max_concurrency=1,
                                           runtime_env={"env_vars": env})
    prep_task = ray.remote(_prepare).options(num_cpus=1, max_retries=0) if prepare else None
    stage_ref = ray.put(stage)  # shipped once, not once per call
    writer = store.writer_spec() if hasattr(store, "writer_spec") else None
    actors = [actor_cls.remote(stage_ref, writer) for _ in range(workers)]
    try:
        _schedule(ray, todo, actors, lambda: actor_cls.remote(stage_ref, writer), prep_task, stage_ref, rec, workers)
    finally:  # also on a bug or Ctrl-C: no actor outlives the run
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if writer is not None:
            store.reload()  # the batches the workers wrote


def _light(unit: Unit) -> Unit:
    """What an actor needs to record a unit (not its data, which travels separately)."""
    return Unit(unit.key, unit.path, None, unit.weight, unit.ids)


def _schedule(ray, units, actors, start_actor, prep_task, stage_ref, rec, workers) -> None:
    """Feed idle actors in unit order; `actors` is updated in place when a dead actor is replaced. With direct
    writes, a unit counts as kept only once its actor committed it: the units an actor held uncommitted when it
    died are done again by another."""
    from ray.exceptions import RayActorError, RayTaskError

    prepare = prep_task is not None
    idle = list(actors)
    source, back = iter(units), []
    ahead = workers * 2  # prepared units kept in flight ahead of the model workers
    preparing: dict = {}  # ref -> unit
    ready: list = []  # (unit, prepared ref) waiting for an idle actor
    running: dict = {}  # ref -> (unit, actor)
    held: dict = {}  # actor -> {key: (unit, status)}: recorded by that actor, not committed yet

    def take():
        return back.pop() if back else next(source, None)

    def settle(actor, committed) -> None:
        for key in committed or ():
            held.get(actor, {}).pop(key, None)

    def lost(actor) -> None:  # its uncommitted units go back to the queue
        for unit, status in held.pop(actor, {}).values():
            rec.forget(unit, status)
            back.append(unit)

    exhausted = False
    while True:
        while prepare and not exhausted and len(preparing) + len(ready) < ahead:
            unit = take()
            if unit is None:
                exhausted = True
                break
            preparing[prep_task.remote(stage_ref, unit)] = unit
        while idle and (ready or (not prepare and not exhausted)):
            if prepare:
                unit, item = ready.pop(0)
            else:
                unit = take()
                if unit is None:
                    exhausted = True
                    break
                item = unit
            actor = idle.pop()
            running[actor.run.remote(_light(unit), item)] = (unit, actor)
        if not (preparing or ready or running):
            if back:  # units an actor lost
                exhausted = False
                continue
            break
        finished, _ = ray.wait(list(preparing) + list(running), num_returns=1)
        ref = finished[0]
        if ref in preparing:  # the ref goes to an actor as is: the data moves worker to worker
            ready.append((preparing.pop(ref), ref))
            continue
        unit, actor = running.pop(ref)
        try:
            status, payload, committed = ray.get(ref)
        except RayActorError as e:  # the actor is gone: a fresh one takes its place
            if getattr(e, "actor_init_failed", False):  # load() failed: no unit is to blame
                lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                raise EngineError(f"a Ray worker could not start: {lines[-1] if lines else 'unknown error'}") from None
            lost(actor)
            rec.fail(unit, DIED)
            actors.remove(actor)
            actor = start_actor()
            actors.append(actor)
        except RayTaskError as e:  # a bug in a worker (or a prepare task): stop, with the worker's traceback
            cause = e.as_instanceof_cause()
            raise cause from None
        else:
            if committed is not None:  # the actor wrote it: count it, remember it until committed
                held.setdefault(actor, {})[unit.key] = (unit, status)
                settle(actor, committed)
                rec.ok(unit, None) if status == "ok" else rec.fail(unit, payload, written=True)
            else:
                rec(status, unit, payload)
        idle.append(actor)
        if not (preparing or ready or running) and exhausted and not back:
            _final_flush(ray, actors, held, settle, lost)
            if back:
                exhausted = False
    return


def _final_flush(ray, actors, held, settle, lost) -> None:
    """Every actor commits what it holds; an actor that dies meanwhile gives its units back to the queue."""
    from ray.exceptions import RayActorError

    refs = {a.flush.remote(): a for a in actors if held.get(a)}
    for ref, actor in refs.items():
        try:
            settle(actor, ray.get(ref))
        except RayActorError:
            lost(actor)
