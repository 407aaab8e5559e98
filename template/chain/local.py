"""`LocalChain`: the embedded devnet chain, one SQLite file shared by every local process.

Miners, validators, the inspector and the swarm launcher open the same file; SQLite in WAL
mode lets them read concurrently, and every write runs in a ``BEGIN IMMEDIATE`` transaction
(one writer at a time, readers never blocked; a busy writer waits up to ``busy_timeout``).
Each process (and each fork) opens its own connection.

Rules of this chain (see docs/chain.md):
- Blocks come from the clock: ``block = floor((now - genesis) / block_time)``. The genesis
  time, ``block_time`` and ``weights_rate_limit`` are written once when the file is created;
  opening it with different values is an error naming the flag.
- Registration gives the next free uid (0, 1, ...); registering again returns the same uid.
  A full subnet (``max_uids``) refuses new hotkeys with :class:`ChainError` (no pruning).
- Stake is set by :meth:`LocalChain.add_stake` (devnet faucet). Validator permit: stake
  ``>= validator_min_stake`` and among the ``max_validators`` largest stakes (ties by uid).
- Weights: only permit holders; uids must be registered, weights finite, >= 0, not all 0;
  stored normalised to sum 1; at most one update per ``weights_rate_limit`` blocks.
- Commitments: one per hotkey, replaced on re-commit, with the hotkey's sr25519 signature
  over ``localchain-commit:{netuid}:{hotkey}:{data}``; checked again on every read.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from template.chain.base import Chain, ChainError, ChainResult, Commitment, Metagraph, NeuronInfo
from template.chain.consensus import incentive

if TYPE_CHECKING:
    from bittensor_wallet import Wallet

logger = logging.getLogger(__name__)

MAX_COMMITMENT_LEN = 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS neurons (
    netuid INTEGER NOT NULL, uid INTEGER NOT NULL, hotkey TEXT NOT NULL, coldkey TEXT NOT NULL,
    stake REAL NOT NULL DEFAULT 0, ip TEXT NOT NULL DEFAULT '0.0.0.0',
    port INTEGER NOT NULL DEFAULT 0, registered_block INTEGER NOT NULL,
    PRIMARY KEY (netuid, uid), UNIQUE (netuid, hotkey));
CREATE TABLE IF NOT EXISTS weights (
    netuid INTEGER NOT NULL, validator_uid INTEGER NOT NULL, uid INTEGER NOT NULL,
    weight REAL NOT NULL, block INTEGER NOT NULL,
    PRIMARY KEY (netuid, validator_uid, uid));
CREATE TABLE IF NOT EXISTS weight_updates (
    netuid INTEGER NOT NULL, validator_uid INTEGER NOT NULL, block INTEGER NOT NULL,
    PRIMARY KEY (netuid, validator_uid));
CREATE TABLE IF NOT EXISTS commitments (
    netuid INTEGER NOT NULL, uid INTEGER NOT NULL, hotkey TEXT NOT NULL, data TEXT NOT NULL,
    block INTEGER NOT NULL, signature TEXT NOT NULL,
    PRIMARY KEY (netuid, uid));
"""


def commitment_message(netuid: int, hotkey: str, data: str) -> str:
    """What a hotkey signs to commit ``data`` on the devnet (netuid-bound against replay)."""
    return f"localchain-commit:{netuid}:{hotkey}:{data}"


