"""Wire protocol between validators and miners: `Train`, `AllReduce` and `IsAlive` synapses.

Synapses are bittensor 10.5 ``Synapse`` subclasses (pydantic models) carried by Axon/Dendrite.
They stay small on purpose: JSON plus bittensor's body hash costs seconds per million floats
(NOTES), so bulk tensors never travel here; a miner proves its work with gradient *sketches*
(a few hundred floats per batch) and a parameter *fingerprint* (see :mod:`template.projection`).

Two layers of defence against bad input from the network:

1. Hard caps in the pydantic schema (list lengths, finite floats, non-negative integers). A
   payload over a cap cannot be parsed at all: the Axon answers it with an error status before
   any handler runs, and the Dendrite turns such a response into a failed synapse.
2. Pure checks (``validate_*``) that return a typed :class:`Rejection` (a :class:`Reason` plus
   a detail string) or ``None``. They repeat the schema checks explicitly (a synapse built with
   ``model_construct`` skips pydantic) and add what the schema cannot know: the expected epoch,
   nonce, round id and sketch seed, duplicate indices, matching lengths and dimensions. They
   never raise on bad data.

Sketch seed. A miner computes its sketches while training, before any request arrives, so the
seed cannot depend on the validator's nonce; it is :func:`template.proof.sketch_seed` of
``(run_id, epoch)``, known to everyone in advance, and the miner echoes it. What stops
precomputed fakes is that the validator recomputes the gradients of randomly chosen reported
batches at the epoch's weights. The validator's nonce makes each response unique to its request
(the miner must echo it), so a response cannot be replayed to another validator or round.
"""

from __future__ import annotations

import enum
import functools
import math
import re
from dataclasses import dataclass
from typing import Annotated

import bittensor as bt
from pydantic import Field

# ---------------------------------------------------------------- hard caps (schema level)

MAX_EPOCH = 2**31 - 1
MAX_NONCE = 2**63 - 1
MAX_BATCHES = 64
"""Most batches (and sketches) one Train response may report."""
MAX_SKETCH_DIMS = 256
"""Most floats in one gradient sketch (``template.proof.SKETCH_DIMS`` is 256)."""
MAX_PAGES = 1024
"""Most page indices one Train response may report."""
MAX_FINGERPRINT_DIMS = 512
"""Most floats in a parameter fingerprint."""
MAX_PARTICIPANTS = 256
"""Most peer ids an AllReduce response may list."""
MAX_PEER_ID_LEN = 128
MAX_ROUND_ID_LEN = 128
MAX_ERROR_LEN = 512
MAX_COMMITMENT_LEN = 2**19
"""Most base64 characters of an AllReduce commitment (32 block sketches and 64 batch sketches of
256 float32 are ~130 kB of base64)."""
MAX_INDEX = 2**40
"""Largest page or batch index (page indices address FineWeb rows; 2**40 is ample)."""

_PEER_ID_RE = re.compile(rf"^[1-9A-HJ-NP-Za-km-z]{{20,{MAX_PEER_ID_LEN}}}$")  # base58
_ROUND_ID_RE = re.compile(rf"^[A-Za-z0-9_.:-]{{1,{MAX_ROUND_ID_LEN}}}$")

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Index = Annotated[int, Field(ge=0, le=MAX_INDEX)]
PeerIdStr = Annotated[str, Field(max_length=MAX_PEER_ID_LEN)]
Sketch = Annotated[list[FiniteFloat], Field(max_length=MAX_SKETCH_DIMS)]


# ---------------------------------------------------------------- synapses


@functools.cache
def _required_fields(cls: type[bt.Synapse]) -> tuple[str, ...]:
    return tuple(cls.model_json_schema().get("required", []))


