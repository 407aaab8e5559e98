"""Page sources: FineWeb-schema parquet files addressed by an integer page index.

A *page* is one row (one web document) of a FineWeb-schema parquet file. Page indices run over
the files in sorted order, then row groups, then rows, so index ``i`` names the same document on
every machine that holds the same files. Random access reads only the ``text`` column of the
one row group holding the page (``ParquetFile.read_row_group``), which is cheap for the local
shards (small row groups) and is the same code path, over ``huggingface_hub.HfFileSystem``,
for FineWeb on the Hub (see ``docs/data.md`` for its cost).

Bad files (missing, empty, not parquet, wrong columns) raise :class:`ShardError` naming the
file: shards can come from anywhere, and a clear message beats a pyarrow traceback.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import pyarrow as pa
import pyarrow.parquet as pq

from template.config import FINEWEB_REVISION, DataConfig

log = logging.getLogger(__name__)

FINEWEB_COLUMNS = ("text", "id", "dump", "url", "date", "file_path", "language",
                   "language_score", "token_count")
FINEWEB_REPO = "HuggingFaceFW/fineweb"
FINEWEB_CONFIG = "sample-350BT"
T = TypeVar("T")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class ShardError(ValueError):
    """A shard (or the folder/listing of shards) cannot serve pages; the message names it."""


class ShardCorrupt(ShardError):
    """A shard's bytes are damaged: parquet cannot decode it, or a row group's text does not
    match the sha256 the builder recorded. Never serve its text; rebuild the shard."""


HASH_KEY = b"template.text_sha256"
"""Parquet key-value metadata key of a local shard: JSON ``{"version": 1, "rows": [...],
"sha256": [...]}``, one entry per row group (see :func:`text_digest`)."""
HASH_VERSION = 1
REBUILD_HINT = ("rebuild it with `python scripts/build_shards.py --demo --out DIR` (or "
                "`--inputs FILES --out DIR` for your own text)")


def text_digest(texts: Sequence[str]) -> str:
    """sha256 (hex) of the canonical bytes of one row group's ``text`` column.

    Canonical bytes: ``b"text-v1\\0"``, then per row the UTF-8 length as 8-byte little-endian
    and the UTF-8 bytes. Independent of parquet encoding and compression.
    """
    h = hashlib.sha256(b"text-v1\0")
    for text in texts:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def read_text_hashes(path: str, meta: pq.FileMetaData) -> list[str] | None:
    """The per-row-group text hashes recorded in a shard's footer; ``None`` if it has none."""
    kv = meta.metadata or {}
    if HASH_KEY not in kv:
        return None
    counts = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    try:
        record = json.loads(kv[HASH_KEY])
        hashes, rows = record["sha256"], record["rows"]
        ok = (record["version"] == HASH_VERSION and rows == counts
              and len(hashes) == len(counts)
              and all(isinstance(h, str) and len(h) == 64 for h in hashes))
    except (ValueError, KeyError, TypeError) as err:
        raise ShardCorrupt(f"shard {path}: unreadable text hashes in the footer ({err}); "
                           f"{REBUILD_HINT}") from err
    if not ok:
        raise ShardCorrupt(f"shard {path}: text hashes in the footer do not match its row "
                           f"groups; {REBUILD_HINT}")
    return hashes


@runtime_checkable
class PageSource(Protocol):
    """Anything that returns the text of page ``index`` for ``0 <= index < num_pages``."""

    @property
    def num_pages(self) -> int: ...

    def page(self, index: int) -> str: ...

    def pages(self, indices: Sequence[int]) -> list[str]: ...


def _with_parquet(fs: Any, path: str, fn: Callable[[pq.ParquetFile], T]) -> T:
    """``fn(ParquetFile)`` with the file closed afterwards (local path or fsspec ``fs``)."""
    with (open(path, "rb") if fs is None else fs.open(path, "rb")) as handle:
        return fn(pq.ParquetFile(handle))


def read_row_counts(path: str, *, fs: Any = None,
                    required: Sequence[str] = FINEWEB_COLUMNS) -> list[int]:
    """Rows per row group of one shard, after checking it is a non-empty FineWeb-schema file."""
    return read_shard_index(path, fs=fs, required=required)[0]


