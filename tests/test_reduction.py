"""Result integrity, pure (template/reduction.py): no network, no hivemind process.

Inputs are built the way a round builds them: four senders' flattened gradients (three tensors,
150k values), a :class:`~template.contribution.ShardAudit` of what each delivers on a reducer's
shard (in wire-sized parts, with the weight it declares), :func:`build_report` from that, the
reducer's weighted mean over the senders as the result, and ``sketch_blocks`` of what came back.

What is tested:

- the report's wire format: round trips, every check ``from_bytes`` makes raises
  :class:`ReportError`, and random junk, truncations and byte flips raise nothing else;
- :func:`check_report`: an honest result passes (float32 and fp16 wires); a class of wrong
  results fails (scaled, noised, one block changed, a vector hidden from the sketch, zeroed,
  reweighted, a sender dropped, values moved); a report that explains a wrong result by
  misstating a member's part or weight is caught by that member (``own=``); clipped blocks may
  move within the senders' spread, no further; a report of another round, reducer or shard fails;
- :func:`judge_reports`: the validator's gating rules (disputes with commitments, ``tampered``,
  majority accusations, self-accusations).
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from functools import cache

import msgpack
import numpy as np
import pytest
import torch

from template.contribution import (
    NORM_RATIO_BOUNDS,
    Commitment,
    DeliveredBlocks,
    ShardAudit,
    block_ranges,
    block_tolerance,
    commit,
    sketch_blocks,
)
from template.projection import BASES, CHUNK, _basis, chunk_signs
from template.proof import SKETCH_DIMS
from template.reduction import (
    HULL_SLACK,
    REPORT_VERSION,
    OwnPart,
    ReducerReport,
    ReportError,
    build_report,
    check_report,
    judge_reports,
)

SHAPES = [(60_000,), (150, 400), (30_000,)]
TOTAL = sum(math.prod(s) for s in SHAPES)
NUM_BLOCKS = len(block_ranges(TOTAL))
DIMS = SKETCH_DIMS
SEED = 2718
TOL = block_tolerance("none")
GROUP = "0f" * 16
SENDERS = ("peerA", "peerB", "peerC", "peerD")
REDUCER = "peerA"
SHARDS = {"peerA": (30_000, 110_000), "peerB": (110_000, TOTAL)}
"""Two reducers' shards (peerC and peerD reduce shards no test audits)."""
PART = 16_384
"""Values per part on the wire."""
UNEVEN = {"peerA": 2, "peerB": 4, "peerC": 8, "peerD": 16}
EVEN = {"peerA": 6, "peerB": 8, "peerC": 10, "peerD": 12}
"""Samples that ``WEIGHT_CAP`` x their median never caps, whichever median."""


# ------------------------------------------------------------------ helpers


def _split(flat: torch.Tensor) -> list[torch.Tensor]:
    """The flattened vector as the averager's buffers (views)."""
    out, start = [], 0
    for shape in SHAPES:
        n = math.prod(shape)
        out.append(flat[start:start + n].view(shape))
        start += n
    return out


@dataclass
class Round:
    """One round of the four senders, as every reducer of ``SHARDS`` saw it."""

    samples: dict[str, int]
    sent: dict[str, torch.Tensor]
    """Flat values as they arrived (after the wire's rounding)."""
    commitments: dict[str, Commitment]
    blocks: dict[str, list[int]]
    delivered: dict[str, dict[str, DeliveredBlocks]]
    declared: dict[str, dict[str, float]]
    roundtrip: object = None

    def report(self, reducer: str = REDUCER, *, clip_factor: float = 0.0, clipped=(),
               without: tuple[str, ...] = ()) -> ReducerReport:
        delivered = {s: d for s, d in self.delivered[reducer].items() if s not in without}
        return build_report(group_id=GROUP, reducer=reducer, clip_factor=clip_factor,
                            blocks=self.blocks[reducer], delivered=delivered,
                            weights=self.declared[reducer], clipped=clipped, dims=DIMS)

    def mean(self, weights: dict[str, float] | None = None) -> torch.Tensor:
        """The reducer's result: the weighted mean of what arrived (then the wire's rounding)."""
        weights = {s: float(w) for s, w in (self.samples if weights is None else weights).items()}
        total = sum(weights.values())
        flat = sum(self.sent[s] * (w / total) for s, w in weights.items())
        return self.roundtrip(flat) if self.roundtrip else flat

    def own(self, peer: str, *, weight: float | None = None) -> OwnPart:
        c = self.commitments[peer]
        return OwnPart(peer=peer, blocks=c.blocks,
                       weight=float(c.samples if weight is None else weight))


def _make_round(samples: dict[str, int], *, roundtrip=None, seed: int = 0) -> Round:
    gen = torch.Generator().manual_seed(seed)
    common = torch.randn(TOTAL, generator=gen)
    flats = {s: common + 0.5 * torch.randn(TOTAL, generator=gen) for s in SENDERS}
    commitments = {s: commit(_split(f), seed=SEED, samples=samples[s],
                             batch_sketches=[[0.0] * DIMS], dims=DIMS, max_batches=4)
                   for s, f in flats.items()}
    sent = {s: roundtrip(f) if roundtrip else f for s, f in flats.items()}
    blocks, delivered, declared = {}, {}, {}
    for reducer, (start, end) in SHARDS.items():
        audit = ShardAudit(shard=(start, end), total=TOTAL, seeds=dict.fromkeys(SENDERS, SEED))
        for offset in range(start, end, PART):  # parts of every sender interleave
            for s in SENDERS:
                audit.observe(s, sent[s][offset:min(end, offset + PART)], offset=offset,
                              weight=samples[s])
        blocks[reducer] = [i for i, _, _ in audit.blocks]
        delivered[reducer], declared[reducer] = audit.delivered(), dict(audit.weights)
    return Round(samples=dict(samples), sent=sent, commitments=commitments, blocks=blocks,
                 delivered=delivered, declared=declared, roundtrip=roundtrip)


