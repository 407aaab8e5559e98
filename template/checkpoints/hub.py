"""A checkpoint store on the Hugging Face Hub: one commit and one git tag ``epoch-N`` per push.

Push: write the files locally (same format as the directory store), create the repo if it is
missing, upload every file in ONE commit (``create_commit``), then tag that commit ``epoch-N``.
A tag points at a whole commit, so a reader never sees half a checkpoint: until the tag exists
the checkpoint does not exist. Pull: download ``manifest.json`` at the tag, then every file it
lists, and verify them (:func:`~template.checkpoints.base.read_checkpoint`).

Every Hub call is retried up to ``retries`` times on transient failures (HTTP 408/429/5xx,
connection errors), sleeping ``backoff * 2**k`` seconds (at most ``max_backoff``) before the
k-th retry. HTTP 401/403 is never retried: it raises :class:`StoreAuthError` at once (a token
without write access stays without it). Note ``huggingface_hub`` itself retries some transfer
requests (file downloads, the pre-upload check) on 5xx before our loop sees an error.

Evaluations: a tag is write-once and points at its push's commit, so the evaluator's
``eval.json`` of ``epoch-N`` is committed to the ``main`` branch as ``evals/epoch-N.json``
(:data:`EVALS_DIR`). Later pushes build on ``main``, so a tag's tree may also hold ``evals/`` of
earlier epochs: only the files its manifest lists are the checkpoint.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import torch
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from template.checkpoints.base import (
    EVAL,
    MANIFEST,
    Checkpoint,
    CheckpointConflictError,
    CheckpointError,
    CheckpointStore,
    CorruptCheckpointError,
    MissingCheckpointError,
    StoreAuthError,
    StoreUnavailableError,
    candidate_tag,
    parse_manifest,
    read_checkpoint,
    tag_of,
    write_checkpoint,
)
from template.checkpoints.evals import dump_eval, eval_or_none
from template.model import parameter_hash

logger = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_EXC = (httpx2.TransportError, ConnectionError, TimeoutError, LocalEntryNotFoundError)
EVALS_DIR = "evals"
"""Folder on the repo's ``main`` branch holding ``<tag>.json``, one evaluation per checkpoint."""


