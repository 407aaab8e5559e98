"""Every process a neuron starts dies with it; SIGTERM/SIGINT stop a neuron in bounded time.

Children (hivemind's DHT and averager processes, the ``p2pd`` daemons they spawn):

- :class:`DiesWithParent` is mixed into :class:`~hivemind_utils.dht.SwarmDHT` and
  :class:`~hivemind_utils.averaging.SwarmAverager`. In the child it (1) asks Linux for SIGKILL
  when the parent dies (``prctl(PR_SET_PDEATHSIG)``), so ``kill -9`` of a neuron leaves no DHT
  or averager behind, and (2) moves the child into its own process group, so a signal sent to
  the neuron's group (``kill -TERM -- -PGID``: timeout, systemd, pm2, Ctrl+C) reaches only the
  neuron, which then stops its children in order (averager before DHT).
- :func:`p2pd_preexec` is installed around hivemind's p2pd launch (:mod:`hivemind_utils.compat`):
  p2pd gets SIGKILL when the DHT process that started it dies.

PDEATHSIG fires when the parent *thread* that forked the child ends, not the parent process:
it is only armed for children forked from the main thread; a child forked from another thread
(and any system without ``prctl``) polls ``os.getppid()`` instead (:data:`WATCHDOG_INTERVAL`).

Parent (the neuron): :class:`StopController` turns the first SIGTERM/SIGINT into one log line
and a call to the neuron's own stop, and force-kills the neuron's descendants (by PID) if the
graceful stop takes longer than ``--neuron.stop_timeout``; :func:`reap_descendants` makes sure
nothing is left when the neuron exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import psutil

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
WATCHDOG_INTERVAL = 1.0  # s between parent checks where PDEATHSIG cannot be used
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent (thread) dies; False where
    ``prctl`` is not available (not Linux, no libc). Safe to call between fork and exec."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    return True


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(WATCHDOG_INTERVAL)
    os.kill(os.getpid(), signal.SIGKILL)  # the parent is gone: so is everything we started


def bind_to_parent(parent_pid: int, *, forked_from_main_thread: bool) -> str:
    """In a freshly forked child: die when ``parent_pid`` dies. Returns the mechanism used
    (``"pdeathsig"`` or ``"watchdog"``). If the parent already died, the child dies now."""
    mechanism = "watchdog"
    if forked_from_main_thread and set_parent_death_signal(signal.SIGKILL):
        mechanism = "pdeathsig"
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)
    if mechanism == "watchdog":
        threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watchdog",
                         daemon=True).start()
    return mechanism


def leave_parent_group() -> None:
    """Move this process into a new process group: group signals meant for the parent (Ctrl+C,
    ``kill -- -PGID``) no longer reach it; the parent stops it, or it dies with the parent."""
    try:
        os.setpgid(0, 0)
    except PermissionError:  # already a session leader: it has its own group
        return


@dataclass(frozen=True)
class _Parent:
    pid: int
    main_thread: bool


class DiesWithParent:
    """Mixin for ``multiprocessing.Process`` subclasses (hivemind's DHT and averagers): the
    child dies with the process that started it and ignores its parent's group signals."""

    _lifetime_parent: _Parent | None = None

    def start(self) -> None:
        self._lifetime_parent = _Parent(
            os.getpid(), threading.current_thread() is threading.main_thread())
        super().start()  # type: ignore[misc]  # fork: the child sees _lifetime_parent

    def run(self) -> None:
        parent = self._lifetime_parent
        if parent is not None:  # None: run() called in-process (no fork), nothing to bind
            leave_parent_group()
            bind_to_parent(parent.pid, forked_from_main_thread=parent.main_thread)
        super().run()  # type: ignore[misc]


def p2pd_preexec(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn`` for p2pd: SIGKILL when ``parent_pid`` (the DHT process) dies."""

    def preexec() -> None:
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


# ---------------------------------------------------------------------- the neuron (parent)


SELF_ENDING = frozenset({"torch_shm_manager"})
"""Children that end by themselves once this process is gone, and that this process still talks
to while it exits: torch's shared-memory manager (killing it first makes torch's exit-time
cleanup hit a broken pipe and abort the interpreter: exit status -6)."""


def kill_descendants(sig: int = signal.SIGKILL, *, timeout: float = 5.0,
                     spare: frozenset[str] = frozenset()) -> list[int]:
    """Send ``sig`` to every live descendant of this process (by PID) whose name is not in
    ``spare`` and wait up to ``timeout`` s for them to exit; returns the PIDs signalled."""
    try:
        procs = [p for p in psutil.Process().children(recursive=True) if _name(p) not in spare]
    except psutil.NoSuchProcess:
        return []
    signalled = []
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            continue
        signalled.append(proc.pid)
    psutil.wait_procs(procs, timeout=timeout)
    return signalled


def reap_descendants(*, grace: float = 3.0) -> list[int]:
    """At exit: SIGTERM what is still running below this process, SIGKILL it after ``grace``
    s (sparing :data:`SELF_ENDING` children). Returns the PIDs that had to be stopped."""
    left = kill_descendants(signal.SIGTERM, timeout=grace, spare=SELF_ENDING)
    if left:
        kill_descendants(signal.SIGKILL, timeout=grace, spare=SELF_ENDING)
    return left


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""


class StopController:
    """The first SIGTERM/SIGINT stops the neuron; ``stop_timeout`` s later it is forced.

        stopper = StopController(stop_timeout=cfg.neuron.stop_timeout, on_stop=miner.stop.set)
        stopper.install()

    ``on_stop`` runs in the main thread inside the signal handler: it sets a flag or raises
    ``KeyboardInterrupt``. Later signals are logged and otherwise ignored: the deadline set by
    the first one bounds the stop. Past the deadline every descendant is killed by PID and the
    process exits with status 1 (a stop that had to be forced).
    """

    def __init__(self, *, stop_timeout: float, on_stop: Callable[[], None],
                 log: logging.Logger | None = None):
        if not stop_timeout > 0:
            raise ValueError(f"stop_timeout must be > 0 s, got {stop_timeout}")
        self.stop_timeout, self.on_stop = stop_timeout, on_stop
        self.log = log or logger
        self.reason: str | None = None
        self._deadline: threading.Timer | None = None

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.reason is not None:
            self.log.info("received %s while stopping (%s); still stopping", name, self.reason)
            return
        self.reason = name
        self.log.info("stopping: received %s; forcing the stop after %g s "
                      "(--neuron.stop_timeout)", name, self.stop_timeout)
        self._deadline = threading.Timer(self.stop_timeout, self._force)
        self._deadline.daemon = True
        self._deadline.start()
        self.on_stop()

    def _force(self) -> None:
        self.log.error("graceful stop took longer than --neuron.stop_timeout (%g s): killing "
                       "child processes and exiting", self.stop_timeout)
        killed = kill_descendants(signal.SIGKILL)
        self.log.error("killed %d child process(es): %s", len(killed), killed)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(1)

    def closing(self) -> None:
        """The neuron is closing: a signal from now on only logs and arms the deadline (an
        interrupted ``close()`` would leave state unsaved)."""
        self.on_stop = _do_nothing


def _do_nothing() -> None:
    return None


def raise_keyboard_interrupt() -> Any:
    """``on_stop`` for loops that stop on ``KeyboardInterrupt`` (the validator's, start-up)."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def stoppable(*, stop_timeout: float, log: logging.Logger) -> Iterator[StopController]:
    """Run a neuron's body under a :class:`StopController`: a signal raises
    ``KeyboardInterrupt`` until the body sets ``stopper.on_stop`` to its own stop; the
    interrupt ends the body quietly. Descendants still running at the end are left to die with
    this process (parent-death signal): killing them here, while the interpreter still talks to
    some of them (torch's shm manager), aborted the validator at exit (status -6).

    The deadline stays armed after the body: an interpreter exit that hangs is forced too.
    """
    stopper = StopController(stop_timeout=stop_timeout, on_stop=raise_keyboard_interrupt,
                             log=log)
    stopper.install()
    try:
        yield stopper
    except KeyboardInterrupt:
        if stopper.reason is None:  # not one of our handlers: a plain Ctrl+C before install
            log.info("stopping: interrupted")
    finally:
        stopper.closing()
        if stopper.reason is not None:
            log.info("stopped (%s)", stopper.reason)


__all__ = ["DiesWithParent", "StopController", "bind_to_parent", "kill_descendants",
           "leave_parent_group", "p2pd_preexec", "raise_keyboard_interrupt",
           "reap_descendants", "set_parent_death_signal", "stoppable"]