@pytest.fixture(scope="module")
def rnd() -> Round:
    """Uneven weights (2, 4, 8, 16 samples), float32 wire, no clipping."""
    return _make_round(UNEVEN)


@pytest.fixture(scope="module")
def even() -> Round:
    """Weights no cap binds (6, 8, 10, 12 samples), for rounds with clipping on."""
    return _make_round(EVEN, seed=1)


def _check(rnd: Round, result: torch.Tensor, report: ReducerReport | None = None, *,
           reducer: str = REDUCER, blocks=None, own: OwnPart | None = None,
           clip_factor: float = 0.0, tolerance: float = TOL, **kwargs) -> str | None:
    """``check_report`` of ``result`` (flat) as a member sketches what came back."""
    report = rnd.report(reducer) if report is None else report
    blocks = rnd.blocks[reducer] if blocks is None else blocks
    sketches, squared = sketch_blocks(_split(result), blocks, seed=SEED, dims=DIMS)
    return check_report(report, group_id=GROUP, reducer=reducer, blocks=blocks,
                        clip_factor=clip_factor, result=sketches, result_squared_norm=squared,
                        tolerance=tolerance, own=own, **kwargs)


def _sketch(flat: torch.Tensor, blocks) -> np.ndarray:
    return sketch_blocks(_split(flat), blocks, seed=SEED, dims=DIMS)[0]


def _span(block: int) -> slice:
    lo, hi = block_ranges(TOTAL)[block]
    return slice(lo, hi)


def _noise(like: torch.Tensor, relative: float, seed: int) -> torch.Tensor:
    """Gaussian noise of norm ``relative x |like|``."""
    noise = torch.randn(like.shape, generator=torch.Generator().manual_seed(seed))
    return noise * (relative * float(like.norm()) / float(noise.norm()))


@cache
def _null_basis(block: int) -> torch.Tensor:
    """Orthonormal basis (float64, ``len x dims``) of the row space of the block's projection:
    chunk ``c`` of the block is projected by ``sign[c] * R[c % BASES]``."""
    lo, hi = block_ranges(TOTAL)[block]
    assert lo % CHUNK == 0 and (hi - lo) % CHUNK == 0, "a block of whole chunks"
    first, chunks = lo // CHUNK, (hi - lo) // CHUNK
    signs = chunk_signs(SEED, first, chunks).double()
    basis = _basis(SEED, DIMS).double()
    matrix = torch.cat([signs[j] * basis[(first + j) % BASES] for j in range(chunks)])
    q, _ = torch.linalg.qr(matrix)
    return q