def read_shard_index(path: str, *, fs: Any = None, required: Sequence[str] = FINEWEB_COLUMNS,
                     ) -> tuple[list[int], list[str] | None]:
    """``(rows per row group, text hashes or None)`` of one non-empty FineWeb-schema shard."""
    if fs is None and not os.path.isfile(path):
        raise ShardError(f"shard {path}: file is missing")
    try:
        meta = _with_parquet(fs, path, lambda f: f.metadata)
        schema = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowException, ValueError) as err:
        raise ShardCorrupt(f"shard {path}: not a readable parquet file ({err})") from err
    missing = [c for c in required if c not in schema.names]
    if missing:
        raise ShardError(f"shard {path}: wrong schema, missing columns {missing} "
                         f"(FineWeb columns: {', '.join(FINEWEB_COLUMNS)})")
    if not (pa.types.is_string(schema.field("text").type)
            or pa.types.is_large_string(schema.field("text").type)):
        raise ShardError(f"shard {path}: wrong schema, column text is "
                         f"{schema.field('text').type}, want string")
    counts = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    if sum(counts) == 0:
        raise ShardError(f"shard {path}: empty (no rows)")
    return counts, read_text_hashes(path, meta)


class ParquetPageSource:
    """Pages of a fixed, ordered list of FineWeb-schema parquet files (local or on an fsspec fs).

    ``row_counts[f][g]`` (rows of row group ``g`` of file ``f``) defines the index; pass it to
    skip re-reading the footers (e.g. from a cached index), else it is read and validated here.
    ``cache_row_groups`` row groups' text stays in memory: pages of one group cost one read.
    ``require_hashes`` (local shards): every file must carry the builder's per-row-group text
    hashes, and each row group read from disk is checked against them (:class:`ShardCorrupt`).
    """

    def __init__(self, files: Sequence[str], *, fs: Any = None,
                 row_counts: Sequence[Sequence[int]] | None = None,
                 cache_row_groups: int = 8, require_hashes: bool = False) -> None:
        if not files:
            raise ShardError("no shard files given")
        self.files = [str(f) for f in files]
        self._fs = fs
        self.hashes: list[list[str] | None] = [None] * len(self.files)
        if row_counts is None or require_hashes:
            index = [read_shard_index(f, fs=fs) for f in self.files]
            row_counts = row_counts if row_counts is not None else [c for c, _ in index]
            self.hashes = [h for _, h in index]
        if require_hashes:
            for path, hashes in zip(self.files, self.hashes, strict=True):
                if hashes is None:
                    raise ShardError(f"shard {path}: no text hashes (built before shards "
                                     f"carried them); {REBUILD_HINT}")
        if len(row_counts) != len(self.files):
            raise ShardError(f"row_counts has {len(row_counts)} entries for {len(files)} files")
        self.row_counts = [list(c) for c in row_counts]
        self._groups: list[tuple[int, int]] = []
        self._starts: list[int] = []
        total = 0
        for f, counts in enumerate(self.row_counts):
            for g, n in enumerate(counts):
                if n:
                    self._groups.append((f, g))
                    self._starts.append(total)
                    total += n
        self._num_pages = total
        self._cache: OrderedDict[tuple[int, int], list[str]] = OrderedDict()
        self._cache_size = max(1, cache_row_groups)
        self._lock = threading.Lock()

    @property
    def num_pages(self) -> int:
        return self._num_pages

    def locate(self, index: int) -> tuple[str, int, int]:
        """``(file, row_group, row)`` of page ``index``."""
        if isinstance(index, bool) or not isinstance(index, int) or not (
                0 <= index < self._num_pages):
            raise IndexError(f"page {index!r} outside [0, {self._num_pages})")
        slot = bisect.bisect_right(self._starts, index) - 1
        f, g = self._groups[slot]
        return self.files[f], g, index - self._starts[slot]

    def _group_text(self, slot: int) -> list[str]:
        key = self._groups[slot]
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        path = self.files[key[0]]
        if self._fs is None and not os.path.isfile(path):
            raise ShardError(f"shard {path}: file is missing (removed after indexing)")
        try:
            table = _with_parquet(self._fs, path,
                                  lambda f: f.read_row_group(key[1], columns=["text"]))
            texts = table.column("text").to_pylist()
        except (OSError, pa.ArrowException, ValueError, IndexError) as err:
            raise ShardCorrupt(f"shard {path}: cannot read row group {key[1]} "
                               f"({type(err).__name__}: {err}); {REBUILD_HINT}") from err
        expected = self.row_counts[key[0]][key[1]]
        if len(texts) != expected or any(t is None for t in texts):
            raise ShardCorrupt(f"shard {path}: row group {key[1]} changed since it was indexed "
                               f"or has null text ({len(texts)} rows, expected {expected})")
        hashes = self.hashes[key[0]]
        if hashes is not None and text_digest(texts) != hashes[key[1]]:
            raise ShardCorrupt(f"shard {path}: row group {key[1]} text sha256 mismatch (the "
                               f"file is damaged); {REBUILD_HINT}")
        with self._lock:
            self._cache[key] = texts
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return texts

    def page(self, index: int) -> str:
        """Text of page ``index``."""
        self.locate(index)  # validates
        slot = bisect.bisect_right(self._starts, index) - 1
        return self._group_text(slot)[index - self._starts[slot]]

    def pages(self, indices: Sequence[int]) -> list[str]:
        """Texts of ``indices``, in the order given (each row group is read once)."""
        for i in indices:
            self.locate(i)
        by_slot: dict[int, list[int]] = {}
        for pos, i in enumerate(indices):
            by_slot.setdefault(bisect.bisect_right(self._starts, i) - 1, []).append(pos)
        out: list[str] = [""] * len(indices)
        for slot in sorted(by_slot):
            texts = self._group_text(slot)
            for pos in by_slot[slot]:
                out[pos] = texts[indices[pos] - self._starts[slot]]
        return out


