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
import concurrent.futures
import errno
import inspect
import json
import logging
import math
import socket
import threading
import time
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from inspect import Parameter, Signature
from typing import TYPE_CHECKING, Any

import bittensor as bt
from bittensor.core.axon import AxonMiddleware
from bittensor.core.errors import InvalidRequestNameError, SynapseException, SynapseParsingError
from bittensor.core.synapse import TerminalInfo
from pydantic import ValidationError
from starlette.middleware import Middleware
from starlette.middleware.base import RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response

from template.chain.base import Chain, Metagraph
from template.config import BlacklistConfig, ConfigError
from template.protocol import MAX_ERROR_LEN, REJECTED_PREFIX, validate_request

if TYPE_CHECKING:
    from bittensor_wallet import Wallet

logger = logging.getLogger(__name__)

Handler = Callable[[Any], Awaitable[Any]] | Callable[[Any], Any]
"""A synapse handler: ``async def f(synapse) -> synapse`` (or sync; run in an executor)."""

KEEP_ALIVE_TIMEOUT = 120.0
MAX_BODY_BYTES = 2**20
"""Largest request body the Axon reads (413 above it); a maximal Train is about 0.5 MB."""
ROUND_SYNAPSES = frozenset({"AllReduce", "Train"})
"""Synapses that need a validator permit or ``--blacklist.min_stake`` when callers must be
staked."""
ROUND_GATED = frozenset({"AllReduce"})
"""Synapses held in the :class:`RoundGate` (one pending per hotkey and epoch, bounded)."""
_IP_LOOKUP_LOCK = threading.Lock()


# ---------------------------------------------------------------- pure policy


def check_caller(graph: Metagraph, hotkey: str | None, *, force_validator_permit: bool,
                 min_stake: float | None = None) -> tuple[bool, str]:
    """``(blacklisted, reason)`` for a caller: refuse unknown hotkeys, callers without a
    validator permit when ``force_validator_permit``, and (when ``min_stake`` is given) callers
    holding neither a validator permit nor ``min_stake``."""
    if not hotkey:
        return True, "no hotkey"
    uid = graph.uid_of(hotkey)
    if uid is None:
        return True, f"hotkey {hotkey} is not registered on netuid {graph.netuid}"
    neuron = graph.neuron(uid)
    permit = neuron is not None and neuron.validator_permit
    if force_validator_permit and not permit:
        return True, f"uid {uid} has no validator permit"
    if min_stake is not None and not permit:
        stake = neuron.stake if neuron is not None else 0.0
        if not stake >= min_stake:
            return True, (f"uid {uid} has no validator permit and stake {stake:g} < "
                          f"--blacklist.min_stake {min_stake:g}")
    return False, f"uid {uid}"


@dataclass(frozen=True)
class CallerPolicy:
    """Who may call which synapse (pure data; see :func:`check_caller`).

    ``min_stake`` applies to the synapses named in ``staked_synapses`` (None: no stake gate).
    Build it from the config with :meth:`from_config`.
    """

    force_validator_permit: bool = False
    min_stake: float | None = None
    staked_synapses: frozenset[str] = ROUND_SYNAPSES

    @classmethod
    def from_config(cls, blacklist: BlacklistConfig, *, local_devnet: bool) -> CallerPolicy:
        gate = blacklist.rounds_need_stake(local_devnet=local_devnet)
        return cls(force_validator_permit=blacklist.force_validator_permit,
                   min_stake=blacklist.min_stake if gate else None)

    def min_stake_for(self, synapse_name: str) -> float | None:
        return self.min_stake if synapse_name in self.staked_synapses else None


ROUNDS_PER_HOTKEY = 2
"""Epochs one hotkey may have AllReduce rounds pending for at once: the round it asked for and
the next (a validator whose request for epoch ``e`` still waits when the swarm reaches
``e + 1``). More would let one hotkey take the whole ``--blacklist.max_pending_rounds``."""

RoundKey = tuple[str, int]
"""``(hotkey, epoch)`` of a pending AllReduce round."""


