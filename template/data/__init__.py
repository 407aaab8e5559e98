"""Data layer: GPT-2 tokenizer, FineWeb page sources, page assignment, token batches.

Everything miner and validator must compute identically about data lives here:
``assign_pages`` says which pages a miner trains on, a :class:`PageSource` turns page indices
into texts, and the batch functions turn texts into the exact same token batches.
"""

from template.data.assignment import assign_pages
from template.data.batches import (
    TokenBatcher,
    batch_at,
    encode_documents,
    epoch_batches,
    num_batches,
    token_stream,
)
from template.data.shards import (
    FINEWEB_SCHEMA,
    build_demo_shards,
    build_shards,
    ensure_demo_shards,
    write_shards,
)
from template.data.sources import (
    FINEWEB_COLUMNS,
    PageSource,
    ParquetPageSource,
    ShardCorrupt,
    ShardError,
    build_page_source,
    fineweb_source,
    local_source,
    readable_prefix,
    shard_problem,
    training_pages,
)
from template.data.tokenizer import EOS_ID, VOCAB_SIZE, TokenizerError, load_tokenizer

__all__ = [
    "EOS_ID", "FINEWEB_COLUMNS", "FINEWEB_SCHEMA", "VOCAB_SIZE", "PageSource",
    "ParquetPageSource", "ShardCorrupt", "ShardError", "TokenBatcher", "TokenizerError",
    "assign_pages",
    "batch_at", "build_demo_shards", "build_page_source", "build_shards", "encode_documents",
    "ensure_demo_shards", "epoch_batches", "fineweb_source", "load_tokenizer", "local_source",
    "num_batches", "readable_prefix", "shard_problem", "token_stream", "training_pages",
    "write_shards",
]
