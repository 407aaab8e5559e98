"""Axon (miner) and Dendrite (validator) construction that works offline on 127.0.0.1.

bittensor 10.5 needs four adjustments for a local, offline subnet (NOTES):

- ``Dendrite()`` looks up the public IP over the internet and fails offline. :func:`build_dendrite`
  swaps ``bittensor.utils.networking.get_external_ip`` for a function returning the configured
  address *only while the Dendrite is constructed* (under a lock), then restores it.
- The Axon binds uvicorn to 0.0.0.0 whatever ``ip=`` says: :func:`build_axon` sets the uvicorn
  host to ``--axon.ip`` before start, and always passes ``external_ip`` (never looked up).
- uvicorn's 5 s keep-alive is shorter than aiohttp's 15 s client keep-alive, so a Dendrite
  reuses a connection the server is closing ("Broken pipe"/422 on large synapses): the server
  keep-alive is raised to ``keep_alive_timeout`` (120 s).
- The Axon serialises every response through FastAPI's ``jsonable_encoder`` and then
  ``json.dumps`` (about 80 ms for a maximal Train response): :class:`FastResponseMiddleware`
  renders the same JSON with pydantic's ``model_dump_json`` (about 2 ms) instead.
- ``Axon.attach`` checks handler signatures strictly (parameter named ``synapse``; blacklist
  annotated ``typing.Tuple[bool, str]``). The factories here build functions with exactly
  those signatures, so handlers can be closures and modules can use postponed annotations.

Blacklist and priority are pure functions of a metagraph snapshot (:func:`check_caller`,
:func:`caller_priority`); :class:`MetagraphCache` supplies a recent snapshot without blocking
the Axon's event loop on a chain round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import inspect
import logging
import socket
import threading
import time
import typing
from collections.abc import Awaitable, Callable, Mapping
from inspect import Parameter, Signature
from typing import TYPE_CHECKING, Any

import bittensor as bt
from bittensor.core.axon import AxonMiddleware
from bittensor.core.synapse import TerminalInfo
from starlette.responses import Response

from template.chain.base import Chain, Metagraph
from template.config import ConfigError
from template.protocol import validate_request

if TYPE_CHECKING:
    from bittensor_wallet import Wallet

logger = logging.getLogger(__name__)

Handler = Callable[[Any], Awaitable[Any]] | Callable[[Any], Any]
"""A synapse handler: ``async def f(synapse) -> synapse`` (or sync; run in an executor)."""

KEEP_ALIVE_TIMEOUT = 120.0
_IP_LOOKUP_LOCK = threading.Lock()


# ---------------------------------------------------------------- pure policy


def check_caller(graph: Metagraph, hotkey: str | None, *, force_validator_permit: bool,
                 ) -> tuple[bool, str]:
    """``(blacklisted, reason)`` for a caller: refuse unknown hotkeys, and callers without a
    validator permit when ``force_validator_permit``."""
    if not hotkey:
        return True, "no hotkey"
    uid = graph.uid_of(hotkey)
    if uid is None:
        return True, f"hotkey {hotkey} is not registered on netuid {graph.netuid}"
    neuron = graph.neuron(uid)
    if force_validator_permit and (neuron is None or not neuron.validator_permit):
        return True, f"uid {uid} has no validator permit"
    return False, f"uid {uid}"


def caller_priority(graph: Metagraph, hotkey: str | None) -> float:
    """Requests are served in order of the caller's stake (unknown callers: 0)."""
    uid = graph.uid_of(hotkey) if hotkey else None
    neuron = graph.neuron(uid) if uid is not None else None
    return float(neuron.stake) if neuron is not None else 0.0


# ---------------------------------------------------------------- metagraph snapshots