class HubStore(CheckpointStore):
    """Checkpoints in a Hub model repo, tagged ``epoch-N``.

    ``token``: a Hub token with write access to ``repo_id`` (pushing) or read access (pulling a
    private repo); ``None`` uses the locally saved login. ``endpoint``: the Hub's URL (a mirror,
    or a local test server). ``retries``: attempts per Hub call; raise it if pushes fail with
    ``StoreUnavailableError`` on a flaky link. ``backoff``/``max_backoff``: seconds before the
    first retry and the cap on any one wait. ``cache_dir``: where pulled checkpoints land
    (``<cache_dir>/<org>--<name>/epoch-N``). ``sleep`` is injectable for tests.
    """

    def __init__(self, repo_id: str, *, token: str | None = None, endpoint: str | None = None,
                 retries: int = 3, backoff: float = 1.0, max_backoff: float = 30.0,
                 private: bool = False, cache_dir: str | Path | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise ValueError(f"--store.repo_id: {repo_id!r} is not an `org/name` Hub repo id")
        if retries < 1:
            raise ValueError(f"--store.retries: must be >= 1, got {retries}")
        if backoff < 0 or max_backoff < 0:
            raise ValueError("backoff and max_backoff must be >= 0 seconds")
        self.repo_id = repo_id
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.private = private
        self.cache_dir = Path(cache_dir or tempfile.gettempdir()).expanduser()
        self._sleep = sleep
        self._api = HfApi(endpoint=endpoint, token=token)

    def __repr__(self) -> str:
        return f"HubStore({self.repo_id!r}, endpoint={self._api.endpoint!r})"

    # -------------------------------------------------------------- retries

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one Hub call with bounded retries; translate its errors to CheckpointErrors."""
        last: BaseException | None = None
        for attempt in range(self.retries):
            if attempt:
                delay = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
                logger.warning("%s on %s failed (%s); retry %d/%d in %.1fs", what,
                               self.repo_id, last, attempt, self.retries - 1, delay)
                self._sleep(delay)
            try:
                return fn()
            except OfflineModeIsEnabled as err:
                raise StoreUnavailableError(
                    f"{what} on {self.repo_id}: HF_HUB_OFFLINE is set; unset it or use "
                    "--store.kind local") from err
            except HfHubHTTPError as err:
                status = err.response.status_code if err.response is not None else None
                if isinstance(err, RepositoryNotFoundError):
                    raise  # the Hub answers 401 for a missing repo to anonymous callers
                if status in (401, 403):
                    raise StoreAuthError(self._auth_message(what, status)) from err
                if status not in TRANSIENT_STATUS:
                    raise
                last = err
            except _TRANSIENT_EXC as err:
                last = err
        raise StoreUnavailableError(
            f"{what} on {self.repo_id} failed after {self.retries} attempts: {last}") from last

    def _auth_message(self, what: str, status: int) -> str:
        reason = ("the token is missing or invalid" if status == 401
                  else "the token lacks write access to this repo")
        return (f"{what} on {self.repo_id} refused (HTTP {status}): {reason}; set HF_TOKEN to a "
                f"token with write access to {self.repo_id} (not retried)")

    # -------------------------------------------------------------- interface

    def refs(self) -> list[str]:
        try:
            refs = self._call("list tags", lambda: self._api.list_repo_refs(self.repo_id))
        except RepositoryNotFoundError:
            return []
        except HfHubHTTPError as err:
            raise CheckpointError(f"list tags of {self.repo_id}: {err}") from err
        return sorted(ref.name for ref in refs.tags)

    def push(self, epoch: int, model: torch.nn.Module, tokenizer: Any,
             metadata: Mapping[str, Any], *,
             optimizer_state: Mapping[str, Any] | None = None,
             candidate: bool = False) -> str:
        new_hash = parameter_hash(model)
        tag = candidate_tag(epoch, new_hash) if candidate else tag_of(epoch, None)
        try:
            return self._push(epoch, tag, new_hash, model, tokenizer, metadata, optimizer_state)
        except HfHubHTTPError as err:  # 4xx other than 401/403/409: a request the Hub refuses
            raise CheckpointError(f"push {tag} to {self.repo_id}: {err}") from err

    def _push(self, epoch: int, tag: str, new_hash: str, model: torch.nn.Module,
              tokenizer: Any, metadata: Mapping[str, Any],
              optimizer_state: Mapping[str, Any] | None) -> str:
        if tag in self.refs():
            return self._same_or_conflict(epoch, tag, new_hash)
        with tempfile.TemporaryDirectory(prefix=f"push-{tag}-") as tmp:
            folder = Path(tmp)
            manifest = write_checkpoint(folder, epoch, model, tokenizer, metadata,
                                        optimizer_state=optimizer_state, tag=tag)
            operations = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p))
                          for p in sorted(folder.iterdir())]
            self._call("create repo", lambda: self._api.create_repo(
                self.repo_id, private=self.private, exist_ok=True))
            commit = self._call("upload", lambda: self._api.create_commit(
                self.repo_id, operations=operations,
                commit_message=f"{tag} parameter_hash {manifest['parameter_hash'][:16]}"))
        try:
            self._call("create tag", lambda: self._api.create_tag(
                self.repo_id, tag=tag, revision=commit.oid))
        except HfHubHTTPError as err:
            if err.response is None or err.response.status_code != 409:
                raise
            # Someone tagged this epoch between our check and our tag.
            return self._same_or_conflict(epoch, tag, manifest["parameter_hash"])
        logger.info("pushed %s to %s (commit %s)", tag, self.repo_id, commit.oid[:12])
        return tag

    def _same_or_conflict(self, epoch: int, tag: str, new_hash: str) -> str:
        existing = self.read_manifest(epoch, tag=tag)
        if existing["parameter_hash"] != new_hash:
            raise CheckpointConflictError(tag, existing["parameter_hash"])
        return tag

    def read_manifest(self, epoch: int, *, tag: str | None = None) -> dict[str, Any]:
        tag = tag_of(epoch, tag)
        return parse_manifest(self._download(MANIFEST, tag, self._folder(tag)).read_bytes(),
                              epoch=epoch)

    def pull(self, epoch: int, *, tag: str | None = None) -> Checkpoint:
        tag = tag_of(epoch, tag)
        folder = self._folder(tag)
        try:
            return self._fetch(epoch, tag, folder, force=False)
        except CorruptCheckpointError as err:  # a stale or damaged local copy: fetch again
            logger.warning("%s from %s failed verification (%s); downloading again", tag,
                           self.repo_id, err)
            return self._fetch(epoch, tag, folder, force=True)

    def write_eval(self, epoch: int, data: Mapping[str, Any], *, tag: str | None = None) -> None:
        tag = tag_of(epoch, tag)
        if tag not in self.refs():
            raise MissingCheckpointError(f"no checkpoint {tag} in {self.repo_id}")
        raw = dump_eval(data, epoch=epoch, tag=tag)
        operation = CommitOperationAdd(path_in_repo=f"{EVALS_DIR}/{tag}.json",
                                       path_or_fileobj=raw)
        try:
            self._call("upload evaluation", lambda: self._api.create_commit(
                self.repo_id, operations=[operation], commit_message=f"{EVAL} of {tag}"))
        except HfHubHTTPError as err:
            raise CheckpointError(f"upload {EVAL} of {tag} to {self.repo_id}: {err}") from err

    def read_eval(self, epoch: int, *, tag: str | None = None) -> dict[str, Any] | None:
        tag = tag_of(epoch, tag)
        name = f"{EVALS_DIR}/{tag}.json"
        try:
            path = self._call(f"download {name}", lambda: self._api.hf_hub_download(
                self.repo_id, name, revision="main", local_dir=self._folder("main"),
                force_download=True))
        except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
            return None
        except HfHubHTTPError as err:
            if err.response is not None and err.response.status_code == 404:
                return None
            raise CheckpointError(f"download {name}: {err}") from err
        return eval_or_none(Path(path).read_bytes(), epoch=epoch, tag=tag,
                            where=f"{self.repo_id}@main/{name}")

    # -------------------------------------------------------------- helpers

    def _folder(self, tag: str) -> Path:
        return self.cache_dir / self.repo_id.replace("/", "--") / tag

    def _fetch(self, epoch: int, tag: str, folder: Path, *, force: bool) -> Checkpoint:
        manifest = parse_manifest(self._download(MANIFEST, tag, folder, force=force).read_bytes(),
                                  epoch=epoch)
        for name in manifest["files"]:
            self._download(name, tag, folder, force=force)
        return read_checkpoint(folder, epoch)

    def _download(self, filename: str, tag: str, folder: Path, *, force: bool = False) -> Path:
        try:
            path = self._call(f"download {filename}@{tag}", lambda: self._api.hf_hub_download(
                self.repo_id, filename, revision=tag, local_dir=folder, force_download=force))
        except (RepositoryNotFoundError, RevisionNotFoundError) as err:
            raise MissingCheckpointError(f"no checkpoint {tag} in {self.repo_id}") from err
        except (EntryNotFoundError, HfHubHTTPError) as err:
            if isinstance(err, HfHubHTTPError) and (
                    err.response is None or err.response.status_code != 404):
                raise CheckpointError(f"download {filename}@{tag}: {err}") from err
            raise CorruptCheckpointError(filename, f"missing from {self.repo_id}@{tag}") from err
        return Path(path)
