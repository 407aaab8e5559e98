"""Local FineWeb-schema shards: building, random access, and typed errors naming the file."""

from __future__ import annotations

import json
import random
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from template.config import DataConfig
from template.data import sources
from template.data.shards import (
    FINEWEB_SCHEMA,
    build_shards,
    ensure_demo_shards,
    make_record,
    split_pages,
    write_shards,
)
from template.data.sources import (
    FINEWEB_COLUMNS,
    ParquetPageSource,
    ShardCorrupt,
    ShardError,
    build_page_source,
    fineweb_source,
    local_source,
)
from template.data.tokenizer import load_tokenizer

TEXTS = [f"Page {i}: the quick brown fox jumps over {i} lazy dogs." * (1 + i % 3)
         for i in range(40)]


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    records = (make_record(t, source="test", number=i, dump="t") for i, t in enumerate(TEXTS))
    write_shards(records, out, rows_per_group=3, rows_per_shard=7,
                 tokenizer=load_tokenizer(offline=True))
    return out


def test_random_access_matches_what_was_written(shard_dir):
    files = sorted(shard_dir.glob("*.parquet"))
    assert len(files) == 6  # 40 rows, 7 per shard
    src = local_source(shard_dir, cache_row_groups=2)
    assert src.num_pages == len(TEXTS)
    assert [src.page(i) for i in range(len(TEXTS))] == TEXTS
    order = list(range(len(TEXTS)))
    random.Random(0).shuffle(order)
    assert src.pages(order) == [TEXTS[i] for i in order]
    assert src.locate(8) == (str(files[1]), 0, 1)  # row 1 of file 1 (rows 7..13), group 0
    assert src.locate(11) == (str(files[1]), 1, 1)  # group 1 holds rows 10..12
    for bad in (-1, len(TEXTS), True):
        with pytest.raises(IndexError):
            src.page(bad)


def test_columns_and_token_counts(shard_dir):
    table = pq.read_table(sorted(shard_dir.glob("*.parquet"))[0])
    assert table.schema.names == list(FINEWEB_COLUMNS)
    tok = load_tokenizer(offline=True)
    assert table.column("token_count").to_pylist() == [
        len(tok(t)["input_ids"]) for t in TEXTS[:7]]
    assert len(set(pa.concat_tables([table]).column("id").to_pylist())) == 7


def test_build_page_source_from_config(shard_dir):
    src = build_page_source(DataConfig(source="local", dir=str(shard_dir)))
    assert src.num_pages == len(TEXTS) and src.page(5) == TEXTS[5]


def _write(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path)
    return path


def test_bad_shards_raise_shard_error_naming_the_file(tmp_path):
    with pytest.raises(ShardError, match="does not exist"):
        local_source(tmp_path / "nope")
    with pytest.raises(ShardError, match="no \\*.parquet"):
        local_source(tmp_path)
    missing = tmp_path / "missing.parquet"
    with pytest.raises(ShardError, match="missing.parquet.*missing"):
        ParquetPageSource([str(missing)])
    zero = tmp_path / "zero.parquet"
    zero.write_bytes(b"")
    with pytest.raises(ShardError, match="zero.parquet"):
        ParquetPageSource([str(zero)])
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not a parquet file at all" * 10)
    with pytest.raises(ShardError, match="garbage.parquet.*not a readable parquet"):
        ParquetPageSource([str(garbage)])
    empty = _write(tmp_path / "empty.parquet", FINEWEB_SCHEMA.empty_table())
    with pytest.raises(ShardError, match="empty.parquet.*empty"):
        ParquetPageSource([str(empty)])
    wrong = _write(tmp_path / "wrong.parquet", pa.table({"content": ["a"], "id": ["1"]}))
    with pytest.raises(ShardError, match="wrong.parquet.*missing columns.*text"):
        ParquetPageSource([str(wrong)])
    row = make_record("x", source="s", number=0, dump="d") | {"token_count": 1}
    cols = {k: [v] for k, v in row.items()} | {"text": [b"bytes"]}
    binary = _write(tmp_path / "binary.parquet", pa.table(cols))
    with pytest.raises(ShardError, match="binary.parquet.*column text"):
        ParquetPageSource([str(binary)])
    # the folder scan reports the first bad file by name
    with pytest.raises(ShardError, match="binary.parquet"):
        local_source(tmp_path)


def test_shard_vanishing_after_indexing(tmp_path):
    records = [make_record(t, source="s", number=i, dump="d") for i, t in enumerate(TEXTS[:5])]
    (path,) = write_shards(records, tmp_path, tokenizer=load_tokenizer(offline=True))
    src = local_source(tmp_path)
    path.unlink()
    with pytest.raises(ShardError, match=path.name):
        src.page(0)


