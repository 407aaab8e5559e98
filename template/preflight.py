"""Start-up checks: a set-up mistake ends the neuron with ONE line that names the fix.

    try:
        check_start(cfg, role="miner")   # seconds: placeholders, Axon port, peers, Hub token
        miner = build_miner(cfg)         # wallet files, chain, registration raise the same way
    except STARTUP_ERRORS as err:
        return report(err, debug=cfg.logging.debug)   # prints the line; exit status 2

Every line starts with the flag to change (or the environment variable) and ends with the
command that fixes it; the traceback is printed only with ``--logging.debug``. The checks run
before anything slow (model, DHT, wandb), so a typo costs seconds, not minutes of set-up and a
60-line chained traceback. Problems that do not stop a neuron but make it useless (a validator
without a permit) are warnings, repeated by :class:`PermitWatch`.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from hivemind_utils.dht import BadPeerAddress, DHTError, DHTJoinError, check_peer_addresses
from template.chain.base import ChainError, Metagraph
from template.config import Config, ConfigError

if TYPE_CHECKING:
    from huggingface_hub import HfApi

logger = logging.getLogger(__name__)

PEER_CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a TCP connection to one ``--neuron.initial_peers`` address at start."""
PERMIT_WARNING_INTERVAL = 600.0
"""Seconds between two "no validator permit" warnings of a running validator."""
PLACEHOLDER = re.compile(r"<[A-Za-z0-9_]+>")
"""``<BOOTSTRAP_IP>``-style placeholders of deploy/ecosystem.config.js."""
_TOKEN_ENV = ("HF_TOKEN", "WANDB_API_KEY")
_IP_PROTOCOLS = ("ip4", "ip6", "dns", "dns4", "dns6")


class StartupError(ConfigError):
    """A set-up mistake seen at start (files, chain, network): ``flag: what is wrong; fix``.

    ``flag`` is the flag (or environment variable) to change; the message says how, naming
    the command (``btcli ...``, ``hf auth login``) when one fixes it.
    """


STARTUP_ERRORS: tuple[type[BaseException], ...] = (ConfigError, ChainError, DHTError)
"""What a neuron's set-up raises for an operator's mistake (never for a bug)."""


def one_line(err: BaseException) -> str:
    """The error as one line starting with the flag to fix."""
    text = " ".join(str(err).split())
    if isinstance(err, (DHTJoinError, BadPeerAddress)) and not text.startswith("--"):
        text = f"--neuron.initial_peers: {text}"
    return text


def report(err: BaseException, *, debug: bool, stream: TextIO | None = None) -> int:
    """Print ``err`` as one line (after its traceback with ``--logging.debug``); returns 2,
    the exit status of a usage error (what argparse and bittensor's CLIs use)."""
    stream = stream or sys.stderr
    if debug:
        traceback.print_exception(err, file=stream)
    print(one_line(err), file=stream, flush=True)
    return 2


def check_start(cfg: Config, *, role: str) -> None:
    """The checks that need no wallet or chain, cheapest first; raises :class:`StartupError`."""
    check_placeholders(cfg)
    check_round_fits(cfg)
    if role == "miner":
        from template.transport import check_port_free

        check_port_free(cfg.axon.ip, cfg.axon.port)  # rechecked when the Axon starts
    check_initial_peers(cfg.neuron.initial_peers)
    if cfg.store.kind == "hub":
        check_hub_write(cfg.store.repo_id)


# ---------------------------------------------------------------- round budget

MIN_BANDWIDTH_MBIT = 100.0
"""The slowest link a peer is documented to need (docs/miner.md): the timeouts must fit one
round of the configured model at this speed."""
BYTES_PER_VALUE = {"none": 4, "fp16": 2, "8bit": 1}


def round_seconds_bound(num_values: int, compression: str, *,
                        mbit: float = MIN_BANDWIDTH_MBIT) -> float:
    """Seconds one butterfly all-reduce of ``num_values`` needs at ``mbit`` Mbit/s in each
    direction: every peer sends and receives ``2(N-1)/N`` of the payload, bounded by 2x."""
    return 2 * num_values * BYTES_PER_VALUE[compression] / (mbit * 1e6 / 8)