def admit_round(pending: Mapping[RoundKey, int], key: RoundKey, *, max_pending: int,
                per_hotkey: int = ROUNDS_PER_HOTKEY) -> str | None:
    """Why a new AllReduce ``key = (hotkey, epoch)`` is refused, or None to admit it (pure).

    ``pending`` counts the rounds in flight per ``(hotkey, epoch)``: a hotkey gets one at a
    time per epoch, for at most ``per_hotkey`` epochs, and the miner holds at most
    ``max_pending`` in all.
    """
    hotkey, epoch = key
    if pending.get(key, 0) > 0:
        return f"busy: this hotkey already has an AllReduce round pending for epoch {epoch}"
    mine = sum(n for (h, _), n in pending.items() if h == hotkey)
    if mine >= per_hotkey:
        return f"busy: this hotkey already has {mine} AllReduce rounds pending (other epochs)"
    total = sum(pending.values())
    if total >= max_pending:
        return f"busy: {total} AllReduce rounds pending (--blacklist.max_pending_rounds)"
    return None


class RoundGate:
    """Thread-safe counter of pending AllReduce rounds per ``(hotkey, epoch)``, decided by
    :func:`admit_round`. ``enter`` returns a refusal reason or None (then call ``leave``)."""

    def __init__(self, *, max_pending: int, per_hotkey: int = ROUNDS_PER_HOTKEY):
        if max_pending < 1:
            raise ValueError("--blacklist.max_pending_rounds: must be >= 1")
        self.max_pending, self.per_hotkey = max_pending, per_hotkey
        self._pending: dict[RoundKey, int] = {}
        self._lock = threading.Lock()

    def enter(self, hotkey: str, epoch: int) -> str | None:
        key = (hotkey, epoch)
        with self._lock:
            refusal = admit_round(self._pending, key, max_pending=self.max_pending,
                                  per_hotkey=self.per_hotkey)
            if refusal is None:
                self._pending[key] = self._pending.get(key, 0) + 1
            return refusal

    def leave(self, hotkey: str, epoch: int) -> None:
        key = (hotkey, epoch)
        with self._lock:
            left = self._pending.get(key, 0) - 1
            if left > 0:
                self._pending[key] = left
            else:
                self._pending.pop(key, None)

    def pending(self) -> int:
        with self._lock:
            return sum(self._pending.values())


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
                      force_validator_permit: bool, min_stake: float | None = None,
                      ) -> Callable[..., tuple[bool, str]]:
    def blacklist(synapse):  # type: ignore[no-untyped-def]
        hotkey = synapse.dendrite.hotkey if synapse.dendrite is not None else None
        return check_caller(graph(), hotkey, force_validator_permit=force_validator_permit,
                            min_stake=min_stake)

    blacklist.__signature__ = _signature(synapse_type, typing.Tuple[bool, str])  # noqa: UP006
    return blacklist


def make_priority_fn(synapse_type: type[bt.Synapse], graph: Callable[[], Metagraph],
                     ) -> Callable[..., float]:
    def priority(synapse):  # type: ignore[no-untyped-def]
        hotkey = synapse.dendrite.hotkey if synapse.dendrite is not None else None
        return caller_priority(graph(), hotkey)

    priority.__signature__ = _signature(synapse_type, float)
    return priority


def make_forward_fn(synapse_type: type[bt.Synapse], handler: Handler, *,
                    executor: concurrent.futures.Executor | None = None) -> Callable[..., Any]:
    """Wrap a handler: answer malformed requests with 422 and the reason (``error`` set, handler
    not called), await async handlers, and run sync handlers in ``executor`` (None: the
    event loop's default pool) so they never block the event loop."""

    async def forward(synapse):  # type: ignore[no-untyped-def]
        rejection = validate_request(synapse)
        if rejection is not None:
            message = f"{REJECTED_PREFIX}{rejection}"[:MAX_ERROR_LEN]
            if hasattr(synapse, "error"):
                synapse.error = message
            if synapse.axon is None:
                synapse.axon = TerminalInfo()
            synapse.axon.status_code, synapse.axon.status_message = 422, message
            return synapse
        if inspect.iscoroutinefunction(handler):
            return await handler(synapse)
        return await asyncio.get_running_loop().run_in_executor(executor, handler, synapse)

    forward.__signature__ = _signature(synapse_type, synapse_type)
    return forward


# ---------------------------------------------------------------- Axon


