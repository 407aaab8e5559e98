"""Reading the inspector's sources into the plain views of :mod:`template.swarm_snapshot`.

    chain_view = read_chain(chain)                 # metagraph, bindings, weights
    store_view = StoreReader(store).view()         # manifests (cached: tags are write-once)
    local_view = read_local([workdir])             # miners' epochs.jsonl, validators' state

Each call does I/O; everything the page and the CLI show is then computed from these views by
:func:`template.swarm_snapshot.build_snapshot`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from template.chain.base import Chain
from template.checkpoints.base import CheckpointError, CheckpointStore, epoch_of
from template.swarm_snapshot import ChainView, CheckpointInfo, LocalView, NeuronView, StoreView

logger = logging.getLogger(__name__)

SEARCH_DEPTH = 3
"""Folder levels below each ``--workdir`` searched (a devnet WORKDIR/miners/NAME is 2)."""


def read_chain(chain: Chain) -> ChainView:
    """The metagraph, the PeerID bindings and the weights, read now (raises ChainError)."""
    graph = chain.metagraph()
    return ChainView(
        netuid=graph.netuid, block=graph.block,
        neurons=tuple(NeuronView(uid=n.uid, hotkey=n.hotkey, stake=n.stake,
                                 validator_permit=n.validator_permit) for n in graph.neurons),
        bindings=chain.peer_bindings(), weights=chain.weights())


class StoreReader:
    """Reads checkpoint manifests once each (a tag never changes) and asks the store's
    ``read_eval`` again for checkpoints not evaluated yet.

    :param max_checkpoints: the newest this many checkpoints are shown (older ones are not
      read): each first read of a Hub store's manifest is one HTTP request.
    :param eval_retries: at most this many not-yet-evaluated checkpoints are asked again per
      :meth:`view` (newest first), so a store without evaluations costs a few reads per poll.
    """

    def __init__(self, store: CheckpointStore, *, max_checkpoints: int = 200,
                 eval_retries: int = 3):
        self.store, self.max_checkpoints, self.eval_retries = store, max_checkpoints, eval_retries
        self._manifests: dict[int, CheckpointInfo] = {}
        self._evals: dict[int, Mapping[str, Any]] = {}

    @property
    def _read_eval(self) -> Callable[[int], Mapping[str, Any] | None] | None:
        reader = getattr(self.store, "read_eval", None)
        return reader if callable(reader) else None

    def view(self) -> StoreView:
        """Raises CheckpointError when the store cannot be listed at all."""
        epochs = [e for e in (epoch_of(t) for t in self.store.tags()) if e is not None]
        epochs = sorted(epochs)[-self.max_checkpoints:]
        for epoch in epochs:
            if epoch not in self._manifests:
                info = self._manifest(epoch)
                if info is not None:
                    self._manifests[epoch] = info
        readable = [e for e in epochs if e in self._manifests]
        reader = self._read_eval
        if reader is not None:
            for epoch in [e for e in reversed(readable) if e not in self._evals][
                    :self.eval_retries]:
                found = self._evaluation(reader, epoch)
                if found is not None:
                    self._evals[epoch] = found
        infos = tuple(dataclasses.replace(self._manifests[e], evaluation=self._evals.get(e))
                      for e in readable)
        return StoreView(latest_epoch=readable[-1] if readable else None, checkpoints=infos,
                         evaluates=reader is not None)

    def _manifest(self, epoch: int) -> CheckpointInfo | None:
        try:
            meta = self.store.read_manifest(epoch).get("metadata", {})
        except CheckpointError as err:
            logger.debug("epoch-%d: no readable manifest (%s)", epoch, err)
            return None
        members = meta.get("participants")
        loss = meta.get("train_loss")
        return CheckpointInfo(
            epoch=epoch,
            participants=tuple(p for p in members if isinstance(p, str))
            if isinstance(members, list) else (),
            train_loss=float(loss) if isinstance(loss, (int, float))
            and not isinstance(loss, bool) else None,
            pusher=meta.get("pusher") if isinstance(meta.get("pusher"), str) else None)

    @staticmethod
    def _evaluation(reader: Callable[[int], Mapping[str, Any] | None],
                    epoch: int) -> Mapping[str, Any] | None:
        try:
            found = reader(epoch)
        except (CheckpointError, OSError, ValueError) as err:
            logger.debug("epoch-%d: no evaluation (%s)", epoch, err)
            return None
        return dict(found) if isinstance(found, Mapping) else None


def _find(roots: Sequence[Path], pattern: str) -> list[Path]:
    found: set[Path] = set()
    for root in roots:
        for depth in range(SEARCH_DEPTH + 1):
            found.update(root.glob("/".join(["*"] * depth + [pattern])))
    return sorted(found)


def read_local(roots: Sequence[str | Path]) -> LocalView:
    """Miners' ``epochs.jsonl`` lines and validators' ``validator-*.json`` states under
    ``roots`` (a line or file being written right now is skipped until the next read)."""
    if not roots:
        return LocalView()
    paths = [Path(r).expanduser() for r in roots]
    rows: list[Mapping[str, Any]] = []
    for path in _find(paths, "epochs.jsonl"):
        for line in _lines(path):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    states: dict[str, Mapping[str, Any]] = {}
    for path in _find(paths, "validator-*.json"):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(state, dict):
            states[path.stem.removeprefix("validator-")] = state
    return LocalView(miner_rows=tuple(rows), validator_states=states, searched=True)


def _lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return []
