"""Where trials run: in this process (``local``) or on a Ray cluster (``ray``), with the same numbers either way.

An executor binds a :class:`~onnxflip.campaign.trials.LocalRunner` and hands
back a :class:`~onnxflip.campaign.design.TrialRunner`, whose
``run(p, trials, samples)`` takes a batch of independent trials and returns
their outcomes in the order asked for.  A trial's numbers depend only on the
model, the data, the settings (seed included), p, the trial index and the
number of samples (:mod:`onnxflip.campaign.trials`), so where and in which
order the trials run changes the time they take and nothing else.

``ray`` (the ``ray`` extra): the runner goes into Ray's object store once per
experiment, pickled as what rebuilds it: the injected model, the data (the
decoded arrays when the source is cached in memory, else its file list, which
every node must then read at the same path), the metric and the settings.  A
pool of actors, one per CPU of the cluster (each running ONNX Runtime on one
thread) or, with the ``cuda`` provider, one per GPU (each holding that GPU),
rebuilds the runner once per experiment and runs the trials, one task each,
sent to whichever actor is free.  An actor that dies is started again by Ray
and its trial sent again, up to ``max_attempts`` times (counted as failed in
the :class:`TaskCounts`); an error that a trial raises is raised here.

Ray puts the driver's working folder first on its workers' ``sys.path``; run
from a source checkout of onnxflip (a ``pip install .`` of it), that folder
holds the unbuilt ``onnxflip/`` (no compiled library), which the workers would
import instead of the installed package.  A Ray instance this executor starts
or joins therefore has each worker import, as it starts, the package this
process imported (where that exists on the worker's machine), before anything
else asks for it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from onnxflip.campaign.design import TrialOutcome, TrialRunner
from onnxflip.campaign.trials import LocalRunner
from onnxflip.errors import OnnxflipError

__all__ = ["EXECUTORS", "INSTALL_RAY", "Executor", "LocalExecutor", "RayExecutor", "TaskCounts", "TrialSpec", "open_executor"]

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
INSTALL_RAY = "the ray executor needs Ray: pip install 'onnxflip[ray]'"
_RUNNERS_KEPT = 4  # runners an actor keeps rebuilt (one per experiment it has recently served)


@dataclass(frozen=True)
class TrialSpec:
    """One trial: probability, trial index (which decides its seeds) and samples."""

    p: float
    trial: int
    samples: int


@dataclass
class TaskCounts:
    """Trials an executor has finished, has running, and has seen fail (each failure is retried)."""

    done: int = 0
    running: int = 0
    failed: int = 0

    def describe(self) -> str:
        return f"{self.done} done, {self.running} running, {self.failed} failed"


class Executor(Protocol):
    """Runs an experiment's trials: ``bind`` a runner for the length of the experiment, ``close`` at the end."""

    name: str

    def bind(self, runner: LocalRunner) -> AbstractContextManager[TrialRunner]:
        """A runner whose ``run(p, trials, samples)`` returns the outcomes in the order of ``trials``."""
        ...

    def close(self) -> None: ...


class LocalExecutor:
    """Trials one after another in this process: the runner itself."""

    name = "local"

    @contextlib.contextmanager
    def bind(self, runner: LocalRunner) -> Iterator[LocalRunner]:
        yield runner

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise OnnxflipError(INSTALL_RAY) from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A HOST:PORT that no Ray head answers is a one-line error now, not a wait in Ray's reconnection loop."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise OnnxflipError(f"--ray-address {address!r} is not HOST:PORT (the head's address, e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise OnnxflipError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); start its head with "
                            "`ray start --head --port=6379`") from None


def _import_installed_package_hook() -> Callable[[], None]:
    """Ray's ``worker_process_setup_hook``: import the onnxflip this process runs, before Ray prepends the
    driver's working folder to the worker's ``sys.path``.

    Ray pickles a function by reference, and a worker would import it from the very package it has to choose; so
    the hook is source code that ``exec`` runs, and names only the standard library.
    """
    import onnxflip

    origin = os.path.abspath(onnxflip.__file__)
    code = (
        "import importlib, os, sys\n"
        f"origin, folder = {origin!r}, {os.path.dirname(os.path.dirname(origin))!r}\n"
        "if os.path.isfile(origin) and 'onnxflip' not in sys.modules:\n"
        "    sys.path.insert(0, folder)\n"
        "    try:\n"
        "        importlib.import_module('onnxflip')\n"
        "    finally:\n"
        "        sys.path.remove(folder)\n"
    )
    hook = functools.partial(exec, code, {})
    hook.__name__ = "import_installed_onnxflip"  # Ray names the hook by it
    return hook