def shard_problem(err: ShardError) -> str:
    """One log line for a shard that cannot serve a page: the file, and how to rebuild it."""
    line = " ".join(str(err).split())
    return line if "build_shards.py" in line else f"{line}; {REBUILD_HINT}"


def readable_prefix(source: PageSource, indices: Sequence[int],
                    ) -> tuple[list[str], ShardError | None]:
    """Texts of ``indices`` in order, up to the first page a damaged shard cannot serve.

    ``(texts, None)`` when every page reads. Otherwise the texts before the first unreadable
    page and its :class:`ShardError`: the batches of that prefix are the first batches of the
    full epoch's stream (the trailing partial one dropped), so work on them still verifies.
    """
    try:
        return source.pages(indices), None
    except ShardError as err:
        log.debug("batched page read failed (%s); reading page by page", err)
    texts: list[str] = []  # some row group is bad: find the first page it takes out
    for index in indices:
        try:
            texts.append(source.page(index))
        except ShardError as err:
            return texts, err
    return texts, None  # a transient failure of the batched read: every page read now


def training_pages(source: PageSource, indices: Sequence[int], *, epoch: int) -> list[str]:
    """:func:`readable_prefix` for a miner's epoch: a damaged shard is logged as one line
    (the file and the rebuild command) and the epoch trains the pages before it."""
    texts, damaged = readable_prefix(source, indices)
    if damaged is not None:
        log.error("epoch %d: training only the first %d of %d pages: %s", epoch, len(texts),
                  len(indices), shard_problem(damaged))
    return texts


def shard_files(directory: str | os.PathLike[str]) -> list[str]:
    """The ``*.parquet`` files of ``directory``, sorted by name (the page order)."""
    folder = Path(directory).expanduser()
    hint = f"build some with `python scripts/build_shards.py --demo --out {folder}`"
    if not folder.is_dir():
        raise ShardError(f"shard folder {folder} does not exist; {hint}")
    files = sorted(str(p) for p in folder.glob("*.parquet"))
    if not files:
        raise ShardError(f"shard folder {folder} has no *.parquet files; {hint}")
    return files