def check_round_fits(cfg: Config) -> None:
    """``--averaging.allreduce_timeout`` must fit one round of the preset at
    :data:`MIN_BANDWIDTH_MBIT`; a local folder or Hub model is not sized here."""
    import torch
    from transformers import GPT2LMHeadModel

    from template.model import PRESETS, count_parameters, gpt2_config

    avg = cfg.averaging
    if cfg.model.preset not in PRESETS or avg.compression not in BYTES_PER_VALUE:
        return
    with torch.device("meta"):
        values = count_parameters(GPT2LMHeadModel(gpt2_config(cfg.model.preset)))
    need = round_seconds_bound(values, avg.compression)
    if need > avg.allreduce_timeout:
        fp16_fits = round_seconds_bound(values, "fp16") <= avg.allreduce_timeout
        cheaper = " or --averaging.compression fp16" if avg.compression == "none" and \
            fp16_fits else ""
        raise StartupError(
            "--averaging.allreduce_timeout",
            f"{avg.allreduce_timeout:g} s cannot fit one all-reduce of --model.preset "
            f"{cfg.model.preset} ({values / 1e6:.0f}M values, {avg.compression}) at "
            f"{MIN_BANDWIDTH_MBIT:g} Mbit/s, which needs about {need:.0f} s; pass "
            f"--averaging.allreduce_timeout {10 * math.ceil(need / 10 * 1.25):d}{cheaper}")


# ---------------------------------------------------------------- placeholders


def _values(cfg: Config) -> Iterator[tuple[str, str]]:
    import dataclasses

    for top in dataclasses.fields(cfg):
        value = getattr(cfg, top.name)
        if not dataclasses.is_dataclass(value):
            yield f"--{top.name}", str(value)
            continue
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            for one in item if isinstance(item, tuple) else (item,):
                yield f"--{top.name}.{f.name}", str(one)


def check_placeholders(cfg: Config, env: dict[str, str] | None = None) -> None:
    """No flag (nor ``HF_TOKEN``/``WANDB_API_KEY``) still holds a ``<PLACEHOLDER>``."""
    env = dict(os.environ) if env is None else env
    found = [*_values(cfg), *((name, env[name]) for name in _TOKEN_ENV if name in env)]
    for flag, value in found:
        match = PLACEHOLDER.search(value)
        if match:
            shown = value if flag.startswith("--") else "..."  # never echo a secret
            raise StartupError(flag, f"{shown!r} still holds the placeholder {match.group()} "
                               "(deploy/ecosystem.config.js); replace it with the real value")


# ---------------------------------------------------------------- initial peers


def _tcp_target(maddr: str) -> tuple[str, int] | None:
    parts = maddr.strip("/").split("/")
    pairs = dict(zip(parts[::2], parts[1::2], strict=False))
    host = next((pairs[p] for p in _IP_PROTOCOLS if p in pairs), None)
    if host is None or "tcp" not in pairs:
        return None
    return host, int(pairs["tcp"])


def check_initial_peers(peers: Sequence[str], *,
                        connect_timeout: float = PEER_CONNECT_TIMEOUT) -> None:
    """At least one initial peer accepts a TCP connection (the DHT join would otherwise retry
    ``--dht.join_retries`` times and end in a chained traceback). Addresses without TCP (QUIC,
    relays) are left to the DHT join. ``connect_timeout``: seconds per address."""
    if not peers:
        return
    try:
        addresses = check_peer_addresses(peers)
    except BadPeerAddress as err:
        raise StartupError("--neuron.initial_peers", str(err)) from err
    problems = []
    for maddr in addresses:
        target = _tcp_target(maddr)
        if target is None:
            return
        try:
            with socket.create_connection(target, timeout=connect_timeout):
                return
        except OSError as err:
            problems.append(f"{target[0]}:{target[1]} {err.strerror or err}")
    raise StartupError(
        "--neuron.initial_peers",
        f"no initial peer accepts connections ({'; '.join(problems)}); use the multiaddr a "
        "running peer logs (or scripts/inspect_dht.py prints), check it runs and firewalls")


# ---------------------------------------------------------------- Hugging Face Hub


def _token_source() -> str:
    return "HF_TOKEN" if os.environ.get("HF_TOKEN") else "the saved `hf auth login` token"


