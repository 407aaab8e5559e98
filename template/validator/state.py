"""The validator's persisted state: moving averages, last scores, epochs, weight-setting block.

One JSON file, rewritten atomically after every change that matters (write a temp file in the
same folder, fsync, ``os.replace``, fsync the folder): a validator killed at any instant restarts
with either the previous or the new state, never a torn file. What it holds:

- ``ema``: the per-uid moving average of epoch scores (what the weights are made from), and
  ``hotkeys``: the hotkey each uid had when it was scored. A uid whose hotkey changed
  (deregistered, slot reused) starts again from 0 (:func:`forget_replaced`).
- ``last_scores``: the latest epoch score of each uid (logged; useful after a restart).
- ``last_epoch``: the last epoch folded into ``ema`` (never scored twice, never skipped back).
- ``current``: the :class:`~template.validator.epoch.EpochRecord` being collected, so Train
  results verified before a restart still count.
- ``last_weights_block``: when weights were last set (the chain's rate limit is respected
  across restarts).

A file that cannot be read (hand-edited, from another version) is moved aside to
``<name>.corrupt-<time>`` with a warning and the validator starts fresh: losing scores is
better than refusing to validate.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from template.checkpoints.base import fsync_path
from template.validator.epoch import EpochRecord

logger = logging.getLogger(__name__)

STATE_VERSION = 1


HISTORY_EPOCHS = 100


@dataclass
class ValidatorState:
    ema: dict[int, float] = field(default_factory=dict)
    hotkeys: dict[int, str] = field(default_factory=dict)
    last_scores: dict[int, float] = field(default_factory=dict)
    components: dict[int, dict[str, float]] = field(default_factory=dict)
    """Moving averages of each score component per uid (gradient, steps, bandwidth)."""
    history: dict[int, dict[int, float]] = field(default_factory=dict)
    """Round score per uid of the last ``HISTORY_EPOCHS`` scored epochs (epoch -> uid -> score)."""
    last_epoch: int = -1
    current: EpochRecord | None = None
    last_weights_block: int = -1
    rounds: dict[str, int] = field(default_factory=dict)
    """Counters: ``train``, ``allreduce``, ``allreduce_failed``, ``weights``."""
    references: dict[int, list[float]] = field(default_factory=dict)
    """Per recent epoch, the fingerprint its round's members reported (the judged reference):
    after a restart the validator still loads only a checkpoint in line with it."""

    def remember(self, epoch: int, scores: Mapping[int, float]) -> None:
        """Keep this epoch's round scores (the newest ``HISTORY_EPOCHS`` epochs)."""
        self.history[epoch] = dict(scores)
        for old in sorted(self.history)[:-HISTORY_EPOCHS]:
            del self.history[old]

    def count(self, name: str) -> None:
        self.rounds[name] = self.rounds.get(name, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "ema": {str(u): v for u, v in self.ema.items()},
            "hotkeys": {str(u): h for u, h in self.hotkeys.items()},
            "last_scores": {str(u): v for u, v in self.last_scores.items()},
            "components": {str(u): dict(c) for u, c in self.components.items()},
            "history": {str(e): {str(u): v for u, v in row.items()}
                        for e, row in self.history.items()},
            "last_epoch": self.last_epoch,
            "current": None if self.current is None else self.current.to_json(),
            "last_weights_block": self.last_weights_block,
            "rounds": dict(self.rounds),
            "references": {str(e): list(fp) for e, fp in self.references.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ValidatorState:
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"state version {data.get('version')!r} != {STATE_VERSION}")
        current = data.get("current")
        return cls(
            ema={int(u): float(v) for u, v in data["ema"].items()},
            hotkeys={int(u): str(h) for u, h in data["hotkeys"].items()},
            last_scores={int(u): float(v) for u, v in data["last_scores"].items()},
            components={int(u): {str(k): float(v) for k, v in c.items()}
                        for u, c in data.get("components", {}).items()},
            history={int(e): {int(u): float(v) for u, v in row.items()}
                     for e, row in data.get("history", {}).items()},
            last_epoch=int(data["last_epoch"]),
            current=None if current is None else EpochRecord.from_json(current),
            last_weights_block=int(data["last_weights_block"]),
            rounds={str(k): int(v) for k, v in data.get("rounds", {}).items()},
            references={int(e): [float(x) for x in fp]
                        for e, fp in data.get("references", {}).items()},
        )


def save_state(state: ValidatorState, path: str | os.PathLike[str]) -> None:
    """Write ``state`` to ``path`` atomically (see the module docstring)."""
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    payload = json.dumps(state.to_json(), sort_keys=True, allow_nan=False)
    with open(tmp, "w") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    fsync_path(target.parent)  # make the rename itself durable


def load_state(path: str | os.PathLike[str]) -> ValidatorState:
    """The state saved at ``path``; a fresh state when there is none or it is unreadable."""
    target = Path(path).expanduser()
    if not target.is_file():
        return ValidatorState()
    try:
        return ValidatorState.from_json(json.loads(target.read_text()))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        aside = target.with_name(f"{target.name}.corrupt-{int(time.time())}")
        os.replace(target, aside)
        logger.warning("validator state %s unreadable (%s); moved to %s, starting fresh",
                       target, err, aside)
        return ValidatorState()


def forget_replaced(state: ValidatorState, hotkeys: Mapping[int, str]) -> list[int]:
    """Drop the scores of uids whose hotkey changed or that left the subnet; returns them.

    ``hotkeys`` is the current metagraph's ``{uid: hotkey}``. A new hotkey on a reused uid
    must not inherit its predecessor's reputation.
    """
    gone = [uid for uid, hotkey in state.hotkeys.items() if hotkeys.get(uid) != hotkey]
    for uid in gone:
        state.ema.pop(uid, None)
        state.last_scores.pop(uid, None)
        state.hotkeys.pop(uid, None)
    return gone
