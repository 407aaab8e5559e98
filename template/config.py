"""One typed, frozen configuration tree, built once from bittensor-style flags.

Every field of every section becomes a flag named ``--{section}.{field}`` (``--netuid`` for the
top-level fields), so the dataclasses below are the single source of truth for flags, types,
defaults and help. Defaults run the local devnet: a newcomer needs no flag at all.

    cfg = parse_config(["--wallet.name", "miner1", "--neuron.device", "cpu"])
    cfg.neuron.device  # "cpu"

Validation lives in each section's ``__post_init__`` and in :meth:`Config.__post_init__` for
combinations across sections; every error names the flag to change (:class:`ConfigError`).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field

LOCAL_NETWORK = "local-devnet"
BITTENSOR_NETWORKS = ("finney", "test", "archive", "local")
NEURON_DEFAULTS = {"subtensor.network": "finney"}
"""What neurons/miner.py and neurons/validator.py default to, as bittensor's neurons do: a
forgotten flag must not silently run against the devnet's SQLite file. The launcher and the
tests pass ``--subtensor.network local-devnet``; scripts default to the devnet."""
_MAX_POSITIONS = 1024  # GPT-2's context length (n_positions)
DEFAULT_HOME = "~/.distributed_training"  # paths keep their `~`; expand them where they are used
FINEWEB_REVISION = "af075bed828c75624d8a78f0783778e8dbf1dea0"  # see docs/production.md
_REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class ConfigError(ValueError):
    """A flag has a bad value or a bad combination with another flag; the message names it."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"{flag}: {message}")
        self.flag = flag


def _check(ok: bool, flag: str, message: str) -> None:
    if not ok:
        raise ConfigError(flag, message)


@dataclass(frozen=True)
class WalletConfig:
    name: str = "default"
    """Coldkey name of the wallet (``~/.bittensor/wallets/<name>``)."""
    hotkey: str = "default"
    """Hotkey name inside the wallet."""
    path: str = "~/.bittensor/wallets"
    """Folder that holds the wallets."""


@dataclass(frozen=True)
class SubtensorConfig:
    network: str = LOCAL_NETWORK
    """`local-devnet` (embedded SQLite chain), `finney`, `test`, `local`, or a ws:// endpoint."""
    chain_endpoint: str = ""
    """Explicit websocket endpoint; overrides the network's default endpoint."""

    def __post_init__(self) -> None:
        ok = (
            self.network in (LOCAL_NETWORK, *BITTENSOR_NETWORKS)
            or self.network.startswith(("ws://", "wss://"))
        )
        _check(
            ok,
            "--subtensor.network",
            f"unknown network {self.network!r}; use {LOCAL_NETWORK}, "
            f"{', '.join(BITTENSOR_NETWORKS)} or a ws:// endpoint",
        )

    @property
    def is_local_devnet(self) -> bool:
        return self.network == LOCAL_NETWORK


@dataclass(frozen=True)
class LocalChainConfig:
    path: str = f"{DEFAULT_HOME}/localchain.sqlite"
    """SQLite file of the embedded devnet chain, shared by every local process."""
    block_time: float = 1.0
    """Seconds per block of the devnet clock."""
    weights_rate_limit: int = 10
    """Blocks a validator waits between two `set_weights` on the devnet."""

    def __post_init__(self) -> None:
        _check(self.block_time > 0, "--localchain.block_time", "must be > 0 seconds")
        _check(self.weights_rate_limit >= 0, "--localchain.weights_rate_limit", "must be >= 0")


@dataclass(frozen=True)
class AxonConfig:
    port: int = 8091
    """Port the Axon (synapse server) listens on."""
    ip: str = "127.0.0.1"
    """Address the Axon binds to (0.0.0.0 to accept connections from other machines)."""
    external_ip: str = ""
    """Address announced on chain; empty means `--axon.ip`. Never looked up over the internet."""
    external_port: int = 0
    """Port announced on chain; 0 means `--axon.port`."""

    def __post_init__(self) -> None:
        _check(0 <= self.port < 65536, "--axon.port", "must be a TCP port (0..65535)")
        _check(0 <= self.external_port < 65536, "--axon.external_port", "must be 0..65535")


@dataclass(frozen=True)
class LoggingConfig:
    debug: bool = False
    """Log at DEBUG level."""
    trace: bool = False
    """Log at TRACE level (very verbose: every synapse)."""
    dir: str = f"{DEFAULT_HOME}/logs"
    """Folder for log files and wandb's offline runs."""