class _Lean(bt.Synapse):
    """Two bittensor per-call costs, replaced by equivalents (both sides of every call):

    - ``get_required_fields`` regenerates the class's whole JSON schema on each ``to_headers``
      (~25 ms); the answer depends only on the class, so it is computed once.
    - ``get_total_size`` walks every list element with ``sys.getsizeof`` (~20 ms for 16k
      floats); it only feeds a logging header, so an O(fields) estimate replaces it.
    """

    def get_required_fields(self) -> list[str]:
        return list(_required_fields(type(self)))

    def get_total_size(self) -> int:
        size = 0
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, list):
                inner = sum(len(v) for v in value if isinstance(v, list))
                size += 8 * (len(value) + inner)
            else:
                size += 8
        self.total_size = size
        return size


class Train(_Lean):
    """Proof of work for one epoch: what the miner trained and evidence to check it.

    Request (validator sets): ``epoch``, ``nonce``, ``max_batches``.
    Response (miner sets): everything else. The miner returns the synapse with the request
    fields unchanged; the validator checks them with :func:`validate_train_response`.
    """

    required_hash_fields = ("epoch", "nonce", "max_batches")  # signed by the validator

    # request
    epoch: int = Field(0, ge=0, le=MAX_EPOCH, description="Epoch the validator asks about.")
    nonce: int = Field(0, ge=0, le=MAX_NONCE, description="Validator nonce; echoed unchanged.")
    max_batches: int = Field(
        MAX_BATCHES, ge=1, le=MAX_BATCHES,
        description="Report at most this many batches (the first ones of the epoch).",
    )
    # response
    loss: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="Mean training loss over the epoch so far."
    )
    pages: list[Index] = Field(
        default_factory=list, max_length=MAX_PAGES,
        description="Page indices trained this epoch (from assign_pages; unique).",
    )
    batches: list[Index] = Field(
        default_factory=list, max_length=MAX_BATCHES,
        description="Positions in the epoch's batch stream of the reported batches (unique).",
    )
    samples: int = Field(0, ge=0, description="Sequences trained this epoch (all batches).")
    sketches: list[Sketch] = Field(
        default_factory=list, max_length=MAX_BATCHES,
        description="One gradient sketch per entry of `batches`, same order.",
    )
    sketch_seed: int = Field(0, ge=0, le=MAX_NONCE, description="proof.sketch_seed(run, epoch).")
    peer_id: PeerIdStr = Field("", description="The miner's hivemind PeerID (base58).")
    model_fingerprint: list[FiniteFloat] = Field(
        default_factory=list, max_length=MAX_FINGERPRINT_DIMS,
        description="Fingerprint of the parameters the miner trained at (theta_epoch).",
    )
    error: str = Field("", max_length=MAX_ERROR_LEN, description="Why the miner has no answer.")


class AllReduce(_Lean):
    """Start one gradient averaging round; the miner answers when its round is over.

    Request: ``epoch``, ``round_id``, group settings, timeouts and the learning rate to apply.
    Response: ``success`` and what the miner observed. The Dendrite timeout must exceed
    ``matchmaking_time + allreduce_timeout`` or the validator gives up before the miner answers.
    """

    required_hash_fields = (
        "epoch", "round_id", "target_group_size", "min_group_size",
        "matchmaking_time", "allreduce_timeout", "learning_rate", "expected_peers",
    )

    # request
    epoch: int = Field(0, ge=0, le=MAX_EPOCH)
    round_id: str = Field("", max_length=MAX_ROUND_ID_LEN, description="Unique id of the round.")
    target_group_size: int = Field(32, ge=1, le=MAX_PARTICIPANTS)
    min_group_size: int = Field(2, ge=1, le=MAX_PARTICIPANTS)
    matchmaking_time: float = Field(5.0, gt=0, le=3600, allow_inf_nan=False)
    allreduce_timeout: float = Field(60.0, gt=0, le=3600, allow_inf_nan=False)
    learning_rate: float = Field(1e-3, ge=0, le=10, allow_inf_nan=False)
    expected_peers: list[PeerIdStr] = Field(
        default_factory=list, max_length=MAX_PARTICIPANTS,
        description="PeerIDs of the round's members (the participants' bound PeerIDs and the "
                    "validator's own peer): the group forms as soon as all of them joined.",
    )
    # response
    success: bool = False
    peer_id: PeerIdStr = ""
    participants: list[PeerIdStr] = Field(default_factory=list, max_length=MAX_PARTICIPANTS)
    bytes_sent: int = Field(0, ge=0)
    bytes_received: int = Field(0, ge=0)
    seconds: float = Field(0.0, ge=0, allow_inf_nan=False)
    fingerprint: list[FiniteFloat] = Field(
        default_factory=list, max_length=MAX_FINGERPRINT_DIMS,
        description="Fingerprint of the parameters after the optimizer step.",
    )
    error: str = Field("", max_length=MAX_ERROR_LEN)
    commitment: str = Field(
        "", max_length=MAX_COMMITMENT_LEN,
        description="Base64 contribution commitment whose digest the miner gathered before the "
                    "round (template/contribution.py).",
    )
    accused: list[PeerIdStr] = Field(
        default_factory=list, max_length=MAX_PARTICIPANTS,
        description="Reducers whose result the miner refused to apply (template/reduction.py); "
                    "`error` says why.",
    )