class _TrialWorker:
    """A Ray actor: rebuilds each experiment's runner once and runs its trials."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads
        self.runners: OrderedDict[str, LocalRunner] = OrderedDict()

    def pid(self) -> int:
        return os.getpid()

    def trial(self, job: list, p: float, trial: int, samples: int) -> tuple[TrialOutcome, tuple[str, ...], int]:
        """The trial's outcome, the providers that ran it, and this process's id (a new one: the actor restarted)."""
        import ray

        (ref,) = job  # wrapped in a list so that Ray hands over the reference, not the runner at every call
        key = ref.hex()
        if key not in self.runners:
            runner = ray.get(ref)
            runner.threads = self.threads
            self.runners[key] = runner
            while len(self.runners) > _RUNNERS_KEPT:
                self.runners.popitem(last=False)
        runner = self.runners[key]
        self.runners.move_to_end(key)
        outcome = runner.trial(p, trial, samples)
        return outcome, runner.providers, os.getpid()


class _RayTrials:
    """The bound runner: what the design and the experiment read, with trials run by the executor's actors."""

    def __init__(self, executor: RayExecutor, runner: LocalRunner, ref) -> None:
        self.executor, self.ref = executor, ref
        self.samples, self.floor, self.output, self.exposure = runner.samples, runner.floor, runner.output, runner.exposure
        self.providers: tuple[str, ...] = ()

    def run(self, p: float, trials: Sequence[int], samples: int) -> list[TrialOutcome]:
        results = self.executor.run_trials(self.ref, [TrialSpec(p, t, samples) for t in trials])
        if results:
            self.providers = results[-1][1]
        return [outcome for outcome, _ in results]