class LocalChain(Chain):
    """The devnet chain in one SQLite file (see the module docstring for its rules)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        netuid: int = 1,
        block_time: float = 1.0,
        weights_rate_limit: int = 10,
        max_uids: int = 256,
        max_validators: int = 64,
        validator_min_stake: float = 1.0,
        busy_timeout: float = 30.0,
    ):
        """``busy_timeout``: seconds a write waits for another process's transaction; raise
        it if writes fail with "database is locked" under many local processes."""
        if block_time <= 0:
            raise ValueError("--localchain.block_time must be > 0")
        self.path = Path(path).expanduser()
        self.netuid = netuid
        self.max_uids = max_uids
        self.max_validators = max_validators
        self.validator_min_stake = validator_min_stake
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn_pid: int | None = None
        self._connection: sqlite3.Connection | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._write() as db:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
            for key, value in (("genesis", repr(time.time())), ("block_time", repr(block_time)),
                               ("weights_rate_limit", str(weights_rate_limit))):
                db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        self.genesis = float(meta["genesis"])
        self.block_time = float(meta["block_time"])
        self.weights_rate_limit = int(meta["weights_rate_limit"])
        for flag, mine, stored in (
            ("--localchain.block_time", block_time, self.block_time),
            ("--localchain.weights_rate_limit", weights_rate_limit, self.weights_rate_limit),
        ):
            if not math.isclose(mine, stored):
                raise ChainError(f"{flag}: {self.path} was created with {stored}, not {mine}; "
                                 "use the same value in every process or a new file")

    @classmethod
    def open_existing(cls, path: str | os.PathLike[str], *, netuid: int = 1) -> LocalChain:
        """The devnet chain in ``path`` with the settings it was created with, for readers
        (the DHT inspector) that cannot know the launcher's ``--localchain.*`` values.

        Raises :class:`ChainError` naming ``--localchain.path`` when there is no chain there
        (opening a fresh file would show an empty subnet instead of the swarm's).
        """
        file = Path(path).expanduser()
        if not file.is_file():
            raise ChainError(f"--localchain.path: no devnet chain at {file} (a local swarm's "
                             "is WORKDIR/chain.sqlite)")
        try:
            with sqlite3.connect(f"file:{file}?mode=ro", uri=True) as db:
                meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            block_time, rate_limit = float(meta["block_time"]), int(meta["weights_rate_limit"])
        except (sqlite3.Error, KeyError, ValueError) as err:
            raise ChainError(f"--localchain.path: {file} is not a devnet chain ({err})") from err
        return cls(file, netuid=netuid, block_time=block_time, weights_rate_limit=rate_limit)

    # ------------------------------------------------------------ connections

    def _conn(self) -> sqlite3.Connection:
        if self._connection is None or self._conn_pid != os.getpid():
            # A forked child must not reuse its parent's connection: open a fresh one.
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._connection, self._conn_pid = conn, os.getpid()
        return self._connection

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._conn()
            db.execute("BEGIN")  # one consistent snapshot for multi-statement reads
            try:
                yield db
            finally:
                db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if self._connection is not None and self._conn_pid == os.getpid():
                self._connection.close()
            self._connection = None

    # ------------------------------------------------------------ reads

    def block(self) -> int:
        return int((time.time() - self.genesis) // self.block_time)

    def metagraph(self) -> Metagraph:
        with self._read() as db:
            rows = db.execute(
                "SELECT uid, hotkey, coldkey, stake, ip, port, registered_block FROM neurons "
                "WHERE netuid = ? ORDER BY uid", (self.netuid,)).fetchall()
        permitted = self._permits({uid: stake for uid, _, _, stake, *_ in rows})
        neurons = tuple(
            NeuronInfo(uid=uid, hotkey=hk, coldkey=ck, stake=stake,
                       validator_permit=uid in permitted, ip=ip, port=port,
                       registered_block=reg)
            for uid, hk, ck, stake, ip, port, reg in rows
        )
        return Metagraph(netuid=self.netuid, block=self.block(), neurons=neurons)

    def _permits(self, stakes: dict[int, float]) -> set[int]:
        eligible = sorted((-s, uid) for uid, s in stakes.items() if s >= self.validator_min_stake)
        return {uid for _, uid in eligible[: self.max_validators]}

    def weights(self) -> dict[int, dict[int, float]]:
        with self._read() as db:
            rows = db.execute("SELECT validator_uid, uid, weight FROM weights WHERE netuid = ?",
                              (self.netuid,)).fetchall()
        out: dict[int, dict[int, float]] = {}
        for v, u, w in rows:
            out.setdefault(v, {})[u] = w
        return out

    def commitments(self) -> dict[int, Commitment]:
        from bittensor_wallet import Keypair

        with self._read() as db:
            rows = db.execute(
                "SELECT c.uid, c.hotkey, c.data, c.block, c.signature FROM commitments c "
                "JOIN neurons n ON n.netuid = c.netuid AND n.uid = c.uid AND n.hotkey = c.hotkey "
                "WHERE c.netuid = ?", (self.netuid,)).fetchall()
        out = {}
        for uid, hotkey, data, block, signature in rows:
            message = commitment_message(self.netuid, hotkey, data)
            if Keypair(ss58_address=hotkey).verify(message, bytes.fromhex(signature)):
                out[uid] = Commitment(uid=uid, hotkey=hotkey, data=data, block=block)
            else:
                logger.warning("localchain: ignoring commitment of uid %d: bad signature", uid)
        return out

    def incentive(self, *, kappa: float = 0.5) -> dict[int, float]:
        """Who would earn what under the validators' current weights (see consensus.py)."""
        graph = self.metagraph()
        stakes = {n.uid: n.stake for n in graph.neurons}
        permits = {n.uid: n.validator_permit for n in graph.neurons}
        return incentive(self.weights(), stakes, permits, graph.uids, kappa=kappa)

    # ------------------------------------------------------------ writes

    def register(self, wallet: Wallet) -> int:
        return self.register_hotkey(wallet.hotkey.ss58_address, wallet.coldkeypub.ss58_address)

    def register_hotkey(self, hotkey: str, coldkey: str) -> int:
        """Register by address (the devnet needs no signature to register); returns the uid."""
        with self._write() as db:
            row = db.execute("SELECT uid FROM neurons WHERE netuid = ? AND hotkey = ?",
                             (self.netuid, hotkey)).fetchone()
            if row is not None:
                return int(row[0])
            (count,) = db.execute("SELECT COUNT(*) FROM neurons WHERE netuid = ?",
                                  (self.netuid,)).fetchone()
            if count >= self.max_uids:
                raise ChainError(f"netuid {self.netuid} is full ({self.max_uids} uids); "
                                 "use a new --localchain.path")
            db.execute("INSERT INTO neurons (netuid, uid, hotkey, coldkey, registered_block) "
                       "VALUES (?, ?, ?, ?, ?)", (self.netuid, count, hotkey, coldkey,
                                                  self.block()))
            return int(count)

    def add_stake(self, hotkey: str, amount: float) -> float:
        """Devnet faucet: add ``amount`` to a registered hotkey's stake; returns the new stake."""
        if not math.isfinite(amount) or amount < 0:
            raise ValueError(f"stake amount must be finite and >= 0, got {amount}")
        with self._write() as db:
            cur = db.execute("UPDATE neurons SET stake = stake + ? WHERE netuid = ? AND hotkey = ?",
                             (amount, self.netuid, hotkey))
            if cur.rowcount == 0:
                raise ChainError(f"hotkey {hotkey} is not registered on netuid {self.netuid}")
            (stake,) = db.execute("SELECT stake FROM neurons WHERE netuid = ? AND hotkey = ?",
                                  (self.netuid, hotkey)).fetchone()
        return float(stake)

    def serve_axon(self, wallet: Wallet, *, ip: str, port: int) -> ChainResult:
        if not 0 < port < 65536:
            return ChainResult(False, f"port {port} is not a TCP port")
        with self._write() as db:
            cur = db.execute("UPDATE neurons SET ip = ?, port = ? WHERE netuid = ? AND hotkey = ?",
                             (ip, port, self.netuid, wallet.hotkey.ss58_address))
        if cur.rowcount == 0:
            return ChainResult(False, "hotkey is not registered")
        return ChainResult(True, f"serving {ip}:{port}")

    def set_weights(self, wallet: Wallet, uids: Sequence[int], weights: Sequence[float],
                    ) -> ChainResult:
        problem = _weights_problem(uids, weights)
        if problem:
            return ChainResult(False, problem)
        graph = self.metagraph()
        me = graph.uid_of(wallet.hotkey.ss58_address)
        if me is None:
            return ChainResult(False, "hotkey is not registered")
        if not graph.validator_permits[graph.uids.index(me)]:
            return ChainResult(False, f"uid {me} has no validator permit (stake too low)")
        unknown = set(uids) - set(graph.uids)
        if unknown:
            return ChainResult(False, f"uids not registered: {sorted(unknown)[:8]}")
        total = float(sum(weights))
        with self._write() as db:
            block = self.block()
            last = db.execute("SELECT block FROM weight_updates WHERE netuid = ? AND "
                              "validator_uid = ?", (self.netuid, me)).fetchone()
            if last is not None and block - last[0] < self.weights_rate_limit:
                wait = self.weights_rate_limit - (block - last[0])
                return ChainResult(False, f"rate limited: wait {wait} blocks", wait)
            db.execute("DELETE FROM weights WHERE netuid = ? AND validator_uid = ?",
                       (self.netuid, me))
            db.executemany(
                "INSERT INTO weights (netuid, validator_uid, uid, weight, block) "
                "VALUES (?, ?, ?, ?, ?)",
                [(self.netuid, me, int(u), float(w) / total, block)
                 for u, w in zip(uids, weights, strict=True) if w > 0])
            db.execute("INSERT OR REPLACE INTO weight_updates (netuid, validator_uid, block) "
                       "VALUES (?, ?, ?)", (self.netuid, me, block))
        return ChainResult(True, f"weights set at block {block}")

    def commit(self, wallet: Wallet, data: str) -> ChainResult:
        if len(data) > MAX_COMMITMENT_LEN:
            return ChainResult(False, f"commitment longer than {MAX_COMMITMENT_LEN} characters")
        hotkey = wallet.hotkey.ss58_address
        signature = wallet.hotkey.sign(commitment_message(self.netuid, hotkey, data)).hex()
        return self.commit_signed(hotkey, data, signature)

    def commit_signed(self, hotkey: str, data: str, signature: str) -> ChainResult:
        """Store a commitment signed elsewhere (the signature is checked again on read)."""
        with self._write() as db:
            row = db.execute("SELECT uid FROM neurons WHERE netuid = ? AND hotkey = ?",
                             (self.netuid, hotkey)).fetchone()
            if row is None:
                return ChainResult(False, "hotkey is not registered")
            block = self.block()
            db.execute("INSERT OR REPLACE INTO commitments (netuid, uid, hotkey, data, block, "
                       "signature) VALUES (?, ?, ?, ?, ?, ?)",
                       (self.netuid, row[0], hotkey, data, block, signature))
        return ChainResult(True, f"committed at block {block}")


def _weights_problem(uids: Sequence[int], weights: Sequence[float]) -> str:
    if len(uids) != len(weights):
        return f"{len(uids)} uids but {len(weights)} weights"
    if not uids:
        return "no weights"
    if len(set(uids)) != len(uids):
        return "duplicate uids"
    if any(not math.isfinite(w) or w < 0 for w in weights):
        return "weights must be finite and >= 0"
    if sum(weights) <= 0:
        return "weights sum to 0"
    return ""