def _null_vector(block: int, norm: float, seed: int = 7) -> torch.Tensor:
    """A vector on ``block`` with ``P v = 0`` for the public projection, ``norm`` long: a random
    vector minus its projection onto the span of the projection's rows."""
    q = _null_basis(block)
    r = torch.randn(q.shape[0], generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    v = r - q @ (q.T @ r)
    return (v * (norm / float(v.norm()))).float()


def _shard_norm(rnd: Round, flat: torch.Tensor, reducer: str = REDUCER) -> float:
    return math.sqrt(sum(float(flat[_span(b)].square().sum()) for b in rnd.blocks[reducer]))


def _same(a: ReducerReport, b: ReducerReport) -> bool:
    fields = ("group_id", "reducer", "clip_factor", "blocks", "senders", "weights",
              "squared_norms", "complete", "clipped")
    return (all(getattr(a, f) == getattr(b, f) for f in fields)
            and a.sketches.shape == b.sketches.shape
            and np.array_equal(a.sketches.astype(np.float32), b.sketches.astype(np.float32)))


# ------------------------------------------------------------------ the round itself


def test_the_round_is_built_as_a_round_builds_it(rnd):
    """Sanity of the inputs every other test relies on."""
    assert TOTAL == 150_000 and NUM_BLOCKS == 19
    assert rnd.blocks[REDUCER] == list(range(4, 13)), "blocks wholly inside [30000, 110000)"
    assert rnd.blocks["peerB"] == list(range(14, 19))
    report = rnd.report()
    assert report.senders == SENDERS and report.weights == (2.0, 4.0, 8.0, 16.0)
    assert report.sketches.shape == (4, 9, DIMS) and all(report.complete)
    # what the reducer saw of each sender is what that sender committed to
    for i, s in enumerate(SENDERS):
        committed = rnd.commitments[s].blocks[rnd.blocks[REDUCER]]
        np.testing.assert_allclose(report.sketches[i], committed, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ wire format


def _small_report() -> ReducerReport:
    rng = np.random.default_rng(5)
    return ReducerReport(group_id="g", reducer="r", clip_factor=0.5, blocks=(1, 3),
                         senders=("a", "b", "c"), weights=(1.0, 2.0, 3.0),
                         sketches=rng.standard_normal((3, 2, 8)).astype(np.float32),
                         squared_norms=(1.0, 2.0, 3.0), complete=(True, True, False),
                         clipped=(3,))


def _parse_small(raw: object, **kwargs) -> ReducerReport:
    return ReducerReport.from_bytes(raw, dims=8, num_blocks=4, **kwargs)


_DELETE = object()


def _mutated(report: ReducerReport, **changes) -> bytes:
    data = msgpack.unpackb(report.to_bytes(), raw=False)
    for key, value in changes.items():
        if value is _DELETE:
            del data[key]
        else:
            data[key] = value
    return msgpack.packb(data, use_bin_type=True)


def _sketch_bytes(*, poison: float | None = None, drop: int = 0) -> bytes:
    values = _small_report().sketches.copy()
    if poison is not None:
        values[1, 1, 3] = poison
    return values.astype("<f4").tobytes()[: len(values.tobytes()) - drop]


def test_a_real_report_round_trips(rnd):
    report = rnd.report(clip_factor=0.5, clipped=(5, 7))
    parsed = ReducerReport.from_bytes(report.to_bytes(), dims=DIMS, num_blocks=NUM_BLOCKS)
    assert _same(parsed, report)
    assert parsed.clipped == (5, 7) and parsed.sketches.dtype == np.float32
    np.testing.assert_array_equal(parsed.expected(), report.expected())


def test_reports_without_senders_or_blocks_round_trip():
    empty = dataclasses.replace(_small_report(), senders=(), weights=(), squared_norms=(),
                                complete=(), sketches=np.zeros((0, 2, 8), np.float32))
    no_blocks = dataclasses.replace(_small_report(), blocks=(), clipped=(),
                                    sketches=np.zeros((3, 0, 8), np.float32))
    for report in (empty, no_blocks):
        assert _same(_parse_small(report.to_bytes()), report)


@pytest.mark.parametrize("raw", [
    b"", "a string", bytearray(b"\x80"), None,
    b"\xc1",                                          # a byte msgpack never uses
    b"\x85\xa1v",                                     # truncated map
    _small_report().to_bytes() + b"\x00",             # trailing bytes
    msgpack.packb([1, 2, 3]),                         # not a map
    msgpack.packb({1: 2}, use_bin_type=True),         # a non-string key
], ids=["empty", "str", "bytearray", "None", "reserved-byte", "truncated", "trailing", "list",
        "int-key"])
def test_what_is_not_a_msgpack_map_is_a_report_error(raw):
    with pytest.raises(ReportError):
        _parse_small(raw)


_NAN, _INF = float("nan"), float("inf")


@pytest.mark.parametrize("changes", [
    {"v": REPORT_VERSION + 1}, {"v": _DELETE}, {"v": "1"},
    {"group": 7}, {"group": _DELETE}, {"reducer": None}, {"reducer": b"r"},
    {"clip": -1.0}, {"clip": _NAN}, {"clip": _INF}, {"clip": 1}, {"clip": "0.5"},
    {"blocks": "13"}, {"blocks": [1, 4]}, {"blocks": [-1, 3]}, {"blocks": [3, 3]},
    {"blocks": [True, 3]}, {"blocks": [1.0, 3]}, {"blocks": _DELETE},
    {"senders": ["a", "a", "c"]}, {"senders": ["a", 2, "c"]}, {"senders": "abc"},
    {"senders": ["a", "b"]}, {"senders": ["a", "b", "c", "d"]},
    {"weights": [1.0, 2.0]}, {"weights": [1.0, -2.0, 3.0]}, {"weights": [1.0, _NAN, 3.0]},
    {"weights": [1.0, _INF, 3.0]}, {"weights": [1.0, True, 3.0]}, {"weights": [1.0, "2", 3.0]},
    {"weights": None},
    {"norms": [1.0, 2.0, 3.0, 4.0]}, {"norms": [1.0, 2.0, _NAN]}, {"norms": [-1.0, 2.0, 3.0]},
    {"complete": [True, True]}, {"complete": [1, 1, 1]}, {"complete": True},
    {"dims": 16}, {"dims": _DELETE},
    {"sketches": _sketch_bytes(drop=4)}, {"sketches": _sketch_bytes() + b"\x00" * 4},
    {"sketches": _sketch_bytes(poison=_NAN)}, {"sketches": _sketch_bytes(poison=_INF)},
    {"sketches": _sketch_bytes(poison=-_INF)}, {"sketches": [0.0] * 48},
    {"sketches": _DELETE},
    {"clipped": [1, 1]}, {"clipped": [0]}, {"clipped": [4]}, {"clipped": None},
], ids=lambda changes: "-".join(f"{k}={'deleted' if v is _DELETE else v!r}"[:40]
                                for k, v in changes.items()))
def test_every_field_is_checked(changes):
    with pytest.raises(ReportError):
        _parse_small(_mutated(_small_report(), **changes))


def test_the_reader_sets_dims_blocks_and_the_sender_limit():
    raw = _small_report().to_bytes()
    assert _parse_small(raw).senders == ("a", "b", "c")
    with pytest.raises(ReportError):
        ReducerReport.from_bytes(raw, dims=16, num_blocks=4)
    with pytest.raises(ReportError):
        ReducerReport.from_bytes(raw, dims=8, num_blocks=3)  # block 3 is out of range
    with pytest.raises(ReportError):
        _parse_small(raw, max_senders=2)


def _parse_or_error(raw: bytes) -> ReducerReport | None:
    """The parsed report, or None for a :class:`ReportError`; anything else propagates."""
    try:
        return _parse_small(raw)
    except ReportError:
        return None


def _assert_sound(report: ReducerReport) -> None:
    """What from_bytes accepts is a report that means something, and re-serialises alike."""
    n = len(report.senders)
    assert len(report.weights) == len(report.squared_norms) == len(report.complete) == n
    assert report.sketches.shape == (n, len(report.blocks), 8)
    assert np.isfinite(report.sketches).all()
    assert set(report.clipped) <= set(report.blocks)
    assert all(0 <= b < 4 for b in report.blocks)
    assert _same(_parse_small(report.to_bytes()), report)


def test_random_bytes_are_report_errors_and_nothing_else():
    rng = random.Random(11)
    junk = [rng.randbytes(rng.randrange(1, 400)) for _ in range(200)]
    junk += [bytes([0x80 | rng.randrange(16)]) + rng.randbytes(rng.randrange(40))
             for _ in range(50)]  # junk that starts as a map
    junk += [b"\x91" * 5000 + b"\x00", b"\xdd\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",
             b"\xc7\x08\xff" + b"\x00" * 8]  # deep nesting, huge lengths, an ext type
    assert all(_parse_or_error(raw) is None for raw in junk)


def test_every_truncation_of_a_report_is_a_report_error():
    raw = _small_report().to_bytes()
    assert all(_parse_or_error(raw[:i]) is None for i in range(len(raw)))


def test_byte_flips_of_a_report_parse_soundly_or_are_report_errors():
    raw = _small_report().to_bytes()
    rng = random.Random(12)
    parsed = rejected = 0
    for i in range(len(raw)):
        for value in {0x00, 0xc1, 0xff, raw[i] ^ 0x01, rng.randrange(256)} - {raw[i]}:
            report = _parse_or_error(raw[:i] + bytes([value]) + raw[i + 1:])
            if report is None:
                rejected += 1
            else:
                parsed += 1
                _assert_sound(report)
    assert rejected and parsed, "flips inside the sketches stay reports, flips of the header not"


@pytest.mark.parametrize("key", ["v", "group", "reducer", "clip", "blocks", "senders",
                                 "weights", "dims", "sketches", "norms", "complete", "clipped"])
def test_junk_in_any_field_parses_soundly_or_is_a_report_error(key):
    junk = [None, True, False, 0, 1, -1, 2**40, 1.5, _NAN, _INF, "x", b"\x00", [], [0],
            [1, 3], [3], [None], ["a", "a"], [1.0, 1.0, 1.0], [True, True, True], {"a": 1}]
    outcomes = [_parse_or_error(_mutated(_small_report(), **{key: value})) for value in junk]
    for report in outcomes:
        if report is not None:
            _assert_sound(report)
    assert any(r is None for r in outcomes)


# ------------------------------------------------------------------ check_report: honest


def test_an_honest_result_passes_for_every_member(rnd):
    result = rnd.mean()
    assert _check(rnd, result) is None
    for peer in SENDERS:
        assert _check(rnd, result, own=rnd.own(peer)) is None, peer


def test_an_honest_result_passes_on_a_second_reducer(rnd):
    assert _check(rnd, rnd.mean(), reducer="peerB", own=rnd.own("peerC")) is None


def test_an_honest_fp16_round_passes_at_the_fp16_tolerance():
    """Parts and result are rounded to float16 on the wire; commitments are of float32."""
    fp16 = _make_round(UNEVEN, roundtrip=lambda x: x.half().float(), seed=2)
    tolerance = block_tolerance("fp16")
    assert tolerance > TOL
    result = fp16.mean()
    assert torch.equal(result, result.half().float()), "the result came back rounded"
    for peer in SENDERS:
        assert _check(fp16, result, own=fp16.own(peer), tolerance=tolerance) is None, peer
    assert _check(fp16, 1.05 * result, tolerance=tolerance) is not None


def test_a_report_of_no_blocks_passes(rnd):
    report = dataclasses.replace(rnd.report(), blocks=(),
                                 sketches=np.zeros((4, 0, DIMS), np.float32))
    problem = check_report(report, group_id=GROUP, reducer=REDUCER, blocks=[], clip_factor=0.0,
                           result=np.zeros((0, DIMS)), result_squared_norm=0.0, tolerance=TOL)
    assert problem is None


# ------------------------------------------------------------------ check_report: wrong results

_SHARD = slice(*SHARDS[REDUCER])
_BLOCK = 7  # one audited block of the reducer's shard


def _on_shard(rnd: Round, change) -> torch.Tensor:
    result = rnd.mean().clone()
    result[_SHARD] = change(result[_SHARD].clone())
    return result


def _on_block(rnd: Round, change, block: int = _BLOCK) -> torch.Tensor:
    result = rnd.mean().clone()
    result[_span(block)] = change(result[_span(block)].clone())
    return result


def _moved(x: torch.Tensor) -> torch.Tensor:
    return torch.roll(x, 1)


def _swap_blocks(rnd: Round) -> torch.Tensor:
    result = rnd.mean().clone()
    a, b = _span(5), _span(6)
    result[a], result[b] = result[b].clone(), result[a].clone()
    return result


def _hidden(rnd: Round) -> torch.Tensor:
    result = rnd.mean().clone()
    result[_span(_BLOCK)] += _null_vector(_BLOCK, 1.5 * _shard_norm(rnd, result))
    return result


def _scaled(k: float):
    return lambda rnd: _on_shard(rnd, lambda x: k * x)


def _noised(relative: float):
    return lambda rnd: _on_shard(rnd, lambda x: x + _noise(x, relative, 3))


CORRUPTIONS = {
    **{f"scaled-{k:g}": _scaled(k) for k in (-1, 0.5, 0.99, 1.01, 1.5, 3)},
    **{f"noise-{rel:g}": _noised(rel) for rel in (0.05, 0.2, 1.0, 5.0)},
    "one-block-noise-5%": lambda r: _on_block(r, lambda x: x + _noise(x, 0.05, 4)),
    "one-block-sign-flip": lambda r: _on_block(r, lambda x: -x),
    "one-block-zeroed": lambda r: _on_block(r, torch.zeros_like),
    "last-block-scaled": lambda r: _on_block(r, lambda x: 1.2 * x, block=12),
    "values-moved-by-one": lambda r: _on_shard(r, _moved),
    "two-blocks-swapped": _swap_blocks,
    "zeroed": lambda r: _on_shard(r, torch.zeros_like),
    "constant-shift": lambda r: _on_shard(r, lambda x: x + 0.1),
    "unweighted-mean": lambda r: r.mean(dict.fromkeys(SENDERS, 1.0)),
    "one-sender-only": lambda r: r.mean({"peerD": 1.0}),
    "a-sender-left-out": lambda r: r.mean({s: w for s, w in UNEVEN.items() if s != "peerD"}),
    "weights-reversed": lambda r: r.mean(dict(zip(SENDERS, (16, 8, 4, 2), strict=True))),
    "hidden-from-the-sketch": _hidden,
}


@pytest.mark.parametrize("corruption", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_a_wrong_result_is_caught(rnd, corruption):
    result = corruption(rnd)
    assert not torch.allclose(result[_SHARD], rnd.mean()[_SHARD]), "the corruption changes it"
    assert _check(rnd, result) is not None
    assert _check(rnd, result, own=rnd.own("peerB")) is not None


def test_a_wrong_result_outside_the_shard_is_no_problem_of_this_reducer(rnd):
    result = rnd.mean().clone()
    result[: SHARDS[REDUCER][0]] *= 3  # another reducer's shard
    assert _check(rnd, result) is None
    assert _check(rnd, result, reducer="peerB") is None


def test_the_problem_names_the_block_that_is_wrong(rnd):
    problem = _check(rnd, _on_block(rnd, lambda x: -x))
    assert problem is not None and f"block {_BLOCK} " in problem and "weighted mean" in problem


def test_the_constructed_null_vector_is_invisible_to_the_sketch(rnd):
    v = torch.zeros(TOTAL)
    v[_span(_BLOCK)] = _null_vector(_BLOCK, 100.0)
    seen = _sketch(v, [_BLOCK])
    assert float(np.linalg.norm(seen)) < 1e-4 * 100.0
    random_vector = torch.zeros(TOTAL)
    random_vector[_span(_BLOCK)] = _noise(v[_span(_BLOCK)], 1.0, 9)
    assert float(np.linalg.norm(_sketch(random_vector, [_BLOCK]))) > 50.0  # JL: ~ |v|


def test_a_hidden_vector_passes_the_sketch_and_fails_the_norm(rnd):
    result = _hidden(rnd)
    assert _check(rnd, result, norm_bounds=(0.0, math.inf)) is None, "the sketch cannot see it"
    problem = _check(rnd, result)
    assert problem is not None and "norm" in problem


def test_a_hidden_vector_below_the_norm_bound_passes(rnd):
    """The documented bound: ``|v| < 0.83 |g|`` stays hidden (``sqrt(1 + a^2) <= 1.3``)."""
    result = rnd.mean().clone()
    result[_span(_BLOCK)] += _null_vector(_BLOCK, 0.4 * _shard_norm(rnd, result))
    assert math.sqrt(1 + 0.4**2) < NORM_RATIO_BOUNDS[1]
    assert _check(rnd, result) is None


def test_a_result_missing_its_values_fails_the_norm(rnd):
    """Claiming a zero sum of squares for a result whose sketch is not zero."""
    sketches, _ = sketch_blocks(_split(rnd.mean()), rnd.blocks[REDUCER], seed=SEED, dims=DIMS)
    problem = check_report(rnd.report(), group_id=GROUP, reducer=REDUCER,
                           blocks=rnd.blocks[REDUCER], clip_factor=0.0, result=sketches,
                           result_squared_norm=0.0, tolerance=TOL)
    assert problem is not None and "norm" in problem


# ------------------------------------------------------------------ check_report: "my part"


def _explained(rnd: Round, report: ReducerReport, victim: str, delta: torch.Tensor):
    """A wrong result ``mean + delta`` and a report consistent with it, made so by inventing
    ``victim``'s part: its sketch absorbs ``delta``'s (the mean is linear)."""
    i = report.senders.index(victim)
    share = report.mean_weights()[i]
    sketches = report.sketches.astype(np.float64).copy()
    sketches[i] += _sketch(delta, report.blocks) / share
    return rnd.mean() + delta, dataclasses.replace(report, sketches=sketches.astype(np.float32))


def test_a_result_explained_by_an_invented_part_is_caught_by_that_member_only(rnd):
    delta = torch.zeros(TOTAL)
    delta[_SHARD] = _noise(rnd.mean()[_SHARD], 0.3, 5)
    result, lie = _explained(rnd, rnd.report(), "peerB", delta)
    assert _check(rnd, result, lie) is None, "consistent: only peerB can tell"
    problem = _check(rnd, result, lie, own=rnd.own("peerB"))
    assert problem is not None and "misreports this member's part" in problem
    assert _check(rnd, result, lie, own=rnd.own("peerC")) is None


@pytest.mark.parametrize("k", [0.0, 0.5, 1.5, -1.0])
def test_a_scaled_own_part_is_caught(rnd, k):
    report = rnd.report()
    sketches = report.sketches.copy()
    sketches[1] *= k
    problem = _check(rnd, rnd.mean(), dataclasses.replace(report, sketches=sketches),
                     own=rnd.own("peerB"))
    assert problem is not None and "misreports this member's part" in problem


def test_an_own_part_replaced_by_another_senders_is_caught(rnd):
    report = rnd.report()
    sketches = report.sketches.copy()
    sketches[1] = sketches[2]  # peerB's row now holds peerC's part
    lie = dataclasses.replace(report, sketches=sketches)
    problem = _check(rnd, rnd.mean(), lie, own=rnd.own("peerB"))
    assert problem is not None and "misreports" in problem


def test_a_misstated_weight_is_caught_by_its_member(rnd):
    """The reducer doubles peerB's weight and returns the mean at that weighting."""
    weights = {**UNEVEN, "peerB": 2 * UNEVEN["peerB"]}
    report = dataclasses.replace(rnd.report(), weights=tuple(float(weights[s]) for s in SENDERS))
    result = rnd.mean(weights)
    assert _check(rnd, result, report) is None, "consistent with itself"
    problem = _check(rnd, result, report, own=rnd.own("peerB"))
    assert problem is not None and "weight" in problem
    assert _check(rnd, result, report, own=rnd.own("peerC")) is None


def test_a_member_left_out_of_the_report_is_caught_by_it(rnd):
    report = rnd.report(without=("peerB",))
    result = rnd.mean({s: w for s, w in UNEVEN.items() if s != "peerB"})
    assert _check(rnd, result, report) is None
    problem = _check(rnd, result, report, own=rnd.own("peerB"))
    assert problem is not None and "leaves out" in problem


@pytest.mark.parametrize("k", [0.5, 3.0, -1.0])
def test_a_cover_report_passes_the_mean_and_fails_my_part(rnd, k):
    """Every sender's sketch and the result scaled by ``k``: the mean is consistent."""
    report = rnd.report()
    cover = dataclasses.replace(report, sketches=(report.sketches * k).astype(np.float32))
    result = k * rnd.mean()
    assert _check(rnd, result, cover) is None
    for peer in SENDERS:
        problem = _check(rnd, result, cover, own=rnd.own(peer))
        assert problem is not None and "misreports" in problem, peer


@pytest.mark.parametrize(("error", "passes"), [(TOL / 10, True), (TOL * 10, False)])
def test_my_part_is_held_to_the_wire_tolerance(rnd, error, passes):
    report = rnd.report()
    sketches = report.sketches.astype(np.float64).copy()
    sketches[1] *= 1 + error
    off = dataclasses.replace(report, sketches=sketches.astype(np.float32))
    problem = _check(rnd, rnd.mean(), off, own=rnd.own("peerB"))
    assert (problem is None) == passes, problem


# ------------------------------------------------------------------ check_report: clipped blocks


def _median_on(rnd: Round, block: int) -> torch.Tensor:
    """The mean everywhere, the senders' coordinate-wise median on ``block`` (what a centered
    clip starts from: inside the senders' spread)."""
    result = rnd.mean().clone()
    parts = torch.stack([rnd.sent[s][_span(block)] for s in SENDERS])
    result[_span(block)] = parts.median(dim=0).values
    return result


def test_a_clipped_block_may_lie_within_the_senders_spread(even):
    result = _median_on(even, _BLOCK)
    clipped = even.report(clip_factor=1.0, clipped=(_BLOCK,))
    assert _check(even, result, clipped, clip_factor=1.0, own=even.own("peerC")) is None
    problem = _check(even, result, even.report(clip_factor=1.0), clip_factor=1.0)
    assert problem is not None and f"block {_BLOCK} " in problem, "not declared clipped"


@pytest.mark.parametrize("factor", [10.0, -3.0])
def test_a_clipped_block_far_outside_the_spread_fails(even, factor):
    result = _on_block(even, lambda x: factor * x)
    clipped = even.report(clip_factor=1.0, clipped=(_BLOCK,))
    problem = _check(even, result, clipped, clip_factor=1.0)
    assert problem is not None and "clipped block" in problem and "spread" in problem


def test_the_spread_allowance_is_hull_slack_times_the_spread(even):
    report = even.report(clip_factor=1.0, clipped=(_BLOCK,))
    row = report.blocks.index(_BLOCK)
    mean = report.expected()[row]
    spread = math.sqrt(sum(float(np.linalg.norm(s[row] - mean)) ** 2
                           for s in report.sketches.astype(np.float64)))
    # move the clipped block along a direction of the senders' spread
    direction = torch.zeros(TOTAL)
    direction[_span(_BLOCK)] = even.sent["peerD"][_span(_BLOCK)] - even.mean()[_span(_BLOCK)]
    unit = float(np.linalg.norm(_sketch(direction, [_BLOCK])))
    for scale, passes in ((0.9 * HULL_SLACK, True), (1.1 * HULL_SLACK, False)):
        result = even.mean() + direction * (scale * spread / unit)
        assert (_check(even, result, report, clip_factor=1.0) is None) == passes, scale


def test_only_the_clipped_block_is_exempt_from_the_mean(even):
    result = _median_on(even, 6)
    report = even.report(clip_factor=1.0, clipped=(_BLOCK,))  # 6 is not the clipped one
    problem = _check(even, result, report, clip_factor=1.0)
    assert problem is not None and "block 6 " in problem


def test_with_clipping_on_odd_groups_cap_weights_as_the_reducer_does():
    """Three senders of 2, 4, 16 samples: capped at 2 x median (8) the last one counts 8."""
    three = {"peerA": 2, "peerB": 4, "peerC": 16}
    rnd = _make_round({**three, "peerD": 1}, seed=3)
    report = rnd.report(clip_factor=1.0, without=("peerD",))
    capped = rnd.mean({"peerA": 2, "peerB": 4, "peerC": 8})
    assert _check(rnd, capped, report, clip_factor=1.0) is None
    assert _check(rnd, rnd.mean(three), report, clip_factor=1.0) is not None, "uncapped"
    assert _check(rnd, rnd.mean(three), rnd.report(without=("peerD",))) is None, "clip off"


def test_with_clipping_on_even_groups_cap_weights_as_the_reducer_does(rnd):
    from hivemind_utils.robust import centered_clip  # the reducer's own rule

    result = rnd.mean().clone()
    parts = [rnd.sent[s][_SHARD] for s in SENDERS]
    # a clip factor no part exceeds: nothing is clipped, the result is the capped weighted mean
    result[_SHARD] = centered_clip(parts, [UNEVEN[s] for s in SENDERS], clip_factor=1e6)
    assert _check(rnd, result, rnd.report(clip_factor=1e6), clip_factor=1e6) is None


# ------------------------------------------------------------------ check_report: wrong report


@pytest.mark.parametrize("case", [
    "group", "reducer", "fewer-blocks", "more-blocks", "other-blocks", "clip-factor",
    "incomplete",
])
def test_a_report_of_another_round_reducer_or_shard_fails(rnd, case):
    report, kwargs = rnd.report(), {}
    blocks = rnd.blocks[REDUCER]
    if case == "group":
        report = dataclasses.replace(report, group_id="ff" * 16)
    elif case == "reducer":
        report = dataclasses.replace(report, reducer="peerC")
    elif case == "fewer-blocks":
        kwargs["blocks"] = blocks + [13]  # the member's partition holds one more
    elif case == "more-blocks":
        kwargs["blocks"] = blocks[1:]
    elif case == "other-blocks":
        report = rnd.report("peerB")
    elif case == "clip-factor":
        kwargs["clip_factor"] = 1.0
    elif case == "incomplete":
        report = dataclasses.replace(report, complete=(True, False, True, True))
    problem = _check(rnd, rnd.mean(), report, own=rnd.own("peerB"), **kwargs)
    assert problem is not None


def test_a_report_served_for_another_reducer_fails_even_if_its_numbers_fit(rnd):
    report = dataclasses.replace(rnd.report(), reducer="peerC")
    problem = _check(rnd, rnd.mean(), report)
    assert problem is not None and "another round or reducer" in problem


# ------------------------------------------------------------------ judge_reports


def _reports(rnd: Round, **overrides: ReducerReport) -> dict[str, ReducerReport]:
    return {**{r: rnd.report(r) for r in SHARDS}, **overrides}


def _misstating(report: ReducerReport, *senders: str, k: float = 1.5) -> ReducerReport:
    sketches = report.sketches.copy()
    for s in senders:
        sketches[report.senders.index(s)] *= k
    return dataclasses.replace(report, sketches=sketches)


def _judge(rnd: Round, reports, accusations=None, *, members=SENDERS, tampered=()):
    accusations = {m: [] for m in members} if accusations is None else accusations
    return judge_reports(reports, rnd.commitments, accusations, members=list(members),
                         tolerance=TOL, tampered=tampered)


def test_honest_reports_gate_nobody(rnd):
    assert _judge(rnd, _reports(rnd)) == {}


@pytest.mark.parametrize("liars", [("peerB", "peerC"), ("peerB", "peerC", "peerD")])
def test_a_report_disagreeing_with_two_or_more_senders_gates_the_reducer_alone(rnd, liars):
    gated = _judge(rnd, _reports(rnd, peerA=_misstating(rnd.report(), *liars)))
    assert set(gated) == {"peerA"} and f"{len(liars)} senders" in gated["peerA"]


def test_a_cover_report_gates_its_reducer(rnd):
    cover = _misstating(rnd.report(), *SENDERS, k=3.0)
    assert set(_judge(rnd, _reports(rnd, peerA=cover))) == {"peerA"}


def test_a_disagreement_with_one_sender_gates_both(rnd):
    gated = _judge(rnd, _reports(rnd, peerA=_misstating(rnd.report(), "peerC")))
    assert set(gated) == {"peerA", "peerC"}


def test_a_misstated_weight_is_a_disagreement(rnd):
    report = rnd.report()
    weights = list(report.weights)
    weights[SENDERS.index("peerD")] *= 2
    gated = _judge(rnd, _reports(rnd, peerA=dataclasses.replace(report, weights=tuple(weights))))
    assert set(gated) == {"peerA", "peerD"}


def test_a_disagreement_with_a_tampered_sender_is_explained(rnd):
    reports = _reports(rnd, peerA=_misstating(rnd.report(), "peerC"))
    assert _judge(rnd, reports, tampered=["peerC"]) == {}
    assert set(_judge(rnd, reports, tampered=["peerD"])) == {"peerA", "peerC"}


def test_two_disputes_are_no_less_a_lie_when_one_sender_is_tampered(rnd):
    reports = _reports(rnd, peerA=_misstating(rnd.report(), "peerB", "peerC"))
    assert set(_judge(rnd, reports, tampered=["peerC"])) == {"peerA"}


def test_a_reducer_misstating_only_its_own_part_disputes_nobody(rnd):
    assert _judge(rnd, _reports(rnd, peerA=_misstating(rnd.report(), "peerA"))) == {}


def test_disputes_are_per_report(rnd):
    """peerB's report misstates peerA's part: peerB and peerA are gated, peerA's report is
    honest."""
    gated = _judge(rnd, _reports(rnd, peerB=_misstating(rnd.report("peerB"), "peerA")))
    assert set(gated) == {"peerA", "peerB"}
    assert "peerA's commitment" in gated["peerB"] and "peerB's report" in gated["peerA"]


def test_a_sender_without_a_commitment_is_no_dispute(rnd):
    commitments = {s: c for s, c in rnd.commitments.items() if s != "peerC"}
    reports = _reports(rnd, peerA=_misstating(rnd.report(), "peerC"))
    assert judge_reports(reports, commitments, {m: [] for m in SENDERS}, members=SENDERS,
                         tolerance=TOL) == {}


@pytest.mark.parametrize(("accusers", "gated"), [
    (("peerB", "peerC", "peerD"), True),
    (("peerB", "peerC"), True),
    (("peerB",), False),
    ((), False),
])
def test_a_reducer_accused_by_a_majority_of_the_others_is_gated(rnd, accusers, gated):
    accusations = {m: ["peerA"] if m in accusers else [] for m in SENDERS}
    assert ("peerA" in _judge(rnd, _reports(rnd), accusations)) == gated
    assert set(_judge(rnd, _reports(rnd), accusations)) <= {"peerA"}


def test_a_tie_is_no_majority(rnd):
    members = (*SENDERS, "peerE")  # four voters besides peerA
    accusations = {m: ["peerA"] if m in ("peerB", "peerC") else [] for m in members}
    assert _judge(rnd, _reports(rnd), accusations, members=members) == {}
    accusations["peerD"] = ["peerA"]
    assert set(_judge(rnd, _reports(rnd), accusations, members=members)) == {"peerA"}


def test_a_self_accusation_is_no_vote(rnd):
    members = SENDERS  # peerD sends no answer: two voters besides peerA
    accusations = {"peerA": ["peerA"], "peerB": ["peerA"], "peerC": []}
    assert _judge(rnd, _reports(rnd), accusations, members=members) == {}, "1 of 2, not 2 of 3"
    accusations["peerC"] = ["peerA"]
    assert set(_judge(rnd, _reports(rnd), accusations, members=members)) == {"peerA"}


def test_only_members_that_answered_vote(rnd):
    """peerD sent no answer: the voters are peerB and peerC."""
    accusations = {"peerA": [], "peerB": ["peerA"], "peerC": ["peerA"]}
    assert set(_judge(rnd, _reports(rnd), accusations)) == {"peerA"}
    accusations["peerC"] = []
    assert _judge(rnd, _reports(rnd), accusations) == {}


def test_accusations_by_non_members_are_no_votes(rnd):
    """One member and three outsiders accuse peerA: 1 of 3 members is no majority."""
    outsiders = {f"outsider{i}": ["peerA"] for i in range(3)}
    accusations = {m: [] for m in SENDERS} | {"peerB": ["peerA"]} | outsiders
    assert _judge(rnd, _reports(rnd), accusations) == {}


def test_an_accusation_and_a_dispute_gate_each_once(rnd):
    accusations = {m: ["peerA"] for m in ("peerB", "peerC", "peerD")} | {"peerA": []}
    reports = _reports(rnd, peerA=_misstating(rnd.report(), "peerB", "peerC"))
    gated = _judge(rnd, reports, accusations)
    assert set(gated) == {"peerA"} and "misstates" in gated["peerA"], "the first reason stays"


def test_a_report_that_invents_a_sender_is_refused_and_gated(rnd):
    """A reducer explains a poisoned result with a sender nobody in the group is: its made-up
    part, at a large weight, makes the report consistent with the result; only the group's
    membership betrays it, to every member and to the validator."""
    ghost = "peerGhost"
    poison = _noise(rnd.sent[SENDERS[0]], 5.0, seed=3)
    honest = rnd.report()
    weights = {**rnd.samples, ghost: 1000.0}
    total = sum(weights.values())
    result = sum(rnd.sent[s] * (w / total) for s, w in rnd.samples.items()) + poison * (
        1000.0 / total)
    forged_delivery = ShardAudit(shard=SHARDS[REDUCER], total=TOTAL, seeds={ghost: SEED})
    start, end = SHARDS[REDUCER]
    forged_delivery.observe(ghost, poison[start:end], offset=start, weight=1000.0)
    forged = build_report(group_id=GROUP, reducer=REDUCER, clip_factor=0.0,
                          blocks=rnd.blocks[REDUCER],
                          delivered={**rnd.delivered[REDUCER], **forged_delivery.delivered()},
                          weights={**rnd.declared[REDUCER], ghost: 1000.0}, dims=DIMS)
    assert honest.senders != forged.senders
    for member in SENDERS:  # consistent without the group's membership...
        assert _check(rnd, result, forged, own=rnd.own(member)) is None
        problem = _check(rnd, result, forged, own=rnd.own(member), members=[*SENDERS, REDUCER])
        assert problem is not None and "outside the group" in problem, problem
    gated = judge_reports({REDUCER: forged}, rnd.commitments, {m: [] for m in SENDERS},
                          members=SENDERS, tolerance=TOL)
    assert set(gated) == {REDUCER}, gated