class RayExecutor:
    """Trials as tasks on Ray actors; see the module docstring.

    ``address``: HOST:PORT of a running cluster's head (``ray start --head``),
    ``auto`` for the cluster ``ray start`` began on this machine, or None to
    start a new Ray instance on this machine (``num_cpus`` CPUs, default all).  When Ray is already initialised in this process, that instance is
    used as it is.  ``workers``: the actors (default one per CPU, or per GPU
    for ``cuda``).  ``on_progress`` is called with the :class:`TaskCounts`
    whenever they change.
    """

    name = "ray"

    def __init__(self, *, address: str | None = None, provider: str = "cpu", workers: int | None = None,
                 num_cpus: int | None = None, max_attempts: int = 4,
                 on_progress: Callable[[TaskCounts], None] | None = None) -> None:
        ray = _import_ray()
        self.ray = ray
        self.started = False
        self.max_attempts = max_attempts
        self.on_progress = on_progress
        self.counts = TaskCounts()
        self.actors: list = []
        self.pids: dict = {}
        if address is not None and address != "auto":  # auto: the cluster `ray start` began on this machine
            _check_reachable(address)
        if not ray.is_initialized():
            try:
                # "local": a new instance, even where `ray start` left a cluster running on this machine.
                ray.init(address=address or "local", num_cpus=num_cpus if address is None else None,
                         include_dashboard=False, logging_level=logging.WARNING,
                         runtime_env={"worker_process_setup_hook": _import_installed_package_hook()})
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                hint = ""
                if address is not None and os.environ.get("RAY_AUTH_MODE") != "token":
                    # Ray sends its token to an address given explicitly only when told to.
                    hint = ("; a cluster with token authentication needs RAY_AUTH_MODE=token and its token "
                            "(~/.ray/auth_token or RAY_AUTH_TOKEN)")
                raise OnnxflipError(f"cannot start or join Ray{f' at {address}' if address else ''}: {first}{hint}") \
                    from None
            self.started = True
        try:
            self._start_actors(provider, workers)
        except BaseException:
            self.close()
            raise

    def _start_actors(self, provider: str, workers: int | None) -> None:
        resources = self.ray.cluster_resources()
        if provider == "cuda":
            capacity = int(resources.get("GPU", 0))
            if capacity < 1:
                raise OnnxflipError("--provider cuda asks Ray for one GPU per task, and the Ray cluster has none; "
                                    "add GPU nodes or use --provider cpu")
            options, threads = {"num_cpus": 1, "num_gpus": 1}, None
        else:
            capacity = max(int(resources.get("CPU", 1)), 1)
            options, threads = {"num_cpus": 1}, 1
        count = workers or capacity
        # An actor that dies is started again and the trial it was running is sent to it again, by Ray.
        actor = self.ray.remote(_TrialWorker).options(max_restarts=self.max_attempts,
                                                      max_task_retries=self.max_attempts, **options)
        self.actors = [actor.remote(threads) for _ in range(count)]
        # The process of each actor, as it last said: a new one means that it died and was started again.
        self.pids = dict(zip(self.actors, self.ray.get([a.pid.remote() for a in self.actors])))
        logger.info("ray: %d workers (%s)", count, provider)

    # --- experiments
    @contextlib.contextmanager
    def bind(self, runner: LocalRunner) -> Iterator[_RayTrials]:
        """The runner put in the object store once; its trials run on the actors."""
        ref = self.ray.put(runner)
        try:
            yield _RayTrials(self, runner, ref)
        finally:
            del ref

    def run_trials(self, ref, specs: Sequence[TrialSpec]) -> list[tuple[TrialOutcome, tuple[str, ...]]]:
        """Each trial on the next free actor; the results in the order of ``specs``."""
        ray = self.ray
        results: list = [None] * len(specs)
        waiting = list(reversed(range(len(specs))))
        free = list(self.actors)
        running: dict = {}
        pids = self.pids
        while waiting or running:
            while waiting and free:
                i, actor = waiting.pop(), free.pop()
                spec = specs[i]
                running[actor.trial.remote([ref], spec.p, spec.trial, spec.samples)] = (i, actor)
            self._report(running=len(running))
            (ready,), _ = ray.wait(list(running), num_returns=1)
            i, actor = running.pop(ready)
            free.append(actor)
            spec = specs[i]
            try:
                outcome, providers, pid = ray.get(ready)
            except ray.exceptions.RayTaskError as exc:
                self._report(running=len(running), failed=1)
                if isinstance(exc.cause, OnnxflipError):
                    raise exc.cause from None
                raise
            except ray.exceptions.RayActorError as exc:
                self._report(running=len(running), failed=1)
                raise OnnxflipError(f"trial {spec.trial} at p = {spec.p:g}: its Ray worker died "
                                    f"{self.max_attempts + 1} times ({type(exc).__name__})") from None
            if pids.get(actor) != pid:
                # The worker died (it, or its node) while running a trial; Ray started it again and sent the trial
                # again: each trial's numbers depend only on its seed, so nothing is lost.
                logger.warning("ray: a worker died and was started again; its trial ran again")
                pids[actor] = pid
                self._report(running=len(running), failed=1)
            results[i] = (outcome, providers)
            self._report(running=len(running), done=1)
        return results

    def _report(self, *, running: int, done: int = 0, failed: int = 0) -> None:
        before = (self.counts.done, self.counts.running, self.counts.failed)
        self.counts.done += done
        self.counts.failed += failed
        self.counts.running = running
        if self.on_progress is not None and before != (self.counts.done, self.counts.running, self.counts.failed):
            self.on_progress(self.counts)

    def close(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
        self.actors = []
        if self.started:
            self.ray.shutdown()
            self.started = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_executor(name: str, *, address: str | None = None, provider: str = "cpu",
                  on_progress: Callable[[TaskCounts], None] | None = None) -> LocalExecutor | RayExecutor:
    """The executor a command line names (``local`` or ``ray``); use it as a context manager."""
    if name == "local":
        if address is not None:
            raise OnnxflipError("--ray-address needs --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address=address, provider=provider, on_progress=on_progress)
    raise OnnxflipError(f"executor must be one of {', '.join(EXECUTORS)}, not {name!r}")