class MetagraphCache:
    """A recent metagraph for the Axon's blacklist/priority, refreshed in the background.

    ``get()`` never waits for the chain once a first snapshot exists: when the snapshot is
    older than ``refresh_interval`` seconds it starts one refresh thread and returns the
    current one. A newly registered validator is refused until the next refresh; lower
    ``refresh_interval`` if fresh validators see "not registered" for too long.
    """

    def __init__(self, chain: Chain, *, refresh_interval: float = 12.0):
        self.chain = chain
        self.refresh_interval = refresh_interval
        self._graph = chain.metagraph()
        self._stamp = time.monotonic()
        self._lock = threading.Lock()
        self._refreshing = False

    def get(self) -> Metagraph:
        with self._lock:
            stale = time.monotonic() - self._stamp > self.refresh_interval
            if stale and not self._refreshing:
                self._refreshing = True
                threading.Thread(target=self._refresh, daemon=True,
                                 name="metagraph-refresh").start()
            return self._graph

    def refresh(self) -> Metagraph:
        """Synchronous refresh (call from the neuron's own loop, not the Axon's)."""
        graph = self.chain.metagraph()
        with self._lock:
            self._graph, self._stamp = graph, time.monotonic()
        return graph

    def _refresh(self) -> None:
        try:
            self.refresh()
        except (OSError, ConnectionError, TimeoutError, RuntimeError) as err:
            # Keep serving the previous snapshot; the next get() retries.
            logger.warning("metagraph refresh failed: %s: %s", type(err).__name__, err)
        finally:
            with self._lock:
                self._refreshing = False


# ---------------------------------------------------------------- attach-compatible functions


def _signature(synapse_type: type, returns: object) -> Signature:
    param = Parameter("synapse", Parameter.POSITIONAL_OR_KEYWORD, annotation=synapse_type)
    return Signature([param], return_annotation=returns)


def make_blacklist_fn(synapse_type: type[bt.Synapse], graph: Callable[[], Metagraph], *,
                      force_validator_permit: bool) -> Callable[..., tuple[bool, str]]:
    def blacklist(synapse):  # type: ignore[no-untyped-def]
        hotkey = synapse.dendrite.hotkey if synapse.dendrite is not None else None
        return check_caller(graph(), hotkey, force_validator_permit=force_validator_permit)

    blacklist.__signature__ = _signature(synapse_type, typing.Tuple[bool, str])  # noqa: UP006
    return blacklist


def make_priority_fn(synapse_type: type[bt.Synapse], graph: Callable[[], Metagraph],
                     ) -> Callable[..., float]:
    def priority(synapse):  # type: ignore[no-untyped-def]
        hotkey = synapse.dendrite.hotkey if synapse.dendrite is not None else None
        return caller_priority(graph(), hotkey)

    priority.__signature__ = _signature(synapse_type, float)
    return priority


def make_forward_fn(synapse_type: type[bt.Synapse], handler: Handler) -> Callable[..., Any]:
    """Wrap a handler: reject malformed requests (``error`` set, handler not called), await
    async handlers, and run sync handlers in an executor so they never block the event loop."""

    async def forward(synapse):  # type: ignore[no-untyped-def]
        rejection = validate_request(synapse)
        if rejection is not None:
            if hasattr(synapse, "error"):
                synapse.error = f"rejected request: {rejection}"[:512]
            return synapse
        if inspect.iscoroutinefunction(handler):
            return await handler(synapse)
        return await asyncio.get_running_loop().run_in_executor(None, handler, synapse)

    forward.__signature__ = _signature(synapse_type, synapse_type)
    return forward


# ---------------------------------------------------------------- Axon


class FastResponseMiddleware(AxonMiddleware):
    """bittensor's middleware with a faster response encoder (the Axon's ``middleware_cls``
    hook). Same status defaults, body fields and headers as the parent; only the JSON encoder
    differs (pydantic's, 30-40x faster than FastAPI's ``jsonable_encoder`` on float lists)."""

    @classmethod
    async def synapse_to_response(cls, synapse: bt.Synapse, start_time: float, *,
                                  response_override: Response | None = None) -> Response:
        if response_override is not None:  # streaming responses: unchanged
            return await super().synapse_to_response(synapse, start_time,
                                                     response_override=response_override)
        if synapse.axon is None:
            synapse.axon = TerminalInfo()
        if synapse.axon.status_code is None:
            synapse.axon.status_code = 200
        if synapse.axon.status_code == 200 and not synapse.axon.status_message:
            synapse.axon.status_message = "Success"
        synapse.axon.process_time = time.time() - start_time
        response = Response(content=synapse.model_dump_json(), media_type="application/json",
                            status_code=synapse.axon.status_code)
        response.headers.update(synapse.to_headers())
        return response



