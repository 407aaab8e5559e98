"""A damaged local shard never crashes a neuron: the miner trains the pages before the damage,
the validator calls the check not verifiable (no blame); each logs one line naming the file
and the rebuild command. Also: `--data.revision` reaches the FineWeb source."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from hivemind_utils.swarm_state import SwarmState
from template.checkpoints import LocalStore
from template.config import (
    FINEWEB_REVISION,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    WandbConfig,
)
from template.data import (
    ShardCorrupt,
    assign_pages,
    ensure_demo_shards,
    epoch_batches,
    load_tokenizer,
    local_source,
    readable_prefix,
    sources,
)
from template.miner.miner import Miner
from template.model import build_model
from template.protocol import Reason, Train
from template.telemetry import Telemetry
from template.training import build_optimizer
from template.validator import train_round
from template.validator.train_round import TrainContext, judge_train_response
from template.validator.verify import VerifyThresholds

RUN, PAGES, SEQ, BATCH = "shard-faults", 6, 16, 2
PEER = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"


def _damage(path: Path, group: int) -> None:
    """Rewrite ``path`` with the same row groups and a wrong text hash for ``group``."""
    pf = pq.ParquetFile(path)
    meta = dict(pf.schema_arrow.metadata)
    record = json.loads(meta[sources.HASH_KEY])
    record["sha256"][group] = "0" * 64
    meta[sources.HASH_KEY] = json.dumps(record).encode()
    groups = [pf.read_row_group(g) for g in range(pf.num_row_groups)]
    schema = pf.schema_arrow.with_metadata(meta)
    with pq.ParquetWriter(path, schema) as writer:
        for table in groups:
            writer.write_table(table.cast(schema))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Demo shards (8-row groups) and a copy whose group holding uid 0's 3rd page is damaged."""
    tmp = tmp_path_factory.mktemp("shard-faults")
    good = tmp / "good"
    ensure_demo_shards(good, max_pages=64, rows_per_group=8, rows_per_shard=32)
    source = local_source(good)
    pages = assign_pages(run_id=RUN, epoch=0, miner=0, pages_per_miner=PAGES,
                         dataset_size=source.num_pages)
    where = [source.locate(p)[:2] for p in pages]
    cut = next(i for i in range(2, PAGES) if where[i] not in where[:i])  # a group none before use
    bad = tmp / "bad"
    shutil.copytree(good, bad)
    damaged_file = bad / Path(where[cut][0]).name
    _damage(damaged_file, where[cut][1])
    return dict(good=good, bad=bad, pages=pages, cut=cut, file=damaged_file,
                texts=source.pages(pages))


def _one_error_line(caplog) -> str:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    line = errors[0].getMessage()
    assert "\n" not in line and not errors[0].exc_info
    return line


def test_readable_prefix_stops_at_the_first_damaged_page(shards):
    source = local_source(shards["bad"])
    with pytest.raises(ShardCorrupt, match="sha256 mismatch"):
        source.pages(shards["pages"])
    texts, err = readable_prefix(source, shards["pages"])
    assert texts == shards["texts"][:shards["cut"]]
    assert isinstance(err, ShardCorrupt) and shards["file"].name in str(err)
    assert readable_prefix(local_source(shards["good"]), shards["pages"]) == (
        shards["texts"], None)


class _Reporter:
    def __init__(self):
        self.reports = []

    def report(self, **record):
        self.reports.append(record)
        return True