@dataclass(frozen=True)
class NeuronConfig:
    run_id: str = "fineweb-gpt2"
    """Name of the collaborative run; prefixes every DHT key and names the checkpoint repo."""
    device: str = "auto"
    """`auto` (cuda when available, else cpu), `cpu`, `cuda` or `cuda:N`."""
    precision: str = "auto"
    """`auto` (bf16 autocast on CUDA, fp32 on CPU), `fp32` or `bf16` (autocast; fp32 grads)."""
    initial_peers: tuple[str, ...] = ()
    """Multiaddrs of DHT peers to join (`/ip4/1.2.3.4/tcp/8009/p2p/Qm..`); none starts a swarm."""
    epochs: int = 0
    """Stop after this many epochs (0 = run until stopped)."""
    linger: float = 0.0
    """Miners: seconds to keep answering validators after the last epoch (`--neuron.epochs`),
    so a validator still judging the final round gets its report instead of a dead Axon."""
    seed: int = 0
    """Seed of the initial weights; every peer of a run must use the same one."""
    workdir: str = f"{DEFAULT_HOME}/work"
    """Folder for this neuron's state (scores, resumable progress)."""
    resync_every: int = 10
    """Every this many epochs a miner compares its weights with the canonical checkpoint and
    reloads it if the fingerprint drifted past half the tolerance (0 = never)."""
    adversary: str = ""
    """RED-TEAM ONLY, off by default: `lazy`, `random-gradient`, `copycat`, `no-show`,
    `slow-link`, `poisoner` or `poisoner-<flip|flip-recommit|noise|partial|null-space|weight>`
    (see docs/validator.md)."""
    stop_timeout: float = 20.0
    """Seconds a SIGTERM/SIGINT-ed neuron gets to stop cleanly (save state, leave the swarm)
    before it kills its child processes and exits 1; raise it if the log says the stop was
    forced, and keep a supervisor's kill timeout (pm2 `kill_timeout`, systemd
    `TimeoutStopSec`) above it."""

    def __post_init__(self) -> None:
        _check(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            "--neuron.device",
            f"unknown device {self.device!r}; use auto, cpu, cuda or cuda:N",
        )
        _check(
            self.precision in ("auto", "fp32", "bf16"),
            "--neuron.precision",
            f"unknown precision {self.precision!r}; use auto, fp32 or bf16",
        )
        _check(self.epochs >= 0, "--neuron.epochs", "must be >= 0 (0 = forever)")
        _check(self.linger >= 0, "--neuron.linger", "must be >= 0 seconds")
        _check(self.resync_every >= 0, "--neuron.resync_every", "must be >= 0 (0 = never)")
        _check(self.stop_timeout > 0, "--neuron.stop_timeout", "must be > 0 seconds")
        _check(
            self.adversary in ("", *ADVERSARIES),
            "--neuron.adversary",
            f"unknown mode {self.adversary!r}; use one of {', '.join(ADVERSARIES)}",
        )
        for peer in self.initial_peers:
            _check(
                peer.startswith("/") and "/p2p/" in peer,
                "--neuron.initial_peers",
                f"{peer!r} is not a multiaddr like /ip4/1.2.3.4/tcp/8009/p2p/Qm..",
            )


POISONS = ("flip", "flip-recommit", "noise", "partial", "null-space", "weight")
FORGERIES = ("noise", "scale", "stale")
CORRUPTIONS = ("scale", "noise", "partial", "cover")
ADVERSARIES = ("lazy", "random-gradient", "copycat", "no-show", "slow-link", "poisoner",
               *(f"poisoner-{p}" for p in POISONS), "forger", "forger-unsigned",
               "unbound", "vanisher", "padder", "reducer",
               *(f"reducer-{c}" for c in CORRUPTIONS))


@dataclass(frozen=True)
class ModelConfig:
    preset: str = "tiny"
    """`tiny`, `gpt2-124m`, `gpt2-250m`, `gpt2-500m`, `gpt2-1b`, or a Hub repo id."""
    revision: str = "main"
    """Hub revision when `--model.preset` is a repo id."""