def test_build_shards_from_text_files_is_deterministic(tmp_path):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    (inputs / "a.txt").write_text("First paragraph of a.\n\nSecond paragraph of a.\n")
    (inputs / "sub" / "b.md").write_text("\n\n".join(f"Paragraph {i} of b." for i in range(50)))
    (inputs / "blob.bin").write_bytes(bytes(range(256)))  # skipped: not UTF-8
    tok = load_tokenizer(offline=True)
    one = build_shards([inputs], tmp_path / "one", target_chars=100, rows_per_group=2,
                       rows_per_shard=4, tokenizer=tok)
    two = build_shards([inputs / "sub", inputs / "a.txt"], tmp_path / "two", target_chars=100,
                       rows_per_group=2, rows_per_shard=4, tokenizer=tok)
    assert [p.name for p in one] == [p.name for p in two]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two, strict=True))
    src = local_source(tmp_path / "one")
    assert src.page(0).startswith("First paragraph of a.")
    assert all(len(src.page(i)) >= 100 for i in range(1, src.num_pages - 1))
    # FineWeb parquet inputs are re-sharded row by row
    again = build_shards(one, tmp_path / "three", rows_per_group=1, tokenizer=tok)
    assert local_source(tmp_path / "three").pages(range(src.num_pages)) == src.pages(
        range(src.num_pages))
    assert len(again) == 1
    with pytest.raises(FileNotFoundError):
        build_shards([tmp_path / "absent"], tmp_path / "x", tokenizer=tok)


def test_split_pages():
    assert split_pages("  ", target_chars=10) == []
    assert split_pages("a\n\nb", target_chars=0) == ["a\n\nb"]
    pages = split_pages("\n\n".join(["x" * 30] * 10), target_chars=70)
    assert [len(p) for p in pages] == [94, 94, 94, 30]  # 3 paragraphs reach 70; tail >= 70/4
    merged = split_pages("\n\n".join(["x" * 30] * 6 + ["y" * 10]), target_chars=70)
    assert [len(p) for p in merged] == [94, 106]  # a tail under 70/4 joins the last page


def test_demo_shards_build_once_and_read_as_english(tmp_path):
    paths = ensure_demo_shards(tmp_path, max_pages=120)
    manifest = json.loads((tmp_path / "demo-manifest.json").read_text())
    assert manifest["pages"] == 120 and [p.name for p in paths] == manifest["files"]
    mtimes = [p.stat().st_mtime_ns for p in paths]
    assert ensure_demo_shards(tmp_path, max_pages=120) == paths  # idempotent: no rebuild
    assert [p.stat().st_mtime_ns for p in paths] == mtimes
    text = " ".join(local_source(tmp_path).pages(range(120)))
    words = text.lower().split()
    assert len(text) > 50_000
    assert sum(w in ("the", "of", "and", "to", "a", "is") for w in words) / len(words) > 0.08


def test_fineweb_source_index_over_an_fsspec_filesystem(shard_dir, tmp_path, monkeypatch):
    fs = fsspec.filesystem("file")
    cache = tmp_path / "index"
    src = fineweb_source(fs=fs, root=str(shard_dir), index_cache_dir=cache, max_files=3)
    assert src.num_pages == 21 and src.pages([20, 0, 9]) == [TEXTS[20], TEXTS[0], TEXTS[9]]
    (index_file,) = cache.glob("page-index-*.json")
    assert len(json.loads(index_file.read_text())["row_counts"]) == 3

    def no_footer_reads(*args, **kwargs):
        raise AssertionError("footers re-read despite the cached index")

    monkeypatch.setattr(sources, "read_row_counts", no_footer_reads)
    again = fineweb_source(fs=fs, root=str(shard_dir), index_cache_dir=cache, max_files=3)
    assert again.row_counts == src.row_counts and again.page(13) == TEXTS[13]


def test_fineweb_source_offline_gives_shard_error():
    # HF_HUB_OFFLINE=1 (conftest): listing FineWeb fails at once, with a typed error and a fix
    with pytest.raises(ShardError, match="--data.source local"):
        fineweb_source()
    with pytest.raises(ShardError, match="not supported"):
        fineweb_source(config="default", fs=fsspec.filesystem("file"))


# ------------------------------------------------------------------ content hashes


def _read_all(path: Path) -> list[str]:
    src = ParquetPageSource([str(path)], require_hashes=True, cache_row_groups=1)
    return src.pages(range(src.num_pages))


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("hashed")
    records = (make_record(t, source="h", number=i, dump="d") for i, t in enumerate(TEXTS))
    (path,) = write_shards(records, out, rows_per_group=8, rows_per_shard=1000,
                           tokenizer=load_tokenizer(offline=True))
    return path, _read_all(path)


