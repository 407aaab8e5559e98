"""Checkpoint stores: one interface, a local directory store and a Hugging Face Hub store.

    store = build_store(cfg.store)
    tag = store.push(epoch, model, tokenizer, {"loss": 3.2})   # "epoch-12"
    ckpt = store.pull(store.latest_epoch())
    load_state_into(model, ckpt.state_dict)                      # template.model

See docs/checkpoints.md for the layout, the manifest and what each error means.
"""

from __future__ import annotations

import os

from template.checkpoints.base import (
    Checkpoint,
    CheckpointConflictError,
    CheckpointError,
    CheckpointStore,
    CorruptCheckpointError,
    ManifestError,
    MissingCheckpointError,
    StoreAuthError,
    StoreUnavailableError,
    epoch_of,
    tag_for,
)
from template.checkpoints.hub import HubStore
from template.checkpoints.local import LocalStore
from template.config import StoreConfig

__all__ = [
    "Checkpoint",
    "CheckpointConflictError",
    "CheckpointError",
    "CheckpointStore",
    "CorruptCheckpointError",
    "HubStore",
    "LocalStore",
    "ManifestError",
    "MissingCheckpointError",
    "StoreAuthError",
    "StoreUnavailableError",
    "build_store",
    "epoch_of",
    "tag_for",
]


def build_store(cfg: StoreConfig) -> CheckpointStore:
    """The store ``--store.kind`` names. The Hub token comes from the ``HF_TOKEN`` env var
    (never a flag: flags end up in shell history and process lists); for the Hub,
    ``--store.dir`` is where pulled checkpoints are cached."""
    if cfg.kind == "local":
        return LocalStore(cfg.dir)
    if cfg.kind == "hub":
        return HubStore(cfg.repo_id, token=os.environ.get("HF_TOKEN") or None,
                        retries=cfg.retries, cache_dir=cfg.dir)
    raise ValueError(f"--store.kind: unknown kind {cfg.kind!r}; use local or hub")