@dataclass(frozen=True)
class DataConfig:
    source: str = "local"
    """`local` (FineWeb-schema parquet shards in `--data.dir`) or `fineweb` (Hub streaming)."""
    dir: str = f"{DEFAULT_HOME}/shards"
    """Folder of local parquet shards (built by `scripts/build_shards.py`)."""
    seq_len: int = 128
    """Tokens per sequence."""
    batch_size: int = 8
    """Sequences per micro-batch (one forward/backward)."""
    pages_per_epoch: int = 8
    """Pages (documents) each miner trains on per epoch."""
    revision: str = FINEWEB_REVISION
    """FineWeb revision on the Hub (`--data.source fineweb`): page i is row i of the files at
    this commit, so every peer of a run must use the same one (docs/production.md). A branch
    or tag such as `main` is allowed but moves: peers may then disagree on page i."""

    def __post_init__(self) -> None:
        _check(self.source in ("local", "fineweb"), "--data.source", "use local or fineweb")
        _check(bool(_REVISION_RE.match(self.revision)), "--data.revision",
               f"{self.revision!r} is not a Hub revision (a commit hash, tag or branch name "
               "of letters, digits, `.`, `_`, `-`)")
        _check(self.seq_len >= 8, "--data.seq_len", "must be >= 8 tokens")
        _check(self.batch_size >= 1, "--data.batch_size", "must be >= 1")
        _check(self.pages_per_epoch >= 1, "--data.pages_per_epoch", "must be >= 1")


@dataclass(frozen=True)
class StoreConfig:
    kind: str = "local"
    """`local` (directory store at `--store.dir`) or `hub` (Hugging Face Hub repo)."""
    dir: str = f"{DEFAULT_HOME}/checkpoints"
    """Folder of the local checkpoint store."""
    repo_id: str = ""
    """Hub repo (`org/name`) that receives one tag `epoch-N` per epoch; needs HF_TOKEN."""
    retries: int = 3
    """Upload attempts per checkpoint before giving up (exponential backoff between them)."""
    push_grace: float = 30.0
    """Seconds the other members of a round wait for the chosen pusher's checkpoint before
    pushing it themselves (the member ranked r waits r times this). Raise it when big pushes
    are duplicated; lower it when validators wait long for a checkpoint whose pusher died."""

    def __post_init__(self) -> None:
        _check(self.kind in ("local", "hub"), "--store.kind", "use local or hub")
        _check(self.retries >= 1, "--store.retries", "must be >= 1")
        _check(self.push_grace >= 0, "--store.push_grace", "must be >= 0 seconds")
        _check(
            self.kind != "hub" or "/" in self.repo_id,
            "--store.repo_id",
            "set an `org/name` Hub repo when --store.kind hub",
        )


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    warmup_epochs: int = 2
    """Epochs of linear warmup before the cosine decay."""
    total_epochs: int = 1000
    """Length of the cosine schedule, in epochs; the rate stays at `min_lr` afterwards."""
    min_lr: float = 1e-4
    """Learning rate at the end of the cosine decay."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay."""
    max_grad_norm: float = 1.0
    """Clip the averaged gradient to this L2 norm before the step (0 = no clipping)."""

    def __post_init__(self) -> None:
        _check(self.lr > 0, "--optim.lr", "must be > 0")
        _check(0 <= self.min_lr <= self.lr, "--optim.min_lr", "must be in [0, --optim.lr]")
        _check(self.warmup_epochs >= 0, "--optim.warmup_epochs", "must be >= 0")
        _check(self.total_epochs >= 1, "--optim.total_epochs", "must be >= 1")
        _check(self.max_grad_norm >= 0, "--optim.max_grad_norm", "must be >= 0")


@dataclass(frozen=True)
class DHTConfig:
    port: int = 0
    """TCP port of the DHT node (0 = any free port)."""
    ip: str = "127.0.0.1"
    """Address the DHT listens on and announces (`0.0.0.0` listens everywhere)."""
    announce_ip: str = ""
    """Public address to announce when it differs from `--dht.ip` (NAT, port forwarding)."""
    startup_timeout: float = 30.0
    """Seconds to wait for p2pd to start; raise it if startup fails with a timeout."""
    join_retries: int = 3
    """Attempts to reach `--neuron.initial_peers` before giving up with an error."""
    use_relay: bool = False
    """Let peers behind NAT reach this node through libp2p relays (internet swarms)."""

    def __post_init__(self) -> None:
        _check(0 <= self.port < 65536, "--dht.port", "must be a TCP port (0..65535)")
        _check(self.startup_timeout > 0, "--dht.startup_timeout", "must be > 0 seconds")
        _check(self.join_retries >= 1, "--dht.join_retries", "must be >= 1")


