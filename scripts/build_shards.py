"""Build FineWeb-schema parquet shards from local text, or the no-download demo set.

    python scripts/build_shards.py --demo --out ~/.distributed_training/shards
    python scripts/build_shards.py --inputs notes/ books/*.txt --out shards/ --rows-per-group 64
    python scripts/build_shards.py --inputs fineweb-000.parquet --out shards/   # re-shard FineWeb

Text files are cut into pages at blank lines (``--page-chars``; 0 = one page per file); FineWeb
parquet inputs are copied row by row with small row groups, for cheap random page access.
The output is deterministic: the same inputs give byte-identical shards. Prints the shard
paths and the page count. The library functions (``template.data.shards``) do the work.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from template.data.shards import build_demo_shards, build_shards  # noqa: E402
from template.data.sources import ShardError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder for the *.parquet shards")
    parser.add_argument("--inputs", nargs="*", default=[],
                        help="text files, folders (recursive) or FineWeb parquet files")
    parser.add_argument("--demo", action="store_true",
                        help="build the demo set from Python's own docs (no download)")
    parser.add_argument("--max-pages", type=int, default=None,
                        help="demo only: stop after this many pages (default: all, ~2400)")
    parser.add_argument("--page-chars", type=int, default=4000,
                        help="cut text files into pages of at least this many characters")
    parser.add_argument("--rows-per-group", type=int, default=64,
                        help="rows per parquet row group (the unit of a random page read)")
    parser.add_argument("--rows-per-shard", type=int, default=1024, help="rows per shard file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.demo == bool(args.inputs):
        parser.error("give either --demo or --inputs FILES/DIRS")
    try:
        if args.demo:
            paths = build_demo_shards(args.out, max_pages=args.max_pages,
                                      rows_per_group=args.rows_per_group,
                                      rows_per_shard=args.rows_per_shard)
        else:
            paths = build_shards(args.inputs, args.out, target_chars=args.page_chars,
                                 rows_per_group=args.rows_per_group,
                                 rows_per_shard=args.rows_per_shard)
    except (ShardError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    pages = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
    for path in paths:
        print(path)
    print(f"{pages} pages in {len(paths)} shards")
    return 0


if __name__ == "__main__":
    sys.exit(main())