def build_axon(
    *,
    wallet: Wallet,
    handlers: Mapping[type[bt.Synapse], Handler],
    graph: Callable[[], Metagraph],
    ip: str = "127.0.0.1",
    port: int = 8091,
    external_ip: str = "",
    external_port: int = 0,
    force_validator_permit: bool = False,
    keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT,
    max_workers: int | None = None,
    fast_responses: bool = True,
) -> bt.Axon:
    """An Axon bound to ``ip:port`` serving ``handlers`` (not started; see :func:`start_axon`).

    ``graph`` returns the metagraph used by blacklist and priority (a :class:`MetagraphCache`'s
    ``get``). ``keep_alive_timeout``: seconds uvicorn keeps an idle connection; raise it if
    validators log "Broken pipe" or 422 on large synapses. ``fast_responses``: encode
    responses with :class:`FastResponseMiddleware` (False: bittensor's own encoder).
    """
    announce = external_ip or ip
    if announce in ("0.0.0.0", "::", ""):
        raise ValueError("--axon.external_ip: set the address to announce when binding "
                         f"--axon.ip {ip}")
    parser = argparse.ArgumentParser()
    bt.Axon.add_args(parser)
    config = bt.Config(parser, args=[])  # never read sys.argv: our flags are parsed elsewhere
    axon = bt.Axon(wallet=wallet, config=config, ip=ip, port=port, external_ip=announce,
                   external_port=external_port or port, max_workers=max_workers)
    axon.fast_config.host = ip
    axon.fast_config.timeout_keep_alive = int(keep_alive_timeout)
    if fast_responses:
        axon.middleware_cls = FastResponseMiddleware  # read by attach()'s endpoints per call
    for synapse_type, handler in handlers.items():
        axon.attach(
            forward_fn=make_forward_fn(synapse_type, handler),
            blacklist_fn=make_blacklist_fn(synapse_type, graph,
                                           force_validator_permit=force_validator_permit),
            priority_fn=make_priority_fn(synapse_type, graph),
        )
    return axon


class AxonPortInUse(ConfigError):
    """``--axon.port`` cannot be bound on ``--axon.ip``: another process listens on it."""

    def __init__(self, port: int):
        ValueError.__init__(self, f"--axon.port {port} is in use")
        self.flag = "--axon.port"
        self.port = port


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`AxonPortInUse` unless ``host:port`` can be bound now.

    Binds (and closes) a socket with ``SO_REUSEADDR``, as uvicorn does, so a port in TIME_WAIT
    passes while one another server listens on fails. Port 0 (any free port) always passes.
    """
    if port == 0:
        return
    host = host or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            if err.errno in (errno.EADDRINUSE, errno.EACCES):
                raise AxonPortInUse(port) from err
            raise


def start_axon(axon: bt.Axon, *, startup_timeout: float = 10.0) -> bt.Axon:
    """Start the Axon and wait until it accepts connections.

    Raises :class:`AxonPortInUse` (a :class:`ConfigError`, so the neuron exits 2 with
    ``--axon.port N is in use``) before starting when the port cannot be bound: a check that
    something accepts connections would be fooled by the other server.
    ``startup_timeout``: seconds to wait for the port to listen.
    """
    check_port_free(axon.fast_config.host, axon.port)
    axon.start()
    host = axon.fast_config.host
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, axon.port), timeout=0.2):
                return axon
        except OSError:
            time.sleep(0.02)
    axon.stop()
    raise RuntimeError(f"--axon.port: the Axon did not listen on {host}:{axon.port} within "
                       f"{startup_timeout}s (port in use?)")


# ---------------------------------------------------------------- Dendrite


def build_dendrite(wallet: Wallet, *, external_ip: str = "127.0.0.1") -> bt.Dendrite:
    """A Dendrite that never looks up its public IP (it reports ``external_ip``).

    Keep one event loop for the Dendrite's lifetime: its aiohttp session binds to the first.
    """
    from bittensor.utils import networking

    with _IP_LOOKUP_LOCK:
        original = networking.get_external_ip
        networking.get_external_ip = lambda: external_ip
        try:
            return bt.Dendrite(wallet=wallet)
        finally:
            networking.get_external_ip = original


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for tests and the local launcher)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