def check_hub_write(repo_id: str, *, api: HfApi | None = None) -> None:
    """A Hub token (``HF_TOKEN``, else the ``hf auth login`` / ``huggingface-cli login`` one)
    that can write to ``repo_id``, asked of the Hub's ``whoami`` once at start."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if constants.HF_HUB_OFFLINE:
        raise StartupError("--store.kind", "hub needs the Hub but HF_HUB_OFFLINE is set; unset "
                           "it or use --store.kind local")
    token = get_token()
    if not token:
        raise StartupError("--store.kind", f"hub needs a Hugging Face token with write access to "
                           f"{repo_id}: set HF_TOKEN or run `hf auth login` "
                           "(`huggingface-cli login`)")
    api = api or HfApi()
    try:
        info = api.whoami(token=token)
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status == 401:
            raise StartupError("--store.kind", f"hub: the Hub rejects {_token_source()} (401); "
                               "make a write token at https://huggingface.co/settings/tokens and "
                               "set HF_TOKEN or run `hf auth login`") from err
        raise StartupError("--store.kind", f"hub: whoami on {api.endpoint} failed ({status}: "
                           f"{err}); retry later or use --store.kind local") from err
    except (OSError, httpx2.TransportError) as err:
        raise StartupError("--store.kind", f"hub: cannot reach {api.endpoint} ("
                           f"{type(err).__name__}: {err}); check the network (HF_ENDPOINT) or "
                           "use --store.kind local") from err
    problem = write_problem(info, repo_id)
    if problem:
        raise StartupError("--store.repo_id", f"{problem}; use a token that can write there "
                           "(HF_TOKEN or `hf auth login`) or another --store.repo_id")


def write_problem(whoami: dict[str, Any], repo_id: str) -> str | None:
    """Why the ``whoami`` answer cannot push to ``repo_id`` (``None``: it can, or the answer
    has a shape this check does not know, which the first push then judges)."""
    namespace = repo_id.split("/")[0]
    user = str(whoami.get("name", ""))
    orgs = {str(o.get("name")): str(o.get("roleInOrg", "")) for o in whoami.get("orgs", [])}
    token = whoami.get("auth", {}).get("accessToken", {})
    role = token.get("role")
    who = f"the token of {user!r}" if user else "the token"
    if namespace != user and namespace not in orgs:
        return f"{who} cannot create or write repos under {namespace!r} (not its user or orgs)"
    if namespace in orgs and orgs[namespace] == "read":
        return f"{who} has only read access in the org {namespace!r}"
    if role == "read":
        return f"{who} is read-only"
    if role == "fineGrained":
        for scope in token.get("fineGrained", {}).get("scoped", []):
            name = scope.get("entity", {}).get("name")
            if name in (namespace, repo_id) and "repo.write" in scope.get("permissions", []):
                return None
        return f"{who} is fine-grained without repo.write on {namespace!r} or {repo_id!r}"
    return None


# ---------------------------------------------------------------- validator permit


def permit_problem(graph: Metagraph, uid: int, *, netuid: int, wallet_name: str,
                   hotkey_name: str, local_devnet: bool = False) -> str | None:
    """Why the validator ``uid`` is useless (no validator permit), as a warning line."""
    neuron = graph.neuron(uid)
    if neuron is None or neuron.validator_permit:
        return None
    fix = (f"`python scripts/create_wallets.py --names {wallet_name} --stake {wallet_name}=1000`"
           if local_devnet else f"`btcli stake add --netuid {netuid} --wallet.name "
           f"{wallet_name} --wallet.hotkey {hotkey_name}`")
    return (f"uid {uid} has no validator permit (stake {neuron.stake:g}) on netuid {netuid}: the "
            f"chain ignores its weights and miners refuse its rounds; stake to its hotkey: {fix}")


class PermitWatch:
    """Warns at start, then every ``interval`` seconds, while the validator has no permit."""

    def __init__(self, cfg: Config, *, interval: float = PERMIT_WARNING_INTERVAL,
                 clock: Any = time.monotonic):
        self.cfg = cfg
        self.interval = interval
        self._clock = clock
        self._next = float("-inf")

    def check(self, graph: Metagraph, uid: int | None) -> str | None:
        """The warning if one is due now (it is logged), else ``None``."""
        if uid is None or self._clock() < self._next:
            return None
        problem = permit_problem(graph, uid, netuid=self.cfg.netuid,
                                 wallet_name=self.cfg.wallet.name,
                                 hotkey_name=self.cfg.wallet.hotkey,
                                 local_devnet=self.cfg.subtensor.is_local_devnet)
        if problem is None:
            self._next = float("-inf")  # a lost permit is reported at once
            return None
        self._next = self._clock() + self.interval
        logger.warning(problem)
        return problem