def test_miner_trains_the_pages_before_a_damaged_shard_and_logs_one_line(
        shards, tmp_path, caplog):
    cfg = Config().replace(wandb=WandbConfig(mode="disabled"),
                           data=DataConfig(dir=str(shards["bad"]), seq_len=SEQ,
                                           batch_size=BATCH, pages_per_epoch=PAGES))
    cfg = cfg.replace(neuron=dataclasses.replace(cfg.neuron, run_id=RUN))
    model = build_model(ModelConfig(preset="tiny"), seed=0)
    tokenizer = load_tokenizer(offline=True)
    reporter = _Reporter()
    miner = Miner(cfg=cfg, uid=0, peer_id=PEER, wallet=None, chain=None, model=model,
                  optimizer=build_optimizer(model, OptimConfig()), tokenizer=tokenizer,
                  source=local_source(shards["bad"]), store=LocalStore(tmp_path / "store"),
                  averager=None, reporter=reporter,
                  read_state=lambda: SwarmState(0, 10**6, 0),
                  device=torch.device("cpu"), precision="fp32",
                  telemetry=Telemetry(cfg, role="test", name="test"))
    # (the logger level: importing bittensor silences loggers created before it, see NOTES)
    with caplog.at_level(logging.INFO), caplog.at_level(logging.INFO, logger=sources.__name__):
        miner.train_epoch(0)  # does not raise
    line = _one_error_line(caplog)
    assert str(shards["file"]) in line and "scripts/build_shards.py" in line
    assert f"first {shards['cut']} of {PAGES} pages" in line
    work = miner.ledger.get(0)
    prefix = epoch_batches(shards["texts"][:shards["cut"]], tokenizer, seq_len=SEQ,
                           batch_size=BATCH)
    assert work.finished and work.pages == tuple(shards["pages"])
    assert len(prefix) > 0 and work.samples == len(prefix) * BATCH
    full = epoch_batches(shards["texts"], tokenizer, seq_len=SEQ, batch_size=BATCH)
    assert len(prefix) < len(full)  # the pages from the damaged one on were not trained
    assert all(torch.equal(a, b) for a, b in zip(prefix, full, strict=False))  # verifiable
    assert reporter.reports[-1]["finished"] and reporter.reports[-1]["samples"] == work.samples


def test_validator_calls_a_check_on_its_damaged_shard_not_verifiable(shards, caplog):
    fingerprint = (0.5,) * 4
    ctx = TrainContext(
        run_id=RUN, epoch=0, model=None, reference_fingerprint=fingerprint, sketch_seed=7,
        tokenizer=None, source=local_source(shards["bad"]), pages_per_epoch=PAGES,
        seq_len=SEQ, batch_size=BATCH, thresholds=VerifyThresholds(), bindings={0: PEER})
    reply = Train(epoch=0, nonce=3, pages=list(shards["pages"]), batches=[0], samples=BATCH,
                  sketches=[[0.1] * 8], loss=5.0, sketch_seed=7, peer_id=PEER,
                  model_fingerprint=list(fingerprint))
    reply.dendrite.status_code = 200
    with caplog.at_level(logging.INFO), caplog.at_level(logging.INFO, logger=train_round.__name__):
        verdict = judge_train_response(0, reply, ctx=ctx, nonce=3, rng=None)
    assert verdict.rejection.reason is Reason.NOT_VERIFIABLE
    assert not verdict.verifiable and verdict.verified_samples == 0
    line = _one_error_line(caplog)
    assert "cannot verify uid 0" in line and str(shards["file"]) in line
    assert "scripts/build_shards.py" in line
    # a rejection the miner earned is still verifiable (recorded, blamed)
    wrong = dataclasses.replace(ctx, source=local_source(shards["good"]))
    reply.pages = list(reversed(shards["pages"]))
    other = judge_train_response(0, reply, ctx=wrong, nonce=3, rng=None)
    assert other.rejection.reason is Reason.INCONSISTENT and other.verifiable


# ------------------------------------------------------------------ --data.revision


def test_data_revision_is_pinned_by_default_and_checked():
    assert DataConfig().revision == FINEWEB_REVISION and sources.is_pinned(FINEWEB_REVISION)
    assert DataConfig(revision="main").revision == "main" and not sources.is_pinned("main")
    assert DataConfig(revision="v1.1.0").revision == "v1.1.0"
    for bad in ("", "refs/pr/1", "main branch", "-x", "a@b"):
        with pytest.raises(ConfigError, match="--data.revision"):
            DataConfig(revision=bad)


def test_data_revision_reaches_the_fineweb_source_and_main_warns(monkeypatch, caplog):
    seen, real = [], sources.fineweb_source

    def fake_fineweb(**kwargs):  # the real one, over a filesystem without files
        seen.append(kwargs["revision"])
        return real(**kwargs, fs=_NoFiles(), root="nowhere")

    monkeypatch.setattr(sources, "fineweb_source", fake_fineweb)
    for revision, warns in ((FINEWEB_REVISION, False), ("main", True)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=sources.__name__), pytest.raises(
                sources.ShardError, match="no parquet files"):
            sources.build_page_source(DataConfig(source="fineweb", revision=revision))
        assert seen[-1] == revision
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert bool(warned) is warns, warned
        if warns:
            assert "--data.revision main" in warned[0] and "disagree on page i" in warned[0]


class _NoFiles:
    def glob(self, pattern):
        return []
