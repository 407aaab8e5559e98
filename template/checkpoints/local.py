"""A checkpoint store in a local directory: ``<root>/epoch-N/`` per checkpoint.

Atomic publication: a push writes into ``<root>/.tmp-epoch-N-XXXX/``, fsyncs every file and
the folder, then ``os.rename``s it to ``<root>/epoch-N``. A rename within one filesystem is
atomic, so readers see either no ``epoch-N`` or a complete one; a crash mid-push leaves only a
``.tmp-*`` folder, which :meth:`LocalStore.tags` ignores and which is deleted once older than
``stale_after`` seconds (the next store opened on the same root does it).

The evaluator's ``eval.json`` goes into the checkpoint's folder, ``<root>/epoch-N/eval.json``,
written to a temp file and renamed over the old one (readers see the old or the new file).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from template.checkpoints.base import (
    EVAL,
    MANIFEST,
    Checkpoint,
    CheckpointConflictError,
    CheckpointError,
    CheckpointStore,
    ManifestError,
    MissingCheckpointError,
    candidate_tag,
    fsync_path,
    parse_manifest,
    read_checkpoint,
    tag_of,
    write_checkpoint,
)
from template.checkpoints.evals import dump_eval, eval_or_none
from template.model import parameter_hash

logger = logging.getLogger(__name__)
_TMP_PREFIX = ".tmp-"


class LocalStore(CheckpointStore):
    """Directory store; several processes on one machine may share a root.

    ``stale_after``: seconds after which a leftover ``.tmp-*`` folder counts as the remains of
    a crashed push and is removed. It must exceed the longest push (writing the largest model
    to this disk), or a slow live push would lose its folder.
    """

    def __init__(self, root: str | os.PathLike[str], *, stale_after: float = 3600.0):
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self.stale_after = stale_after
        self.clean_stale()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def clean_stale(self) -> list[str]:
        """Delete ``.tmp-*`` folders older than ``stale_after``; returns their names."""
        removed = []
        now = time.time()
        for path in self.root.glob(f"{_TMP_PREFIX}*"):
            try:
                old = now - path.stat().st_mtime > self.stale_after
            except FileNotFoundError:  # another process finished or cleaned it meanwhile
                continue
            if old:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
                logger.info("removed leftover temp checkpoint %s", path)
        return removed

    def refs(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith(_TMP_PREFIX))

    def push(self, epoch: int, model: torch.nn.Module, tokenizer: Any,
             metadata: Mapping[str, Any], *,
             optimizer_state: Mapping[str, Any] | None = None,
             candidate: bool = False) -> str:
        new_hash = parameter_hash(model)
        tag = candidate_tag(epoch, new_hash) if candidate else tag_of(epoch, None)
        final = self.root / tag
        if final.exists():
            return self._same_or_conflict(epoch, tag, new_hash)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{tag}-", dir=self.root))
        try:
            manifest = write_checkpoint(tmp, epoch, model, tokenizer, metadata,
                                        optimizer_state=optimizer_state, tag=tag)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.exists():
                    raise
                # Another process published the same tag between our check and our rename.
                return self._same_or_conflict(epoch, tag, manifest["parameter_hash"])
            fsync_path(self.root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info("pushed %s to %s (parameter_hash %s)", tag, self.root,
                    manifest["parameter_hash"][:16])
        return tag

    def _same_or_conflict(self, epoch: int, tag: str, new_hash: str) -> str:
        try:
            existing = self.read_manifest(epoch, tag=tag)
        except CheckpointError as err:
            raise CheckpointConflictError(
                tag, "", f"{tag} already exists in {self.root} with an unreadable manifest "
                f"({err}); delete that folder to push again") from err
        if existing["parameter_hash"] != new_hash:
            raise CheckpointConflictError(tag, existing["parameter_hash"])
        return tag

    def _directory(self, epoch: int, tag: str | None = None) -> Path:
        tag = tag_of(epoch, tag)
        directory = self.root / tag
        if not directory.is_dir():
            have = self.tags()
            raise MissingCheckpointError(
                f"no checkpoint {tag} in {self.root} (have: {', '.join(have[-5:]) or 'none'})")
        return directory

    def read_manifest(self, epoch: int, *, tag: str | None = None) -> dict[str, Any]:
        path = self._directory(epoch, tag) / MANIFEST
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise ManifestError(f"{MANIFEST} unreadable in {path.parent}: {err}") from err
        return parse_manifest(raw, epoch=epoch)

    def pull(self, epoch: int, *, tag: str | None = None) -> Checkpoint:
        return read_checkpoint(self._directory(epoch, tag), epoch)

    def write_eval(self, epoch: int, data: Mapping[str, Any], *, tag: str | None = None) -> None:
        directory = self._directory(epoch, tag)
        raw = dump_eval(data, epoch=epoch, tag=directory.name)
        tmp = directory / f".{EVAL}.{os.getpid()}.tmp"
        tmp.write_bytes(raw)
        fsync_path(tmp)
        os.replace(tmp, directory / EVAL)
        fsync_path(directory)

    def read_eval(self, epoch: int, *, tag: str | None = None) -> dict[str, Any] | None:
        try:
            path = self._directory(epoch, tag) / EVAL
            raw = path.read_bytes()
        except (MissingCheckpointError, FileNotFoundError):
            return None
        except OSError as err:
            logger.warning("cannot read %s: %s", path, err)
            return None
        return eval_or_none(raw, epoch=epoch, tag=path.parent.name, where=str(path))