def _classify(path: Path, expected: list[str]) -> str:
    try:
        texts = _read_all(path)
    except ShardCorrupt as err:
        return "hash" if "sha256 mismatch" in str(err) else "parquet"
    except ShardError:
        return "parquet"  # metadata damage: schema, lost hash key
    return "unchanged" if texts == expected else "silent"


def test_single_byte_flips_never_change_text_silently(one_shard, tmp_path):
    path, expected = one_shard
    data = path.read_bytes()
    meta = pq.ParquetFile(path).metadata
    text_col = [meta.row_group(g).column(0) for g in range(meta.num_row_groups)]
    spans = [(c.dictionary_page_offset or c.data_page_offset,
              (c.dictionary_page_offset or c.data_page_offset) + c.total_compressed_size)
             for c in text_col]
    rng = random.Random(12)
    positions = [rng.randrange(a, b) for a, b in rng.sample(spans * 10, 30)]  # text chunks
    positions += [rng.randrange(len(data)) for _ in range(20)]  # anywhere, footer included
    counts: dict[str, int] = {}
    in_text: list[str] = []
    bad = tmp_path / "flip.parquet"
    for pos in positions:
        flipped = bytearray(data)
        flipped[pos] ^= 1 << rng.randrange(8)
        bad.write_bytes(bytes(flipped))
        kind = _classify(bad, expected)
        counts[kind] = counts.get(kind, 0) + 1
        if any(a <= pos < b for a, b in spans):
            in_text.append(kind)
    print("flips", len(positions), counts)
    assert counts.get("silent", 0) == 0
    # flips of text-chunk bytes that decode to the same text (page-header statistics, crc)
    # are harmless; every other one is rejected
    assert in_text and {"hash", "parquet"} & set(in_text)
    assert counts.get("hash", 0) > 0


def test_fuzzed_shards_give_typed_rejections(one_shard, tmp_path):
    path, expected = one_shard
    data = path.read_bytes()
    rng = random.Random(7)
    bad = tmp_path / "fuzz.parquet"
    kinds: dict[str, int] = {}
    for trial in range(300):
        mode = trial % 3
        if mode == 0:  # truncation
            blob = data[:rng.randrange(len(data))]
        elif mode == 1:  # several random bytes
            blob = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                blob[rng.randrange(len(blob))] = rng.randrange(256)
            blob = bytes(blob)
        else:  # valid parquet, wrong hash metadata
            table = pq.read_table(path)
            record = json.loads(table.schema.metadata[sources.HASH_KEY])
            choice = rng.randrange(4)
            if choice == 0:
                record["sha256"][rng.randrange(len(record["sha256"]))] = "0" * 64
            elif choice == 1:
                record["rows"] = record["rows"][:-1]
            elif choice == 2:
                record["version"] = 99
            else:
                record = "{not json"
            raw = record if isinstance(record, str) else json.dumps(record)
            pq.write_table(table.replace_schema_metadata({sources.HASH_KEY: raw.encode()}),
                           bad, row_group_size=8)
            blob = bad.read_bytes()
        bad.write_bytes(blob)
        kind = _classify(bad, expected)
        assert kind != "silent", f"trial {trial}: corrupted shard served altered text"
        if mode != 1:
            assert kind in ("parquet", "hash"), f"trial {trial} ({mode}): {kind}"
        kinds[kind] = kinds.get(kind, 0) + 1
    print("fuzz", kinds)


def test_unhashed_shards_are_refused_with_the_rebuild_command(one_shard, tmp_path):
    path, expected = one_shard
    table = pq.read_table(path).replace_schema_metadata(None)
    pq.write_table(table, tmp_path / "old.parquet", row_group_size=8)
    with pytest.raises(ShardError, match="old.parquet.*no text hashes.*build_shards.py"):
        local_source(tmp_path)
    # without the requirement (FineWeb over the Hub carries none) the text reads as before
    assert ParquetPageSource([str(tmp_path / "old.parquet")]).pages(range(40)) == expected
    assert expected == TEXTS


def test_damaged_hashed_shard_is_refused_when_resharded(one_shard, tmp_path):
    path, _ = one_shard
    table = pq.read_table(path)
    record = json.loads(table.schema.metadata[sources.HASH_KEY])
    record["sha256"][0] = "f" * 64
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(table.replace_schema_metadata(
        {sources.HASH_KEY: json.dumps(record).encode()}), src / "x.parquet", row_group_size=8)
    with pytest.raises(ShardCorrupt, match="x.parquet: row group 0 text sha256 mismatch"):
        build_shards([src], tmp_path / "out", tokenizer=load_tokenizer(offline=True))