@dataclass(frozen=True)
class AveragingConfig:
    target_batch_size: int = 64
    """Samples (sequences) the whole swarm accumulates before an all-reduce round."""
    compression: str = "none"
    """Wire compression of gradient parts: `none`, `fp16` or `8bit` (uniform 8-bit)."""
    target_group_size: int = 32
    """Largest group of one butterfly all-reduce; bigger swarms split into several groups."""
    min_group_size: int = 2
    """Smallest group that may average; fewer peers wait for the next round."""
    matchmaking_time: float = 5.0
    """Seconds to gather a group; raise it if logs say 'could not find a group'."""
    allreduce_timeout: float = 60.0
    """Seconds one all-reduce may take; raise it for big models on slow links."""
    request_timeout: float = 3.0
    """Seconds to wait for one peer's reply during matchmaking before skipping it."""
    next_chunk_timeout: float = 10.0
    """Seconds a groupmate may stall between two parts before it is dropped from the round."""
    trigger: str = "swarm"
    """Who starts a round: `swarm` (miners read the DHT: target batch reached or every live
    peer done) or `validator` (miners wait for a validator's AllReduce synapse)."""
    round_wait: float = 120.0
    """Seconds a miner that finished its epoch waits for a round before checking whether the
    swarm moved on without it (it then reloads the latest checkpoint)."""
    straggler_wait: float = 30.0
    """Seconds a swarm whose peers all finished the epoch waits for a live peer still at an
    earlier epoch (stepping, pushing the checkpoint, loading state) before averaging without
    it. Raise it if a slow pusher keeps missing rounds; lower it if a stuck peer stalls rounds."""
    clip_factor: float = 1.0
    """> 0 (default 1): every reducer takes a centered clip of radius `clip_factor` x the
    median norm of the senders' parts, around their coordinate-wise median, with weights
    capped at 2x the median (hivemind_utils/robust.py): one sender moves the result by at most
    its weight share x that radius, whatever it sends. 0: hivemind's plain weighted mean. The
    clip is the exact mean only when every honest part lies inside the radius (sparse
    embedding-row parts of small batches do not), yet the devnet's honest loss after 3 epochs
    was the same with 1 as with 0 (10.050), and with a poisoner 10.07 against 10.70 unclipped
    (docs/benchmarks.md)."""

    def __post_init__(self) -> None:
        _check(self.target_batch_size >= 1, "--averaging.target_batch_size", "must be >= 1")
        _check(self.clip_factor >= 0, "--averaging.clip_factor", "must be >= 0")
        _check(
            self.compression in ("none", "fp16", "8bit"),
            "--averaging.compression",
            "use none, fp16 or 8bit",
        )
        _check(self.min_group_size >= 1, "--averaging.min_group_size", "must be >= 1")
        _check(
            self.target_group_size >= self.min_group_size,
            "--averaging.target_group_size",
            "must be >= --averaging.min_group_size",
        )
        _check(self.matchmaking_time > 0, "--averaging.matchmaking_time", "must be > 0")
        _check(self.allreduce_timeout > 0, "--averaging.allreduce_timeout", "must be > 0")
        _check(self.request_timeout > 0, "--averaging.request_timeout", "must be > 0")
        _check(self.straggler_wait >= 0, "--averaging.straggler_wait", "must be >= 0")
        _check(
            self.request_timeout < self.matchmaking_time,
            "--averaging.request_timeout",
            "must be < --averaging.matchmaking_time (hivemind matchmaking deadlocks otherwise)",
        )
        _check(self.next_chunk_timeout > 0, "--averaging.next_chunk_timeout", "must be > 0")
        _check(self.trigger in ("swarm", "validator"), "--averaging.trigger",
               "use swarm or validator")
        _check(self.round_wait > 0, "--averaging.round_wait", "must be > 0 seconds")


