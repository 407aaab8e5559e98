"""The checkpoint store interface, its errors, and the on-disk format every store shares.

A checkpoint is one folder (a directory in :class:`~template.checkpoints.local.LocalStore`, a
tagged commit in :class:`~template.checkpoints.hub.HubStore`)::

    config.json            GPT-2 config (model.save_pretrained)
    model.safetensors      weights, tied LM head stored once (model.save_pretrained)
    tokenizer files        tokenizer.save_pretrained, when a tokenizer is given
    optimizer.pt           optional optimizer state_dict (torch.save; loaded weights_only)
    manifest.json          written last: sha256 and size of every other file, epoch,
                           parameter_hash, fingerprint, metadata, creation time

and, added later by the evaluator (``neurons/evaluator.py``), its held-out evaluation
``eval.json`` (:mod:`template.checkpoints.evals`). It is outside the manifest on purpose: the
manifest and the model card are fixed at push time (tags are write-once), so writing the
evaluation afterwards never breaks :func:`verify_files`; and an evaluation proves nothing
about the weights (anyone with write access can write one; re-run the evaluator to check).

The folder loads in stock ``transformers`` (``from_pretrained``), so a Hub tag ``epoch-N`` is
also a valid ``--model.preset org/name --model.revision epoch-N``.

Everything read back is untrusted (a Hub repo, a shared disk): :func:`read_checkpoint` checks
the manifest's schema, every listed file's size and sha256, that the weights parse and that they
hash to the manifest's ``parameter_hash``, recomputes everything else the manifest says
about the weights (``fingerprint`` within :data:`FINGERPRINT_MATCH`, ``fingerprint_seed``,
``fingerprint_dims``, ``num_parameters``), and loads the optimizer state with
``torch.load(weights_only=True)``. Any failure is a typed :class:`CheckpointError`.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import math
import os
import pickle
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from template.model import (
    FINGERPRINT_DIMS,
    FINGERPRINT_SEED,
    canonical_state,
    count_parameters,
    fingerprint,
    fingerprint_distance,
    parameter_hash,
)

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
OPTIMIZER = "optimizer.pt"
MODEL_CARD = "README.md"
"""The Hub shows a repo's README.md as its page: every checkpoint carries one (model_card)."""
EVAL = "eval.json"
"""A checkpoint's held-out evaluation, outside the manifest (:mod:`template.checkpoints.evals`)."""
FORMAT_VERSION = 1
_TAG = re.compile(r"^epoch-(0|[1-9][0-9]*)$")
_CANDIDATE = re.compile(r"^epoch-(0|[1-9][0-9]*)-([0-9a-f]{12})$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # flat file names, no paths
FINGERPRINT_MATCH = 1e-6
"""Largest :func:`~template.model.fingerprint_distance` between a manifest's ``fingerprint``
and the one recomputed from its weights (float rounding of the projection only)."""


# ------------------------------------------------------------------ errors


class CheckpointError(Exception):
    """A checkpoint cannot be stored or read; subclasses say why."""


class MissingCheckpointError(CheckpointError):
    """No checkpoint with this tag exists in the store."""


class ManifestError(CheckpointError):
    """``manifest.json`` is missing, not JSON, or lacks/garbles a field; or a push's metadata
    cannot be written into one."""


class CorruptCheckpointError(CheckpointError):
    """A file does not match the manifest (missing, wrong size or sha256) or does not parse.

    ``filename`` names the file; re-pull from another source or delete the checkpoint.
    """

    def __init__(self, filename: str, message: str):
        super().__init__(f"{filename}: {message}")
        self.filename = filename


class CheckpointConflictError(CheckpointError):
    """The tag already holds different weights (first writer wins; tags are never moved).

    A peer that loses the race can pull the existing checkpoint and compare fingerprints.
    """

    def __init__(self, tag: str, existing_hash: str, message: str = ""):
        super().__init__(
            message or f"{tag} already exists with parameter_hash {existing_hash[:16]}..; "
            "tags are never overwritten"
        )
        self.tag = tag
        self.existing_hash = existing_hash


class StoreAuthError(CheckpointError):
    """The remote store refused the credentials (HTTP 401/403); retrying cannot help."""


class StoreUnavailableError(CheckpointError):
    """The remote store kept failing (5xx, connection errors) after every retry."""


class EvalError(CheckpointError):
    """An ``eval.json`` that breaks the schema (:func:`template.checkpoints.evals.parse_eval`);
    the message names the field."""


# ------------------------------------------------------------------ tags


def tag_for(epoch: int) -> str:
    """The tag of an epoch's checkpoint: ``epoch-{N}``."""
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
    return f"epoch-{epoch}"


def epoch_of(tag: str) -> int | None:
    """The epoch of a tag ``epoch-N``, or ``None`` for any other name."""
    match = _TAG.match(tag)
    return int(match.group(1)) if match else None


def candidate_tag(epoch: int, parameter_hash: str) -> str:
    """The tag of a *candidate* checkpoint of ``epoch``: ``epoch-N-<first 12 hex of its hash>``.

    A round member whose weights disagree with what already holds ``epoch-N`` (a forged or
    conflicting push won the race) stores its own weights here instead; readers choose among
    ``epoch-N`` and its candidates by signature and fingerprint
    (:mod:`template.attestation`). Candidates never count as an epoch's tag in :meth:`tags`.
    """
    if not re.fullmatch(r"[0-9a-f]{64}", parameter_hash):
        raise ValueError(f"parameter_hash must be 64 hex digits, got {parameter_hash!r}")
    return f"{tag_for(epoch)}-{parameter_hash[:12]}"


def epoch_of_any(tag: str) -> int | None:
    """The epoch of ``epoch-N`` or of a candidate ``epoch-N-<hash>``; None for other names."""
    match = _TAG.match(tag) or _CANDIDATE.match(tag)
    return int(match.group(1)) if match else None


def sort_tags(names: list[str]) -> list[str]:
    """The ``epoch-N`` names among ``names``, by epoch (numeric, not string, order)."""
    tagged = [(epoch_of(n), n) for n in names]
    return [name for epoch, name in sorted((e, n) for e, n in tagged if e is not None)]


def tag_of(epoch: int, tag: str | None) -> str:
    """``tag`` checked to name ``epoch`` (``epoch-N`` or one of its candidates); default
    ``epoch-N``. Raises :class:`MissingCheckpointError` for a tag of another epoch."""
    if tag is None:
        return tag_for(epoch)
    if epoch_of_any(tag) != epoch:
        raise MissingCheckpointError(f"{tag!r} is not a checkpoint tag of epoch {epoch}")
    return tag


def candidates_of(names: list[str], epoch: int) -> list[str]:
    """The candidate tags of ``epoch`` among ``names``, sorted by name."""
    return sorted(n for n in names if _CANDIDATE.match(n) and epoch_of_any(n) == epoch)


# ------------------------------------------------------------------ the interface


@dataclass
class Checkpoint:
    """A verified checkpoint, as returned by :meth:`CheckpointStore.pull`."""

    epoch: int
    state_dict: dict[str, torch.Tensor]
    """CPU weights without the tied LM head; load with ``template.model.load_state_into``."""
    config: dict[str, Any]
    """The model's ``config.json``."""
    metadata: dict[str, Any]
    """Whatever the pusher passed as ``metadata`` (JSON values)."""
    manifest: dict[str, Any]
    directory: Path
    """Folder holding the verified files (tokenizer: ``AutoTokenizer.from_pretrained(dir)``)."""
    optimizer_state: dict[str, Any] | None = field(default=None)


class CheckpointStore(abc.ABC):
    """Where each epoch's canonical weights go, tagged ``epoch-N``.

    Tags are write-once: pushing a tag again with the same ``parameter_hash`` is a no-op that
    returns the tag; with other weights it raises :class:`CheckpointConflictError`. With
    ``candidate=True`` a push goes to :func:`candidate_tag` instead (same rules), so weights
    that lost the race for ``epoch-N`` to a conflicting push are still stored and readable.
    ``tag`` in :meth:`pull` / :meth:`read_manifest` selects such a candidate (default:
    ``epoch-N``).
    """

    @abc.abstractmethod
    def push(self, epoch: int, model: torch.nn.Module, tokenizer: Any,
             metadata: Mapping[str, Any], *,
             optimizer_state: Mapping[str, Any] | None = None,
             candidate: bool = False) -> str:
        """Store the checkpoint of ``epoch`` and return its tag. ``tokenizer`` may be None."""

    @abc.abstractmethod
    def refs(self) -> list[str]:
        """Every tag name in the store (epoch tags, candidates, anything else)."""

    @abc.abstractmethod
    def pull(self, epoch: int, *, tag: str | None = None) -> Checkpoint:
        """Fetch and verify a checkpoint; raises :class:`CheckpointError` subclasses."""

    @abc.abstractmethod
    def read_manifest(self, epoch: int, *, tag: str | None = None) -> dict[str, Any]:
        """The schema-checked manifest of ``epoch`` (weights not fetched nor verified)."""

    @abc.abstractmethod
    def write_eval(self, epoch: int, data: Mapping[str, Any], *, tag: str | None = None) -> None:
        """Store the held-out evaluation of a checkpoint, replacing an earlier one (schema:
        :func:`template.checkpoints.evals.parse_eval`). :class:`EvalError` if ``data`` breaks
        the schema, :class:`MissingCheckpointError` if the checkpoint does not exist."""

    @abc.abstractmethod
    def read_eval(self, epoch: int, *, tag: str | None = None) -> dict[str, Any] | None:
        """The checkpoint's schema-checked evaluation, or None when there is none or it is
        malformed (logged as a warning naming the field). Store failures raise."""

    def tags(self) -> list[str]:
        """All ``epoch-N`` tags, sorted by epoch (candidates excluded)."""
        return sort_tags(self.refs())

    def candidates(self, epoch: int) -> list[str]:
        """The candidate tags of ``epoch`` (see :func:`candidate_tag`), sorted by name."""
        return candidates_of(self.refs(), epoch)

    def latest_epoch(self) -> int | None:
        """The highest epoch whose checkpoint has a valid manifest, or ``None`` if none has.

        A newer ``epoch-N`` without a valid manifest (a stray folder or tag, a garbled
        manifest) is skipped with a warning naming it. Store failures (auth, unavailable) raise.
        """
        for tag in reversed(self.tags()):
            epoch = epoch_of(tag)
            assert epoch is not None  # tags() returns epoch-N names only
            try:
                self.read_manifest(epoch)
            except (ManifestError, CorruptCheckpointError, MissingCheckpointError) as err:
                logger.warning("skipping %s in %r: no valid manifest (%s)", tag, self, err)
                continue
            return epoch
        return None


# ------------------------------------------------------------------ writing


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries (so a rename into it survives a crash), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(directory: Path, epoch: int, model: torch.nn.Module, tokenizer: Any,
                     metadata: Mapping[str, Any], *,
                     optimizer_state: Mapping[str, Any] | None = None,
                     tag: str | None = None) -> dict[str, Any]:
    """Write a checkpoint's files into an existing empty ``directory``; return the manifest.

    Every file and the folder are fsynced, so a rename of the folder afterwards publishes a
    complete checkpoint even across a power loss.
    """
    try:
        metadata_json = json.loads(json.dumps(dict(metadata), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ManifestError(f"metadata must be JSON (str keys, finite numbers): {err}") from err
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    (directory / MODEL_CARD).write_text(
        model_card(epoch, metadata_json, tag=tag or tag_for(epoch),
                   num_parameters=count_parameters(model)))
    if optimizer_state is not None:
        torch.save(dict(optimizer_state), directory / OPTIMIZER)
    files = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file() or not _SAFE_NAME.match(path.name):
            raise CheckpointError(f"unexpected entry {path.name!r} written into the checkpoint")
        fsync_path(path)
        files[path.name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    manifest = {
        "format": FORMAT_VERSION,
        "epoch": epoch,
        "tag": tag or tag_for(epoch),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "parameter_hash": parameter_hash(model),
        "num_parameters": count_parameters(model),
        "fingerprint": fingerprint(model),
        "fingerprint_seed": FINGERPRINT_SEED,
        "fingerprint_dims": FINGERPRINT_DIMS,
        "files": files,
        "metadata": metadata_json,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    fsync_path(directory / MANIFEST)
    fsync_path(directory)
    return manifest


def _loss(metadata: Mapping[str, Any], key: str) -> str | None:
    value = metadata.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.4f}"
    return None


def model_card(epoch: int, metadata: Mapping[str, Any], *, tag: str,
               num_parameters: int) -> str:
    """The checkpoint's README.md: Hub front matter, then what these weights are.

    From ``metadata`` when the pusher passed them: ``run_id``, ``train_loss`` (the pusher's
    mean training loss over its batches of the epoch that led here), ``held_out_loss`` and
    ``participants``; rows without a value are left out.
    """
    run_id = metadata.get("run_id")
    participants = metadata.get("participants")
    rows = [("epoch", str(epoch)), ("tag", f"`{tag}`"),
            ("run id", f"`{run_id}`" if isinstance(run_id, str) else None),
            ("parameters", f"{num_parameters:,}"),
            ("training loss", _loss(metadata, "train_loss")),
            ("held-out loss", _loss(metadata, "held_out_loss")),
            ("miners in the round", str(len(participants))
             if isinstance(participants, list) else None)]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows if value is not None)
    note = ("\nThe training loss is the pushing miner's mean loss over its batches of the epoch "
            "before this step.\n" if _loss(metadata, "train_loss") else "")
    note += (f"\nHeld-out evaluation: the evaluator (`neurons/evaluator.py`) scores these weights "
             f"after the push on pages no miner is assigned, and writes `{EVAL}` (held-out "
             f"loss, perplexity, wins against the previous epoch, a `flagged` regression bit) "
             f"beside this card in a directory store, or `evals/{tag}.json` on this repo's "
             "`main` branch on the Hub. This card and the manifest are fixed at push time, "
             "so they cannot carry it.\n")
    return f"""---
library_name: transformers
pipeline_tag: text-generation
language:
- en
datasets:
- HuggingFaceFW/fineweb
tags:
- gpt2
- bittensor
- hivemind
- collaborative-training
---

# {run_id if isinstance(run_id, str) else "GPT-2"}: epoch {epoch}

A GPT-2 language model trained collaboratively on FineWeb (`HuggingFaceFW/fineweb`,
`sample-350BT`) by the miners of a Bittensor subnet: each trains on its own pages, and after
every epoch they average their gradients with hivemind's all-reduce, so all hold these weights.
This revision (`{tag}`) holds the weights after epoch {epoch}; `manifest.json` lists the
SHA-256 of every file, this card included.

| | |
|---|---|
{table}
{note}
```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("<this repo>", revision="{tag}")
tokenizer = AutoTokenizer.from_pretrained("<this repo>", revision="{tag}")
```
"""


# ------------------------------------------------------------------ reading


def parse_manifest(raw: bytes | str, *, epoch: int) -> dict[str, Any]:
    """Parse and schema-check a manifest; raises :class:`ManifestError` naming the field."""
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ManifestError(f"{MANIFEST} is not JSON: {err}") from err
    if not isinstance(manifest, dict):
        raise ManifestError(f"{MANIFEST} must be a JSON object")
    checks = {
        "format": lambda v: v == FORMAT_VERSION,
        "epoch": lambda v: v == epoch and not isinstance(v, bool),
        "parameter_hash": lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v),
        "fingerprint": lambda v: isinstance(v, list) and len(v) == FINGERPRINT_DIMS
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                for x in v),
        "files": lambda v: isinstance(v, dict) and WEIGHTS in v and CONFIG in v,
        "metadata": lambda v: isinstance(v, dict),
    }
    for key, ok in checks.items():
        if key not in manifest or not ok(manifest[key]):
            raise ManifestError(f"{MANIFEST}: bad or missing {key!r} (epoch {epoch} expected)")
    optional = {  # written by write_checkpoint; checked when present (recomputed on read)
        "fingerprint_seed": lambda v: v == FINGERPRINT_SEED and not isinstance(v, bool),
        "fingerprint_dims": lambda v: v == FINGERPRINT_DIMS and not isinstance(v, bool),
        "num_parameters": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    }
    for key, ok in optional.items():
        if key in manifest and not ok(manifest[key]):
            raise ManifestError(f"{MANIFEST}: bad {key!r} {manifest[key]!r}")
    for name, entry in manifest["files"].items():
        if (not _SAFE_NAME.match(name) or name == MANIFEST or not isinstance(entry, dict)
                or not isinstance(entry.get("sha256"), str)
                or not isinstance(entry.get("size"), int) or entry["size"] < 0):
            raise ManifestError(f"{MANIFEST}: bad file entry {name!r}")
    return manifest


def verify_files(directory: Path, manifest: Mapping[str, Any]) -> None:
    """Check every listed file's size and sha256; :class:`CorruptCheckpointError` names it."""
    for name, entry in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            raise CorruptCheckpointError(name, "listed in the manifest but missing")
        if path.stat().st_size != entry["size"]:
            raise CorruptCheckpointError(
                name, f"size {path.stat().st_size} != manifest {entry['size']}")
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise CorruptCheckpointError(
                name, f"sha256 {actual[:16]}.. != manifest {entry['sha256'][:16]}..")


def verify_weight_claims(state: Mapping[str, torch.Tensor], manifest: Mapping[str, Any]) -> None:
    """Recompute what the manifest says about the weights; :class:`ManifestError` on a lie.

    ``parse_manifest`` already pinned ``fingerprint_seed``/``fingerprint_dims`` to ours and the
    fingerprint to ``FINGERPRINT_DIMS`` finite numbers; here the numbers must match the weights.
    """
    if "num_parameters" in manifest:
        actual = sum(t.numel() for t in canonical_state(state).values())
        if actual != manifest["num_parameters"]:
            raise ManifestError(f"{MANIFEST}: num_parameters {manifest['num_parameters']} != "
                                f"{actual} counted in {WEIGHTS}")
    try:
        recomputed = fingerprint(state, seed=FINGERPRINT_SEED, dims=FINGERPRINT_DIMS)
        distance = fingerprint_distance(manifest["fingerprint"], recomputed)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ManifestError(f"{MANIFEST}: fingerprint cannot be checked: {err}") from err
    if not distance <= FINGERPRINT_MATCH:  # also catches NaN
        raise ManifestError(f"{MANIFEST}: fingerprint is {distance:.3g} from the one recomputed "
                            f"from {WEIGHTS} (at most {FINGERPRINT_MATCH:g} allowed)")


def read_checkpoint(directory: Path, epoch: int) -> Checkpoint:
    """Verify and load the checkpoint in ``directory`` (see the module docstring)."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise ManifestError(f"{MANIFEST} missing in {directory}")
    manifest = parse_manifest(manifest_path.read_bytes(), epoch=epoch)
    verify_files(directory, manifest)
    try:
        state = load_file(directory / WEIGHTS, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CorruptCheckpointError(WEIGHTS, f"does not parse as safetensors: {err}") from err
    if parameter_hash(state) != manifest["parameter_hash"]:
        raise CorruptCheckpointError(WEIGHTS, "weights do not hash to the manifest's "
                                              "parameter_hash")
    verify_weight_claims(state, manifest)
    try:
        config = json.loads((directory / CONFIG).read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CorruptCheckpointError(CONFIG, f"is not JSON: {err}") from err
    if not isinstance(config, dict):
        raise CorruptCheckpointError(CONFIG, "must be a JSON object")
    optimizer_state = None
    if OPTIMIZER in manifest["files"]:
        try:
            optimizer_state = torch.load(directory / OPTIMIZER, map_location="cpu",
                                         weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
            raise CorruptCheckpointError(OPTIMIZER, f"refused by torch.load: {err}") from err
        if not isinstance(optimizer_state, dict):
            raise CorruptCheckpointError(OPTIMIZER, "is not a state dict")
    return Checkpoint(epoch=epoch, state_dict=state, config=config,
                      metadata=manifest["metadata"], manifest=manifest, directory=directory,
                      optimizer_state=optimizer_state)