class RequestRefused(SynapseException):
    """A request answered with a 4xx before (or instead of) the handler: malformed input, or
    a round refused as busy. The status and reason travel in the synapse's axon headers."""

    def __init__(self, status: int, reason: str, synapse: bt.Synapse | None = None):
        synapse = synapse if synapse is not None else bt.Synapse()
        if synapse.axon is None:
            synapse.axon = TerminalInfo()
        reason = reason.replace("\r", " ").replace("\n", " ")[:MAX_ERROR_LEN]
        synapse.axon.status_code, synapse.axon.status_message = status, reason
        super().__init__(reason, synapse=synapse)
        self.status = status


def check_request_body(synapse_type: type[bt.Synapse], body: bytes, body_hash: str,
                       ) -> tuple[int, str] | None:
    """``(status, reason)`` when a request body is malformed, else None (pure).

    The same checks as bittensor's ``verify_body_integrity`` (whose failures are bare 500s),
    each with its own answer: 400 for bytes that are not a JSON object and for a body hash
    that differs from the signed ``computed_body_hash`` header, 422 (pydantic's message, so
    the Dendrite side can tell ``finite_number`` from ``too_long``) for values the schema
    refuses.
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        return 400, f"body is not JSON: {err}"
    if not isinstance(data, dict):
        return 400, f"body is a JSON {type(data).__name__}, not an object"
    try:
        synapse = synapse_type(**data)
    except ValidationError as err:
        return 422, f"body does not fit {synapse_type.__name__}: {_short(err)}"
    except (TypeError, ValueError) as err:
        return 400, f"body does not fit {synapse_type.__name__}: {err}"
    try:
        computed = synapse.body_hash
    except (TypeError, ValueError, AttributeError, RecursionError) as err:
        return 400, f"body cannot be hashed: {err}"
    if computed != body_hash:
        return 400, "body hash mismatch: body differs from the signed computed_body_hash"
    return None


def _body_epoch(body: bytes) -> int:
    """The ``epoch`` of a request body that :func:`check_request_body` accepted (0 if unset)."""
    epoch = json.loads(body).get("epoch", 0)
    return epoch if isinstance(epoch, int) else 0


def _short(err: ValidationError) -> str:
    """pydantic's message, one line, with the error type markers kept (``type=too_long``)."""
    return " ".join(str(err).split())