@dataclass(frozen=True)
class BlacklistConfig:
    force_validator_permit: bool = False
    """Refuse synapses from hotkeys without a validator permit."""
    round_callers: str = "auto"
    """Who may call AllReduce and Train: `staked` (a validator permit, or at least
    --blacklist.min_stake), `registered` (any registered hotkey), or `auto` (staked off the
    local devnet, registered on it). Symptom of `registered` in production: stakeless hotkeys
    start rounds and the validators' IsAlive probes time out."""
    min_stake: float = 1000.0
    """Stake, as the chain reports it (TAO on finney), that lets a hotkey without a validator
    permit call AllReduce and Train when callers must be staked."""
    max_pending_rounds: int = 4
    """AllReduce requests a miner holds at once (each waits up to the round timeout in its own
    thread); more are refused at once with 429. Raise it if more validators than this ask
    for the same round and some log "busy"."""

    def __post_init__(self) -> None:
        _check(self.round_callers in ("auto", "staked", "registered"),
               "--blacklist.round_callers", "use auto, staked or registered")
        _check(self.min_stake >= 0 and self.min_stake == self.min_stake,
               "--blacklist.min_stake", "must be a number >= 0")
        _check(self.max_pending_rounds >= 1, "--blacklist.max_pending_rounds", "must be >= 1")

    def rounds_need_stake(self, *, local_devnet: bool) -> bool:
        """Do AllReduce/Train callers need a permit or --blacklist.min_stake?"""
        if self.round_callers == "auto":
            return not local_devnet
        return self.round_callers == "staked"


@dataclass(frozen=True)
class ValidatorConfig:
    sample_size: int = 8
    """Miners queried per Train round."""
    check_batches: int = 2
    """Batches of each Train response recomputed and compared."""
    min_cosine: float = 0.98
    """Smallest sketch cosine that counts as agreement (honest bf16 vs fp32: 0.99998; lazy <= 0.93;
    docs/validator.md). Lower it only if honest miners' checks fail with cosines just below."""
    min_norm_ratio: float = 0.95
    """Smallest norm ratio (min/max of the two sketch norms) that counts as agreement (honest
    bf16 vs fp32: 0.999; a gradient scaled x2 or x0.5: 0.5)."""
    ema_alpha: float = 0.3
    """Weight of the newest round in the per-uid moving average of scores."""
    query_timeout: float = 30.0
    """Seconds a Train query may take before the miner scores zero for the round."""
    train_interval: float = 60.0
    """Seconds between two Train rounds (lower it to verify more often; costs validator compute)."""
    poll_interval: float = 5.0
    """Seconds between two reads of the swarm state (round trigger, weights)."""
    round_patience: float = 120.0
    """Seconds the swarm's sample count may stay flat below the target before a round starts
    anyway; raise it if rounds start while miners are still training."""
    allreduce_retries: int = 2
    """Extra attempts of an AllReduce round in which no miner completed."""
    checkpoint_timeout: float = 120.0
    """Seconds to wait for the canonical checkpoint `epoch-(e+1)` after a round; raise it if
    logs say "no canonical checkpoint" on a slow store."""
    fingerprint_tolerance: float = 0.0
    """Largest fingerprint distance from the reference that counts as the same model; 0 picks
    it from `--averaging.compression` (none 0.0001, fp16 0.006, 8bit 0.25: over 3x the measured
    honest spread, template/consensus.py CONSENSUS_TOLERANCE, docs/validator.md). Raise it if
    honest miners fail with "fingerprint distance"."""

    def __post_init__(self) -> None:
        _check(self.sample_size >= 1, "--validator.sample_size", "must be >= 1")
        _check(self.check_batches >= 1, "--validator.check_batches", "must be >= 1")
        _check(-1 <= self.min_cosine <= 1, "--validator.min_cosine", "must be in [-1, 1]")
        _check(0 <= self.min_norm_ratio <= 1, "--validator.min_norm_ratio", "must be in [0, 1]")
        _check(0 < self.ema_alpha <= 1, "--validator.ema_alpha", "must be in (0, 1]")
        _check(self.query_timeout > 0, "--validator.query_timeout", "must be > 0")
        _check(self.train_interval > 0, "--validator.train_interval", "must be > 0")
        _check(self.poll_interval > 0, "--validator.poll_interval", "must be > 0")
        _check(self.round_patience >= 0, "--validator.round_patience", "must be >= 0")
        _check(self.allreduce_retries >= 0, "--validator.allreduce_retries", "must be >= 0")
        _check(self.checkpoint_timeout > 0, "--validator.checkpoint_timeout", "must be > 0")
        _check(self.fingerprint_tolerance >= 0, "--validator.fingerprint_tolerance",
               "must be >= 0 (0 = by --averaging.compression)")