class IsAlive(_Lean):
    """Cheap liveness probe: is the miner up, at which epoch, under which PeerID."""

    alive: bool = False
    epoch: int = Field(0, ge=0, le=MAX_EPOCH)
    peer_id: PeerIdStr = ""


# ---------------------------------------------------------------- typed rejections


class Reason(str, enum.Enum):
    """Why a synapse was not accepted. Values are stable strings (logged and scored)."""

    UNREACHABLE = "unreachable"  # connection refused / reset / timed out / non-200 status
    TIMEOUT = "timeout"
    BLACKLISTED = "blacklisted"  # the axon refused our hotkey (403)
    UNVERIFIED = "unverified"  # signature / body hash / nonce check failed (401, 400)
    MALFORMED = "malformed"  # wrong types or shape, unparsable
    TOO_LARGE = "too_large"
    NOT_FINITE = "not_finite"
    NEGATIVE = "negative"
    DUPLICATE = "duplicate"
    WRONG_EPOCH = "wrong_epoch"
    WRONG_NONCE = "wrong_nonce"
    WRONG_ROUND = "wrong_round"
    WRONG_SEED = "wrong_seed"
    INCONSISTENT = "inconsistent"  # lengths or dimensions that do not fit together
    MINER_ERROR = "miner_error"  # the miner answered with an error / success=False
    BUSY = "busy"  # the miner refused a round it cannot hold now (429): retry later
    NOT_VERIFIABLE = "not_verifiable"  # the validator's own data cannot check it: no blame


@dataclass(frozen=True)
class Rejection:
    reason: Reason
    detail: str

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"


@dataclass(frozen=True)
class TrainLimits:
    """What a validator accepts in a Train response (tighter than the schema caps)."""

    sketch_dims: int | None = None
    """Exact sketch length expected (None: any length up to MAX_SKETCH_DIMS)."""
    fingerprint_dims: int | None = None
    """Exact fingerprint length expected (None: any length up to MAX_FINGERPRINT_DIMS)."""
    max_pages: int = MAX_PAGES
    max_samples: int = 10**9
    max_loss: float = 100.0


@dataclass(frozen=True)
class AllReduceLimits:
    fingerprint_dims: int | None = None
    max_participants: int = MAX_PARTICIPANTS
    max_bytes: int = 2**50


# ---------------------------------------------------------------- pure checks (helpers)

_PYDANTIC_REASONS = (
    ("type=finite_number", Reason.NOT_FINITE),
    ("type=too_long", Reason.TOO_LARGE),
    ("type=string_too_long", Reason.TOO_LARGE),
    ("type=less_than_equal", Reason.TOO_LARGE),
    ("type=greater_than_equal", Reason.NEGATIVE),
)


REJECTED_PREFIX = "rejected request: "
"""Start of the status message of a request the miner's checks refused (status 422), followed
by ``str(Rejection)``: ``rejected request: inconsistent: need 1 <= ...``."""


def _reason_of(text: str) -> Reason:
    value = text.split(":", 1)[0].strip()
    return next((r for r in Reason if r.value == value), Reason.MALFORMED)


