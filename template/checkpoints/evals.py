"""A checkpoint's held-out evaluation: the ``eval.json`` schema, shared by every store.

The evaluator (``neurons/evaluator.py``, :mod:`template.evaluation`) writes one per checkpoint
after the push, through :meth:`CheckpointStore.write_eval`; readers get it back, schema-checked,
from :meth:`CheckpointStore.read_eval`. Where it lives: ``<root>/<tag>/eval.json`` in a
:class:`~template.checkpoints.local.LocalStore`; ``evals/<tag>.json`` on the ``main`` branch of a
:class:`~template.checkpoints.hub.HubStore` repo (a tag is write-once and points at the push's
commit, so nothing can join it later). Either way it is outside the manifest, which keeps
checkpoint verification unchanged. What comes back from a store is untrusted: a file that
breaks the schema is an :class:`~template.checkpoints.base.EvalError`, which ``read_eval`` turns
into None and one warning.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

from template.checkpoints.base import EVAL, EvalError, epoch_of_any

logger = logging.getLogger(__name__)

EVAL_VERSION = 1
MAX_EVAL_BYTES = 1 << 16
"""An ``eval.json`` is a few hundred bytes; a bigger file is refused unread."""


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


_EVAL_FIELDS: dict[str, Any] = {
    "version": lambda v: v == EVAL_VERSION and not isinstance(v, bool),
    "heldout_loss": lambda v: _number(v) and v >= 0,
    "perplexity": lambda v: _number(v) and v >= 1,
    "tokens": _count,
    "batches": lambda v: _count(v) and v >= 1,
    "flagged": lambda v: isinstance(v, bool),
    "threshold": lambda v: _number(v) and v >= 0,
    "seconds": lambda v: _number(v) and v >= 0,
}
_PAIRED_FIELDS: dict[str, Any] = {  # all null (nothing to compare with) or all set
    "previous_epoch": _count,
    "previous_loss": lambda v: _number(v) and v >= 0,
    "win_fraction": lambda v: _number(v) and 0 <= v <= 1,
    "delta": _number,
}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_eval(raw: bytes | str, *, epoch: int, tag: str | None = None) -> dict[str, Any]:
    """Parse and schema-check an ``eval.json``; raises :class:`EvalError` naming the field.

    Schema (version 1; every number finite)::

        {"version": 1, "epoch": N, "tag": "epoch-N" (or a candidate tag of N),
         "heldout_loss": mean nats per token >= 0, "perplexity": exp(heldout_loss) >= 1,
         "tokens": int, "batches": int >= 1,
         "previous_epoch": int < N | null, "previous_loss": float | null,
         "win_fraction": float in [0, 1] | null, "delta": float | null,
         "flagged": bool, "threshold": float >= 0, "seconds": float >= 0}

    The four comparison fields are null together (nothing to compare with) or set together.
    ``tag``, when given, must be the file's ``tag``. Unknown keys are kept (a newer writer may
    add some).
    """
    if len(raw) > MAX_EVAL_BYTES:
        raise EvalError(f"{EVAL} is {len(raw)} bytes, over {MAX_EVAL_BYTES}")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise EvalError(f"{EVAL} is not JSON: {err}") from err
    if not isinstance(data, dict):
        raise EvalError(f"{EVAL} must be a JSON object")
    if data.get("epoch") != epoch or isinstance(data.get("epoch"), bool):
        raise EvalError(f"{EVAL}: bad or missing 'epoch' (epoch {epoch} expected)")
    if not isinstance(data.get("tag"), str) or epoch_of_any(data["tag"]) != epoch:
        raise EvalError(f"{EVAL}: bad or missing 'tag' (a tag of epoch {epoch} expected)")
    if tag is not None and data["tag"] != tag:
        raise EvalError(f"{EVAL}: 'tag' {_short(data['tag'])} found under {tag}")
    for key, ok in {**_EVAL_FIELDS, **dict.fromkeys(_PAIRED_FIELDS, lambda v: True)}.items():
        if key not in data or not ok(data[key]):
            raise EvalError(f"{EVAL}: bad or missing {key!r}: {_short(data.get(key))}")
    paired = [data.get(key) is not None for key in _PAIRED_FIELDS]
    if any(paired) and not all(paired):
        raise EvalError(f"{EVAL}: {', '.join(_PAIRED_FIELDS)} must all be set or all null")
    for key, ok in _PAIRED_FIELDS.items():
        if data.get(key) is not None and not ok(data[key]):
            raise EvalError(f"{EVAL}: bad {key!r}: {_short(data[key])}")
    if data.get("previous_epoch") is not None and data["previous_epoch"] >= epoch:
        raise EvalError(f"{EVAL}: 'previous_epoch' {data['previous_epoch']} is not before {epoch}")
    return data


def dump_eval(data: Mapping[str, Any], *, epoch: int, tag: str) -> bytes:
    """``data`` as the bytes of an ``eval.json`` for ``tag``, checked with :func:`parse_eval`."""
    try:
        raw = json.dumps(dict(data), indent=1, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise EvalError(f"{EVAL} must be JSON (str keys, finite numbers): {err}") from err
    parse_eval(raw, epoch=epoch, tag=tag)
    return raw.encode()


def eval_or_none(raw: bytes | str | None, *, epoch: int, tag: str,
                 where: str) -> dict[str, Any] | None:
    """:func:`parse_eval`, or None (and a warning naming ``where``) for a malformed file;
    None for ``raw=None`` (no file)."""
    if raw is None:
        return None
    try:
        return parse_eval(raw, epoch=epoch, tag=tag)
    except EvalError as err:
        logger.warning("ignoring the evaluation in %s: %s", where, err)
        return None