@dataclass(frozen=True)
class EvaluatorConfig:
    """The held-out evaluator (`neurons/evaluator.py`, docs/local-devnet.md)."""

    batches: int = 16
    """Held-out batches (`--data.batch_size` x `--data.seq_len` each) scored per checkpoint,
    a fresh seeded draw per epoch (all of them when the slice has fewer); the previous epoch is
    scored on the same ones. Raise it for a steadier curve; each batch costs two forwards."""
    threshold: float = 0.1
    """Nats: a checkpoint whose held-out loss exceeds the previous epoch's, on the same
    batches, by more than this is flagged (a WARNING "held-out loss rose", `flagged` in
    eval.json and the devnet summary). Raise it if healthy epochs get flagged; lower it to
    catch smaller regressions."""
    poll_interval: float = 5.0
    """Seconds between two looks at the checkpoint store for new `epoch-N` tags."""
    threads: int = 1
    """torch CPU threads of the evaluator: keep it low so it never slows the swarm's miners."""

    def __post_init__(self) -> None:
        _check(self.batches >= 1, "--evaluator.batches", "must be >= 1")
        _check(self.threshold >= 0, "--evaluator.threshold", "must be >= 0 nats")
        _check(self.poll_interval > 0, "--evaluator.poll_interval", "must be > 0 seconds")
        _check(self.threads >= 1, "--evaluator.threads", "must be >= 1")


@dataclass(frozen=True)
class WandbConfig:
    mode: str = "offline"
    """`offline` (local files, no network), `online` or `disabled`."""
    project: str = "distributed-training"
    """wandb project name."""
    entity: str = ""
    """wandb team or user (online mode)."""

    def __post_init__(self) -> None:
        _check(
            self.mode in ("offline", "online", "disabled"),
            "--wandb.mode",
            "use offline, online or disabled",
        )


@dataclass(frozen=True)
class Config:
    netuid: int = 1
    """Subnet id on the chain."""
    wallet: WalletConfig = field(default_factory=WalletConfig)
    subtensor: SubtensorConfig = field(default_factory=SubtensorConfig)
    localchain: LocalChainConfig = field(default_factory=LocalChainConfig)
    axon: AxonConfig = field(default_factory=AxonConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    neuron: NeuronConfig = field(default_factory=NeuronConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dht: DHTConfig = field(default_factory=DHTConfig)
    averaging: AveragingConfig = field(default_factory=AveragingConfig)
    blacklist: BlacklistConfig = field(default_factory=BlacklistConfig)
    validator: ValidatorConfig = field(default_factory=ValidatorConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)

    def __post_init__(self) -> None:
        _check(self.netuid >= 0, "--netuid", "must be >= 0")
        _check(
            not (self.subtensor.is_local_devnet and self.wandb.mode == "online"),
            "--wandb.mode",
            "online logging needs the real network; use offline with --subtensor.network "
            f"{LOCAL_NETWORK}",
        )
        _check(
            self.data.seq_len <= _MAX_POSITIONS,
            "--data.seq_len",
            f"must be <= {_MAX_POSITIONS} (GPT-2 context length)",
        )

    def replace(self, **sections: object) -> Config:
        """A copy with whole sections or top-level fields replaced (re-validated)."""
        return dataclasses.replace(self, **sections)


# ---------------------------------------------------------------- flag parsing


def _field_type(cls: type, name: str) -> object:
    return typing.get_type_hints(cls)[name]


def _add_flag(parser: argparse.ArgumentParser, flag: str, hint: object, default: object,
              doc: str) -> None:
    if hint is bool:
        parser.add_argument(flag, type=_parse_bool, nargs="?", const=True, default=default,
                            help=f"{doc} (default: {default})")
    elif typing.get_origin(hint) is tuple:
        parser.add_argument(flag, nargs="*", default=list(default), help=doc)
    else:
        assert hint in (int, float, str), f"unsupported config type {hint} for {flag}"
        parser.add_argument(flag, type=hint, default=default, help=f"{doc} (default: {default})")


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field) read from the source."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)):
            docs[node.target.id] = str(nxt.value.value)
    return docs


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are ONE line: the usage of ~80 flags would bury the reason."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists every flag)\n")


