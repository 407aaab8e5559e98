"""Build FineWeb-schema parquet shards from local text, and the no-download demo set.

The local devnet and every test read pages from shards with FineWeb's columns, so the code
that serves pages is the same as for FineWeb. Shards are deterministic: the same input files
give byte-identical shards (inputs are read in sorted order, ids are content hashes, no
timestamps), so every local peer, and anyone rebuilding them, indexes the same pages.

The demo set needs no download: English prose that every Python install has (the standard
library's docstrings, read with ``ast``, and the language reference topics of ``pydoc_data``),
plus ``/usr/share/common-licenses`` when present. It varies a little between Python versions,
which is fine because all local peers share one shard folder.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import shutil
import sysconfig
import uuid
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from template.data.sources import FINEWEB_COLUMNS, HASH_KEY, HASH_VERSION, text_digest

log = logging.getLogger(__name__)

FINEWEB_SCHEMA = pa.schema([
    ("text", pa.string()), ("id", pa.string()), ("dump", pa.string()), ("url", pa.string()),
    ("date", pa.string()), ("file_path", pa.string()), ("language", pa.string()),
    ("language_score", pa.float64()), ("token_count", pa.int64()),
])
MANIFEST = "demo-manifest.json"
DEMO_VERSION = 2  # 2: shards carry per-row-group text hashes (older ones are rebuilt)
_DATE = "1970-01-01T00:00:00Z"  # fixed: a build time would make shards differ between builds
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__",
              "encodings"}  # encodings: generated codec tables, the same boilerplate 90 times


def split_pages(text: str, *, target_chars: int) -> list[str]:
    """Cut ``text`` at blank lines into pages of at least ``target_chars`` characters.

    ``target_chars <= 0`` keeps the text as one page. A short tail joins the previous page.
    """
    text = text.strip()
    if not text:
        return []
    if target_chars <= 0:
        return [text]
    pages: list[str] = []
    current: list[str] = []
    size = 0
    for para in (p.strip() for p in text.split("\n\n")):
        if not para:
            continue
        size += len(para) + (2 if current else 0)  # == len("\n\n".join(current))
        current.append(para)
        if size >= target_chars:
            pages.append("\n\n".join(current))
            current, size = [], 0
    if current:
        tail = "\n\n".join(current)
        if pages and len(tail) < target_chars // 4:
            pages[-1] = pages[-1] + "\n\n" + tail
        else:
            pages.append(tail)
    return pages


def make_record(text: str, *, source: str, number: int, dump: str) -> dict[str, Any]:
    """A FineWeb-schema row for ``text`` (page ``number`` of ``source``); ``token_count`` later.

    ``language`` is ``en`` and ``language_score`` 1.0 by declaration: the builder does not run
    a language classifier. ``id`` is a UUID derived from the content and its origin.
    """
    digest = hashlib.sha256(f"{source}\0{number}\0{text}".encode()).digest()
    return {"text": text, "id": f"<urn:uuid:{uuid.UUID(bytes=digest[:16])}>", "dump": dump,
            "url": f"local://{source}#page-{number}", "date": _DATE, "file_path": source,
            "language": "en", "language_score": 1.0, "token_count": -1}


def _count_tokens(records: list[dict[str, Any]], tokenizer: Any) -> None:
    todo = [r for r in records if r["token_count"] < 0]
    if not todo:
        return
    encodings = tokenizer.backend_tokenizer.encode_batch([r["text"] for r in todo],
                                                        add_special_tokens=False)
    for record, enc in zip(todo, encodings, strict=True):
        record["token_count"] = len(enc.ids)


def write_shards(records: Iterable[dict[str, Any]], out_dir: str | os.PathLike[str], *,
                 rows_per_group: int = 64, rows_per_shard: int = 1024, prefix: str = "shard",
                 tokenizer: Any = None) -> list[Path]:
    """Write ``records`` as ``{prefix}-00000.parquet``, ... and return their paths.

    Old ``{prefix}-*.parquet`` files in ``out_dir`` are removed first so a rebuild never mixes
    with stale shards. Small row groups (``rows_per_group``) make page reads cheap. Each file's
    footer records the sha256 of every row group's text (``HASH_KEY``), checked on read.
    """
    if rows_per_group < 1 or rows_per_shard < 1:
        raise ValueError("--rows-per-group and --rows-per-shard must be >= 1")
    if tokenizer is None:
        from template.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer()
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{prefix}-*.parquet"):
        stale.unlink()
    paths: list[Path] = []
    it = iter(records)
    while chunk := list(islice(it, rows_per_shard)):
        _count_tokens(chunk, tokenizer)
        table = pa.Table.from_pylist(chunk, schema=FINEWEB_SCHEMA)
        groups = [chunk[i:i + rows_per_group] for i in range(0, len(chunk), rows_per_group)]
        if any(not isinstance(r["text"], str) for r in chunk):
            raise ValueError("every record needs a str text")
        record = {"version": HASH_VERSION, "rows": [len(g) for g in groups],
                  "sha256": [text_digest([r["text"] for r in g]) for g in groups]}
        table = table.replace_schema_metadata({HASH_KEY: json.dumps(record).encode()})
        path = out / f"{prefix}-{len(paths):05d}.parquet"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        pq.write_table(table, tmp, row_group_size=rows_per_group, compression="zstd")
        written = pq.ParquetFile(tmp).metadata
        assert [written.row_group(g).num_rows for g in range(written.num_row_groups)] == \
            record["rows"], "row groups differ from the hashed slices"
        os.replace(tmp, path)
        paths.append(path)
    if not paths:
        raise ValueError("no pages to write: the inputs held no text")
    return paths


# ------------------------------------------------------------------ inputs


def expand_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files named in ``inputs``, folders walked recursively; sorted, duplicates removed."""
    files: set[Path] = set()
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            files.update(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            files.add(path)
        else:
            raise FileNotFoundError(f"input {path} does not exist")
    return sorted(files, key=lambda p: p.as_posix())


def text_file_records(files: Iterable[Path], *, target_chars: int,
                      dump: str = "local") -> Iterator[dict[str, Any]]:
    """Records from text files (pages cut by :func:`split_pages`) and FineWeb parquet files.

    Files that are not UTF-8 text are skipped with a log line; parquet files with the FineWeb
    columns are copied row by row (to re-shard FineWeb downloads with small row groups).
    """
    for path in files:
        if path.suffix == ".parquet":
            yield from _parquet_records(path)
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as err:
            log.info("skipping %s: not readable UTF-8 text (%s)", path, err)
            continue
        if "\0" in text:
            log.info("skipping %s: binary", path)
            continue
        for n, page in enumerate(split_pages(text, target_chars=target_chars)):
            yield make_record(page, source=path.as_posix(), number=n, dump=dump)


def _parquet_records(path: Path) -> Iterator[dict[str, Any]]:
    from template.data.sources import ParquetPageSource, read_shard_index

    _, hashes = read_shard_index(str(path))  # ShardError naming the file on a bad schema
    if hashes is not None:  # one of our shards: re-check its text before copying it
        source = ParquetPageSource([str(path)], require_hashes=True, cache_row_groups=1)
        source.pages(range(source.num_pages))
    for batch in pq.ParquetFile(path).iter_batches(columns=list(FINEWEB_COLUMNS)):
        yield from batch.to_pylist()


def build_shards(inputs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *,
                 target_chars: int = 4000, rows_per_group: int = 64,
                 rows_per_shard: int = 1024, tokenizer: Any = None) -> list[Path]:
    """Shards from local text files/folders (and FineWeb parquet files); deterministic."""
    records = text_file_records(expand_inputs(inputs), target_chars=target_chars)
    return write_shards(records, out_dir, rows_per_group=rows_per_group,
                        rows_per_shard=rows_per_shard, tokenizer=tokenizer)


# ------------------------------------------------------------------ demo set


def _module_docstrings(path: Path) -> str:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return ""  # a few stdlib files are deliberately invalid (lib2to3 fixtures, bad encodings)
    docs = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= 40:
                docs.append(doc.strip())
    return "\n\n".join(docs)


def _pydoc_topics(stdlib: Path) -> list[str]:
    path = stdlib / "pydoc_data" / "topics.py"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            return [v.value for v in node.values
                    if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    return []


def demo_texts() -> Iterator[tuple[str, str]]:
    """``(source, text)`` pairs of the demo corpus, in a fixed order."""
    licenses = Path("/usr/share/common-licenses")
    if licenses.is_dir():
        for path in sorted(licenses.iterdir()):
            if path.is_file() and not path.is_symlink():
                try:
                    yield f"common-licenses/{path.name}", path.read_text(encoding="utf-8")
                except (UnicodeDecodeError, OSError):
                    continue
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for n, topic in enumerate(_pydoc_topics(stdlib)):
        yield f"pydoc_data/topics/{n}", topic
    for path in sorted(stdlib.rglob("*.py"), key=lambda p: p.relative_to(stdlib).as_posix()):
        rel = path.relative_to(stdlib)
        if not _SKIP_DIRS & set(rel.parts):
            yield f"stdlib/{rel.as_posix()}", _module_docstrings(path)


def demo_records(*, max_pages: int | None = None,
                 target_chars: int = 1000) -> Iterator[dict[str, Any]]:
    """FineWeb-schema records of the demo corpus (about 2-3 MB, a few thousand pages)."""
    count = 0
    for source, text in demo_texts():
        for n, page in enumerate(split_pages(text, target_chars=target_chars)):
            if max_pages is not None and count >= max_pages:
                return
            yield make_record(page, source=source, number=n, dump="local-demo")
            count += 1


def build_demo_shards(out_dir: str | os.PathLike[str], *, max_pages: int | None = None,
                      rows_per_group: int = 64, rows_per_shard: int = 1024,
                      tokenizer: Any = None) -> list[Path]:
    """Build the demo shards in ``out_dir`` (no download) and write their manifest."""
    out = Path(out_dir).expanduser()
    paths = write_shards(demo_records(max_pages=max_pages), out, rows_per_group=rows_per_group,
                         rows_per_shard=rows_per_shard, prefix="demo", tokenizer=tokenizer)
    manifest = {"version": DEMO_VERSION, "max_pages": max_pages,
                "rows_per_group": rows_per_group, "rows_per_shard": rows_per_shard,
                "files": [p.name for p in paths],
                "pages": sum(pq.ParquetFile(p).metadata.num_rows for p in paths)}
    tmp = out / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / MANIFEST)
    log.info("built %d demo pages in %d shards under %s", manifest["pages"], len(paths), out)
    return paths


def ensure_demo_shards(out_dir: str | os.PathLike[str], *, max_pages: int | None = None,
                       rows_per_group: int = 64, rows_per_shard: int = 1024) -> list[Path]:
    """The demo shards in ``out_dir``, built only if missing or built with other settings."""
    out = Path(out_dir).expanduser()
    try:
        manifest = json.loads((out / MANIFEST).read_text())
        wanted = (DEMO_VERSION, max_pages, rows_per_group, rows_per_shard)
        have = (manifest["version"], manifest["max_pages"], manifest["rows_per_group"],
                manifest["rows_per_shard"])
        paths = [out / name for name in manifest["files"]]
        if have == wanted and paths and all(p.is_file() for p in paths):
            return paths
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no usable manifest: (re)build below
    return build_demo_shards(out, max_pages=max_pages, rows_per_group=rows_per_group,
                             rows_per_shard=rows_per_shard)


def remove_shards(out_dir: str | os.PathLike[str]) -> None:
    """Delete a shard folder built by this module (used by the launcher's --fresh)."""
    shutil.rmtree(Path(out_dir).expanduser(), ignore_errors=True)