def transport_rejection(syn: bt.Synapse) -> Rejection | None:
    """A rejection when the Dendrite call itself failed (status != 200), else None.

    The Dendrite reports a response that failed schema validation as status 422 with
    pydantic's message; the error type in that message gives the reason (NaN -> not_finite).
    """
    status = syn.dendrite.status_code if syn.dendrite is not None else None
    message = (syn.dendrite.status_message if syn.dendrite is not None else "") or ""
    if status is None or int(status) == 200:
        return None
    code = int(status)
    if code == 403:
        return Rejection(Reason.BLACKLISTED, message)
    if code in (401, 400):
        return Rejection(Reason.UNVERIFIED, message)
    if code in (408, 504):
        return Rejection(Reason.TIMEOUT, message)
    if code == 429:
        return Rejection(Reason.BUSY, message[:MAX_ERROR_LEN])
    if code == 413:
        return Rejection(Reason.TOO_LARGE, message[:MAX_ERROR_LEN])
    if code == 422 and message.startswith(REJECTED_PREFIX):
        return Rejection(_reason_of(message[len(REJECTED_PREFIX):]), message[:MAX_ERROR_LEN])
    if code == 422:
        for marker, reason in _PYDANTIC_REASONS:
            if marker in message:
                return Rejection(reason, message[:MAX_ERROR_LEN])
        return Rejection(Reason.MALFORMED, message[:MAX_ERROR_LEN])
    return Rejection(Reason.UNREACHABLE, f"status {code}: {message}"[:MAX_ERROR_LEN])