def build_parser(description: str = "", *,
                 defaults: typing.Mapping[str, object] | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one `--section.field` flag per config field; ``defaults``
    (``{"subtensor.network": "finney"}``) overrides field defaults for one entry point."""
    parser = _Parser(description=description)
    top_docs = _docs(Config)
    for top in dataclasses.fields(Config):
        hint = _field_type(Config, top.name)
        if dataclasses.is_dataclass(hint):
            section = typing.cast(type, hint)
            group = parser.add_argument_group(top.name)
            docs = _docs(section)
            for f in dataclasses.fields(section):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                default = (defaults or {}).get(f"{top.name}.{f.name}", default)
                _add_flag(group, f"--{top.name}.{f.name}", _field_type(section, f.name),  # type: ignore[arg-type]
                          default, docs.get(f.name, ""))
        else:
            _add_flag(parser, f"--{top.name}", hint, top.default, top_docs.get(top.name, ""))
    return parser


def config_from_namespace(ns: argparse.Namespace) -> Config:
    """Build the frozen config from parsed flags; raises :class:`ConfigError` on bad values."""
    values = vars(ns)
    kwargs: dict[str, object] = {}
    for top in dataclasses.fields(Config):
        hint = _field_type(Config, top.name)
        if dataclasses.is_dataclass(hint):
            section = typing.cast(type, hint)
            sub = {}
            for f in dataclasses.fields(section):
                value = values[f"{top.name}.{f.name}"]
                if isinstance(value, list):
                    value = tuple(value)
                sub[f.name] = value
            kwargs[top.name] = section(**sub)
        else:
            kwargs[top.name] = values[top.name]
    return Config(**kwargs)  # type: ignore[arg-type]


def parse_config(argv: Sequence[str] | None = None, *, description: str = "",
                 defaults: typing.Mapping[str, object] | None = None) -> Config:
    """Parse bittensor-style flags into a frozen :class:`Config`.

    A bad value exits like argparse does (status 2) with ONE line, ``--flag: reason``, on
    stderr, so an operator sees which flag to change and no traceback. ``defaults``: see
    :func:`build_parser`.
    """
    parser = build_parser(description, defaults=defaults)
    ns = parser.parse_args(argv)
    try:
        return config_from_namespace(ns)
    except ConfigError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits


def add_config_flags(parser: argparse.ArgumentParser, sections: Sequence[str]) -> None:
    """Add to a script's own ``parser`` the flags of only ``sections`` of the tree (names of
    :class:`Config` fields: ``"netuid"``, ``"subtensor"``, ...), same names, types, defaults
    and help as the neurons'; build the config with :func:`config_from_sections`."""
    names = {f.name for f in dataclasses.fields(Config)}
    unknown = set(sections) - names
    assert not unknown, f"not config sections: {sorted(unknown)}"
    for top in dataclasses.fields(Config):
        if top.name not in sections:
            continue
        hint = _field_type(Config, top.name)
        if not dataclasses.is_dataclass(hint):
            _add_flag(parser, f"--{top.name}", hint, top.default, _docs(Config).get(top.name, ""))
            continue
        section = typing.cast(type, hint)
        group = parser.add_argument_group(top.name)
        docs = _docs(section)
        for f in dataclasses.fields(section):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            _add_flag(group, f"--{top.name}.{f.name}", _field_type(section, f.name),  # type: ignore[arg-type]
                      default, docs.get(f.name, ""))


def config_from_sections(ns: argparse.Namespace, sections: Sequence[str]) -> Config:
    """The frozen config whose ``sections`` come from ``ns`` (a parser given
    :func:`add_config_flags`) and every other section keeps its defaults; raises
    :class:`ConfigError` naming the flag, as :func:`config_from_namespace` does."""
    values = vars(ns)
    kwargs: dict[str, object] = {}
    for top in dataclasses.fields(Config):
        if top.name not in sections:
            continue
        hint = _field_type(Config, top.name)
        if not dataclasses.is_dataclass(hint):
            kwargs[top.name] = values[top.name]
            continue
        section = typing.cast(type, hint)
        sub = {}
        for f in dataclasses.fields(section):
            value = values[f"{top.name}.{f.name}"]
            sub[f.name] = tuple(value) if isinstance(value, list) else value
        kwargs[top.name] = section(**sub)
    return Config(**kwargs)  # type: ignore[arg-type]