class FastResponseMiddleware(AxonMiddleware):
    """bittensor's middleware (the Axon's ``middleware_cls`` hook) with three changes:

    - Malformed requests get a 4xx with the reason in the ``axon.status_message`` header
      (bittensor answers most of them ``500 Internal Server Error #uuid``): unparsable headers
      400, no Content-Length 411, a body over ``max_body_bytes`` 413, a Content-Type other
      than JSON 415 (FastAPI would hand the handler raw bytes), a body that is not a JSON
      object or does not match its signed hash 400, values the schema refuses 422 (see
      :func:`check_request_body`). A handler that raises is still a 500.
    - AllReduce requests pass the axon's :class:`RoundGate` (``axon.round_gate``): one
      pending round per hotkey and epoch, at most :data:`ROUNDS_PER_HOTKEY` epochs per hotkey
      and a bounded number overall; the rest get 429 at once.
    - Responses are encoded with pydantic's ``model_dump_json`` (30-40x faster than FastAPI's
      ``jsonable_encoder`` on float lists); same status defaults, body fields and headers.
    """

    max_body_bytes = MAX_BODY_BYTES

    async def preprocess(self, request: Request) -> bt.Synapse:
        try:
            synapse = await super().preprocess(request)
        except (SynapseParsingError, InvalidRequestNameError, ValidationError, TypeError,
                ValueError, KeyError, UnicodeError) as err:
            cause = err.__cause__ if err.__cause__ is not None else err
            detail = _short(cause) if isinstance(cause, ValidationError) else str(cause)
            raise RequestRefused(400, f"malformed headers: {type(cause).__name__}: {detail}",
                                 ) from err
        timeout = synapse.timeout
        if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
            raise RequestRefused(400, f"malformed headers: timeout {timeout} is not a finite "
                                      "number > 0", synapse)
        return synapse

    async def run(self, synapse: bt.Synapse, call_next: RequestResponseEndpoint,
                  request: Request) -> Response:
        body = await self._read_body(synapse, request)
        synapse_type = self.axon.forward_class_types[str(synapse.name)]
        bad = check_request_body(synapse_type, body, request.headers.get("computed_body_hash", ""))
        if bad is not None:
            raise RequestRefused(bad[0], bad[1], synapse)
        gate: RoundGate | None = getattr(self.axon, "round_gate", None)
        if gate is None or synapse.name not in ROUND_GATED:
            return await super().run(synapse, call_next, request)
        hotkey = str(synapse.dendrite.hotkey) if synapse.dendrite is not None else ""
        epoch = _body_epoch(body)
        refusal = gate.enter(hotkey, epoch)
        if refusal is not None:
            raise RequestRefused(429, refusal, synapse)
        try:
            return await super().run(synapse, call_next, request)
        finally:
            gate.leave(hotkey, epoch)

    async def _read_body(self, synapse: bt.Synapse, request: Request) -> bytes:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not (media == "application/json"
                or (media.startswith("application/") and media.endswith("+json"))):
            raise RequestRefused(415, f"Content-Type {media[:60]!r} is not application/json",
                                 synapse)
        length = request.headers.get("content-length")
        if length is None:
            raise RequestRefused(411, "Content-Length required", synapse)
        if not length.isdigit():
            raise RequestRefused(400, f"bad Content-Length {length[:40]!r}", synapse)
        if int(length) > self.max_body_bytes:
            raise RequestRefused(413, f"body of {int(length)} bytes > {self.max_body_bytes}",
                                 synapse)
        return await request.body()

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
    policy: CallerPolicy | None = None,
    max_pending_rounds: int = 4,
    keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT,
    max_workers: int | None = None,
    fast_responses: bool = True,
) -> bt.Axon:
    """An Axon bound to ``ip:port`` serving ``handlers`` (not started; see :func:`start_axon`).

    ``graph`` returns the metagraph used by blacklist and priority (a :class:`MetagraphCache`'s
    ``get``). ``policy``: who may call what (None: ``CallerPolicy(force_validator_permit)``,
    no stake gate; neurons pass :meth:`CallerPolicy.from_config`). ``max_pending_rounds``:
    AllReduce requests held at once, each in a thread of its own pool so IsAlive and Train
    never wait behind rounds; more get 429 (raise it if several validators log "busy" for one
    round). ``keep_alive_timeout``: seconds uvicorn keeps an idle connection; raise it if
    validators log "Broken pipe" or 422 on large synapses. ``fast_responses``: encode
    responses with :class:`FastResponseMiddleware` (False: bittensor's own middleware, with its
    bare 500s and no round gate).
    """
    announce = external_ip or ip
    if announce in ("0.0.0.0", "::", ""):
        raise ValueError("--axon.external_ip: set the address to announce when binding "
                         f"--axon.ip {ip}")
    policy = policy if policy is not None else CallerPolicy(
        force_validator_permit=force_validator_permit)
    parser = argparse.ArgumentParser()
    bt.Axon.add_args(parser)
    config = bt.Config(parser, args=[])  # never read sys.argv: our flags are parsed elsewhere
    axon = bt.Axon(wallet=wallet, config=config, ip=ip, port=port, external_ip=announce,
                   external_port=external_port or port, max_workers=max_workers)
    axon.fast_config.host = ip
    axon.fast_config.timeout_keep_alive = int(keep_alive_timeout)
    if fast_responses:
        _use_middleware(axon, FastResponseMiddleware)
    axon.round_gate = RoundGate(max_pending=max_pending_rounds)
    rounds = concurrent.futures.ThreadPoolExecutor(max_workers=max_pending_rounds,
                                                   thread_name_prefix="axon-allreduce")
    for synapse_type, handler in handlers.items():
        name = synapse_type.__name__
        axon.attach(
            forward_fn=make_forward_fn(synapse_type, handler,
                                       executor=rounds if name in ROUND_GATED else None),
            blacklist_fn=make_blacklist_fn(synapse_type, graph,
                                           force_validator_permit=policy.force_validator_permit,
                                           min_stake=policy.min_stake_for(name)),
            priority_fn=make_priority_fn(synapse_type, graph),
        )
    return axon


def _use_middleware(axon: bt.Axon, cls: type[AxonMiddleware]) -> None:
    """Swap the Axon's middleware for ``cls``: the instance that dispatches requests (starlette
    builds its stack on the first request, so replacing the registered entry is enough) and
    ``middleware_cls``, which attach()'s endpoints read per call to encode responses."""
    entries = axon.app.user_middleware
    index = next(i for i, m in enumerate(entries) if m.cls is AxonMiddleware)
    entries[index] = Middleware(cls, axon=axon)
    axon.middleware_cls = cls


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