def check_floats(name: str, values: object, *, max_len: int, dims: int | None = None,
                 ) -> Rejection | None:
    """A list of finite floats of at most ``max_len`` (exactly ``dims`` when given)."""
    if not isinstance(values, (list, tuple)):
        return Rejection(Reason.MALFORMED, f"{name} is not a list")
    if len(values) > max_len:
        return Rejection(Reason.TOO_LARGE, f"{name} has {len(values)} values > {max_len}")
    if dims is not None and len(values) != dims:
        return Rejection(Reason.INCONSISTENT, f"{name} has {len(values)} values, expected {dims}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return Rejection(Reason.MALFORMED, f"{name} holds a non-number {type(v).__name__}")
        if not math.isfinite(v):
            return Rejection(Reason.NOT_FINITE, f"{name} holds {v}")
    return None


def check_indices(name: str, values: object, *, max_len: int) -> Rejection | None:
    """A list of unique integers in [0, MAX_INDEX] of at most ``max_len`` entries."""
    if not isinstance(values, (list, tuple)):
        return Rejection(Reason.MALFORMED, f"{name} is not a list")
    if len(values) > max_len:
        return Rejection(Reason.TOO_LARGE, f"{name} has {len(values)} entries > {max_len}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            return Rejection(Reason.MALFORMED, f"{name} holds a non-integer {v!r}")
        if v < 0:
            return Rejection(Reason.NEGATIVE, f"{name} holds {v}")
        if v > MAX_INDEX:
            return Rejection(Reason.TOO_LARGE, f"{name} holds {v} > {MAX_INDEX}")
    if len(set(values)) != len(values):
        return Rejection(Reason.DUPLICATE, f"{name} repeats an index")
    return None


def check_peer_id(name: str, value: object) -> Rejection | None:
    if not isinstance(value, str) or not _PEER_ID_RE.match(value):
        return Rejection(Reason.MALFORMED, f"{name} {str(value)[:40]!r} is not a base58 PeerID")
    return None


def check_count(name: str, value: object, *, maximum: float) -> Rejection | None:
    """A non-negative finite number no larger than ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return Rejection(Reason.MALFORMED, f"{name} is not a number")
    if not math.isfinite(value):
        return Rejection(Reason.NOT_FINITE, f"{name} is {value}")
    if value < 0:
        return Rejection(Reason.NEGATIVE, f"{name} is {value}")
    if value > maximum:
        return Rejection(Reason.TOO_LARGE, f"{name} is {value} > {maximum}")
    return None


def first_rejection(*checks: Rejection | None) -> Rejection | None:
    return next((c for c in checks if c is not None), None)


# ---------------------------------------------------------------- Train


def validate_train_request(syn: Train, *, current_epoch: int | None = None,
                           ) -> Rejection | None:
    """Miner side: is this request well-formed (and about ``current_epoch`` when given)?"""
    rejection = first_rejection(
        check_count("epoch", syn.epoch, maximum=MAX_EPOCH),
        check_count("nonce", syn.nonce, maximum=MAX_NONCE),
        check_count("max_batches", syn.max_batches, maximum=MAX_BATCHES),
    )
    if rejection is not None:
        return rejection
    if not isinstance(syn.max_batches, int) or syn.max_batches < 1:
        return Rejection(Reason.MALFORMED, "max_batches must be an integer >= 1")
    if current_epoch is not None and syn.epoch != current_epoch:
        return Rejection(Reason.WRONG_EPOCH, f"asked epoch {syn.epoch}, miner at {current_epoch}")
    return None


def validate_train_response(
    syn: Train, *, epoch: int, nonce: int, limits: TrainLimits = TrainLimits(),
    sketch_seed: int | None = None,
) -> Rejection | None:
    """Validator side: None when the response is well-formed and answers *this* request.

    Checks, in order: transport status, miner error, echoed epoch/nonce, the sketch seed, then
    every field's type, size, finiteness and sign, duplicate indices, and that sketches match
    batches one to one. It says nothing about whether the work is *true*; that is the
    validator's recomputation.
    """
    rejection = transport_rejection(syn)
    if rejection is not None:
        return rejection
    if syn.error:
        return Rejection(Reason.MINER_ERROR, str(syn.error)[:MAX_ERROR_LEN])
    if syn.epoch != epoch:
        return Rejection(Reason.WRONG_EPOCH, f"response is for epoch {syn.epoch}, asked {epoch}")
    if syn.nonce != nonce:
        return Rejection(Reason.WRONG_NONCE, "nonce not echoed")
    if sketch_seed is not None and syn.sketch_seed != sketch_seed:
        return Rejection(Reason.WRONG_SEED, f"sketch seed {syn.sketch_seed} != {sketch_seed}")
    rejection = check_count("max_batches", syn.max_batches, maximum=MAX_BATCHES)
    if rejection is not None:  # an echoed request field, but still the miner's bytes
        return rejection
    max_batches = min(MAX_BATCHES, int(syn.max_batches))
    rejection = first_rejection(
        check_count("loss", syn.loss, maximum=limits.max_loss),
        check_count("samples", syn.samples, maximum=limits.max_samples),
        check_indices("pages", syn.pages, max_len=min(MAX_PAGES, limits.max_pages)),
        check_indices("batches", syn.batches, max_len=max_batches),
        check_peer_id("peer_id", syn.peer_id),
        check_floats("model_fingerprint", syn.model_fingerprint,
                     max_len=MAX_FINGERPRINT_DIMS, dims=limits.fingerprint_dims),
    )
    if rejection is not None:
        return rejection
    if not isinstance(syn.sketches, list) or len(syn.sketches) != len(syn.batches):
        count = len(syn.sketches) if isinstance(syn.sketches, list) else "no"
        return Rejection(Reason.INCONSISTENT,
                         f"{count} sketches for {len(syn.batches)} batches")
    dims = limits.sketch_dims
    if dims is None and syn.sketches and isinstance(syn.sketches[0], list):
        dims = len(syn.sketches[0])  # all sketches of one response share one length
    for i, sketch in enumerate(syn.sketches):
        rejection = check_floats(f"sketches[{i}]", sketch, max_len=MAX_SKETCH_DIMS, dims=dims)
        if rejection is not None:
            return rejection
    if syn.batches and syn.samples < len(syn.batches):
        return Rejection(Reason.INCONSISTENT,
                         f"{syn.samples} samples cannot fill {len(syn.batches)} batches")
    return None


# ---------------------------------------------------------------- AllReduce


def validate_allreduce_request(syn: AllReduce, *, current_epoch: int | None = None,
                               ) -> Rejection | None:
    """Miner side: is this round request well-formed (and for ``current_epoch``)?"""
    rejection = first_rejection(
        check_count("epoch", syn.epoch, maximum=MAX_EPOCH),
        check_count("learning_rate", syn.learning_rate, maximum=10),
        check_count("matchmaking_time", syn.matchmaking_time, maximum=3600),
        check_count("allreduce_timeout", syn.allreduce_timeout, maximum=3600),
        check_count("target_group_size", syn.target_group_size, maximum=MAX_PARTICIPANTS),
        check_count("min_group_size", syn.min_group_size, maximum=MAX_PARTICIPANTS),
    )
    if rejection is not None:
        return rejection
    if not isinstance(syn.round_id, str) or not _ROUND_ID_RE.match(syn.round_id):
        return Rejection(Reason.MALFORMED, f"round_id {str(syn.round_id)[:40]!r} is not valid")
    if not 1 <= syn.min_group_size <= syn.target_group_size:
        return Rejection(Reason.INCONSISTENT, "need 1 <= min_group_size <= target_group_size")
    rejection = first_rejection(*(check_peer_id("expected_peers", p) for p in syn.expected_peers))
    if rejection is not None:
        return rejection
    if len(set(syn.expected_peers)) != len(syn.expected_peers):
        return Rejection(Reason.INCONSISTENT, "expected_peers lists a PeerID twice")
    if syn.matchmaking_time <= 0 or syn.allreduce_timeout <= 0:
        return Rejection(Reason.MALFORMED, "timeouts must be > 0")
    if current_epoch is not None and syn.epoch != current_epoch:
        return Rejection(Reason.WRONG_EPOCH,
                         f"round for epoch {syn.epoch}, miner at {current_epoch}")
    return None


def validate_allreduce_response(
    syn: AllReduce, *, epoch: int, round_id: str, limits: AllReduceLimits = AllReduceLimits(),
) -> Rejection | None:
    """Validator side: None when the miner reports a successful, well-formed round."""
    rejection = transport_rejection(syn)
    if rejection is not None:
        return rejection
    if syn.epoch != epoch:
        return Rejection(Reason.WRONG_EPOCH, f"response is for epoch {syn.epoch}, asked {epoch}")
    if syn.round_id != round_id:
        return Rejection(Reason.WRONG_ROUND, "round id not echoed")
    if syn.success is not True:
        return Rejection(Reason.MINER_ERROR, str(syn.error)[:MAX_ERROR_LEN] or "success=False")
    rejection = first_rejection(
        check_peer_id("peer_id", syn.peer_id),
        check_count("bytes_sent", syn.bytes_sent, maximum=limits.max_bytes),
        check_count("bytes_received", syn.bytes_received, maximum=limits.max_bytes),
        check_count("seconds", syn.seconds, maximum=86400),
        check_floats("fingerprint", syn.fingerprint, max_len=MAX_FINGERPRINT_DIMS,
                     dims=limits.fingerprint_dims),
        _check_participants(syn.participants, limits.max_participants),
    )
    return rejection


def _check_participants(participants: object, max_len: int) -> Rejection | None:
    if not isinstance(participants, (list, tuple)):
        return Rejection(Reason.MALFORMED, "participants is not a list")
    if len(participants) > max_len:
        return Rejection(Reason.TOO_LARGE, f"{len(participants)} participants > {max_len}")
    for peer in participants:
        rejection = check_peer_id("participants[]", peer)
        if rejection is not None:
            return rejection
    if len(set(participants)) != len(participants):
        return Rejection(Reason.DUPLICATE, "participants repeat a peer")
    return None


def validate_request(syn: bt.Synapse) -> Rejection | None:
    """Miner side, for any synapse of this protocol (used by the Axon wrapper)."""
    if isinstance(syn, Train):
        return validate_train_request(syn)
    if isinstance(syn, AllReduce):
        return validate_allreduce_request(syn)
    return None