def local_source(directory: str | os.PathLike[str], *,
                 cache_row_groups: int = 8) -> ParquetPageSource:
    """Pages of the local FineWeb-schema shards in ``directory`` (every file is validated).

    Every shard must carry text hashes (built by this version's ``scripts/build_shards.py``);
    older shards are refused with the rebuild command, and a damaged row group raises
    :class:`ShardCorrupt` when it is read.
    """
    return ParquetPageSource(shard_files(directory), cache_row_groups=cache_row_groups,
                             require_hashes=True)


def _fineweb_root(repo_id: str, config: str, revision: str) -> str:
    if not config.startswith("sample-"):
        raise ShardError(f"FineWeb config {config!r} not supported; use sample-<N>BT")
    return f"datasets/{repo_id}@{revision}/sample/{config.removeprefix('sample-')}"


def is_pinned(revision: str) -> bool:
    """Is ``revision`` a full commit hash (which never moves), not a branch or tag?"""
    return bool(_COMMIT_RE.match(revision))


def fineweb_source(*, repo_id: str = FINEWEB_REPO, config: str = FINEWEB_CONFIG,
                   revision: str = FINEWEB_REVISION, max_files: int | None = None,
                   index_cache_dir: str | os.PathLike[str] | None = None,
                   fs: Any = None, root: str | None = None) -> ParquetPageSource:
    """FineWeb pages read with row-group random access over ``HfFileSystem``.

    Page indices follow the sorted file list of ``config`` at ``revision`` (``--data.revision``):
    pin it to a commit so every peer indexes the same files; a branch or tag (``main``) is
    used with a warning. ``max_files`` limits the page universe to the first files (bounded
    download). Footers (row counts) are read once and cached as JSON in ``index_cache_dir``.
    ``fs``/``root`` replace the Hub with another fsspec filesystem (tests).
    """
    if not is_pinned(revision):
        log.warning("--data.revision %s is a branch or tag, not a commit: it moves when the "
                    "dataset is updated, and peers that opened it at different times may "
                    "disagree on page i; pin a commit hash (docs/production.md)", revision)
    if fs is None:
        from huggingface_hub import HfFileSystem

        fs = HfFileSystem()
    root = root or _fineweb_root(repo_id, config, revision)
    try:
        files = sorted(str(p) for p in fs.glob(f"{root.rstrip('/')}/*.parquet"))
    except (OSError, ValueError) as err:  # hub errors subclass these (HTTP, offline mode)
        raise ShardError(f"cannot list FineWeb files at {root}: {err}; offline, use "
                         "--data.source local") from err
    if max_files is not None:
        files = files[:max_files]
    if not files:
        raise ShardError(f"no parquet files at {root}")
    counts = _cached_row_counts(files, fs=fs, cache_dir=index_cache_dir)
    return ParquetPageSource(files, fs=fs, row_counts=counts, cache_row_groups=1)


def _cached_row_counts(files: list[str], *, fs: Any,
                       cache_dir: str | os.PathLike[str] | None) -> list[list[int]]:
    digest = hashlib.sha256("\n".join(files).encode()).hexdigest()[:16]
    path = Path(cache_dir).expanduser() / f"page-index-{digest}.json" if cache_dir else None
    if path is not None and path.is_file():
        try:
            cached = json.loads(path.read_text())
            if cached.get("files") == files:
                return [list(map(int, c)) for c in cached["row_counts"]]
        except (ValueError, KeyError, TypeError) as err:
            log.warning("ignoring unreadable page index %s: %s", path, err)
    log.info("reading %d parquet footers to index pages (once)", len(files))
    counts = [read_row_counts(f, fs=fs) for f in files]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"files": files, "row_counts": counts}))
        os.replace(tmp, path)
    return counts


def build_page_source(cfg: DataConfig) -> ParquetPageSource:
    """The page source selected by ``--data.source`` (``local`` shards or ``fineweb``)."""
    if cfg.source == "local":
        return local_source(cfg.dir)
    if cfg.source == "fineweb":
        return fineweb_source(revision=cfg.revision, index_cache_dir=cfg.dir)
    raise ShardError(f"unknown --data.source {cfg.source!r}; use local or fineweb")
