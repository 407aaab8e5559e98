"""Typed, signed DHT records: what a peer may publish about itself, and how readers check it.

Built the way hivemind's own ``ProgressTracker`` does it (``hivemind/optim/progress_tracker.py``):

- one DHT key per run, ``f"{run_id}_progress"``; each peer writes its record under a *subkey*
  that is its RSA public key (``[owner:<key>]``);
- :class:`hivemind.dht.schema.SchemaValidator` pins the value to :class:`PeerProgressRecord`
  (pydantic with strict types: ``3.0`` is not an int, ``-1`` is not a count, a string is not
  bytes), and :class:`hivemind.dht.crypto.RSASignatureValidator` requires the value to be
  signed by the owner of the public key in the subkey.

Every DHT node of a run installs both validators (:func:`record_validators`): a node then refuses
to *store* a bad record sent to it and drops bad records in *answers* it gets, so a peer without
validators, a forged signature or a wrong schema is simply not seen by readers. Readers still
re-parse every value (:func:`parse_progress`) because a value is network input.
"""

from __future__ import annotations

import hashlib
import re
from typing import Dict, Optional  # noqa: UP035 - pydantic.v1 needs typing generics on py3.10

from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.schema import BytesWithPublicKey, SchemaValidator
from hivemind.dht.validation import RecordValidatorBase
from hivemind.utils.crypto import RSAPrivateKey
from pydantic.v1 import (
    BaseModel,
    Extra,
    StrictBool,
    StrictBytes,
    StrictFloat,
    ValidationError,
    confloat,
    conint,
    constr,
)

SS58_PATTERN = r"^[1-9A-HJ-NP-Za-km-z]{46,48}$"
"""Base58 alphabet, length of a substrate ss58 address (Bittensor hotkeys are 48 characters)."""

MAX_RECORD_AGE = 24 * 3600.0
"""Records stamped further than this in the future are refused (clock skew or a lie)."""


class PeerProgressRecord(BaseModel):
    """One peer's progress in the current epoch, as it reports it (self-reported: trust-but-verify).

    ``samples`` are sequences accumulated into the local gradient since the epoch began;
    ``time`` is the DHT time (:func:`hivemind.get_dht_time`) of the last update.
    """

    peer_id: StrictBytes
    hotkey: constr(strict=True, regex=SS58_PATTERN)  # type: ignore[valid-type]
    epoch: conint(ge=0, strict=True)  # type: ignore[valid-type]
    samples: conint(ge=0, strict=True)  # type: ignore[valid-type]
    tokens_per_second: confloat(ge=0.0, strict=True)  # type: ignore[valid-type]
    time: StrictFloat
    finished: StrictBool = False
    """The peer finished its epoch's local work and waits for the round."""

    class Config:
        extra = Extra.forbid


class ProgressSchema(BaseModel):
    """Schema of the ``{run_id}_progress`` key: public-key subkeys -> record (None = peer left)."""

    progress: Dict[BytesWithPublicKey, Optional[PeerProgressRecord]]  # noqa: UP006, UP045

    class Config:  # own Config: hivemind's SchemaValidator patches it (else pydantic's global one)
        extra = Extra.forbid


def progress_key(run_id: str) -> str:
    """The DHT key that holds every peer's :class:`PeerProgressRecord` for ``run_id``."""
    return f"{run_id}_progress"


def record_validators(run_id: str, private_key: RSAPrivateKey) -> list[RecordValidatorBase]:
    """Validators every DHT node of ``run_id`` runs: schema of our keys + RSA signatures.

    Signing uses ``private_key``: a DHT signs a record when its subkey holds *that* key's public
    key. Pass the same key to the DHT and to whatever builds subkeys (see ``SwarmDHT``).
    """
    return [SchemaValidator(ProgressSchema, prefix=run_id), RSASignatureValidator(private_key)]


def public_key_subkey(private_key: RSAPrivateKey) -> bytes:
    """The ``[owner:<public key>]`` subkey under which the owner of ``private_key`` writes."""
    return RSASignatureValidator(private_key).local_public_key


def record_key_id(subkey: bytes) -> str:
    """The short id of a record-signing key (32 hex digits of the SHA-256 of its subkey): what a
    miner commits on chain beside its PeerID, so readers can tell bound signers from strangers."""
    return hashlib.sha256(subkey).hexdigest()[:32]


_OWNER_RE = re.compile(RSASignatureValidator.PUBLIC_KEY_REGEX)


def parse_progress(subkey: object, value: object, *, now: float) -> PeerProgressRecord | str:
    """A record read from the DHT, or the reason it was rejected (never raises on bad input)."""
    if not isinstance(subkey, bytes) or not _OWNER_RE.search(subkey):
        return "subkey is not an [owner:<public key>] subkey"
    if value is None:
        return "peer left (record cleared)"
    if not isinstance(value, dict):
        return f"value is a {type(value).__name__}, expected a dict"
    try:
        record = PeerProgressRecord.parse_obj(value)
    except ValidationError as err:
        return f"schema: {err.errors()[0]['loc']} {err.errors()[0]['msg']}"
    if record.dict(exclude_unset=True) != value:
        return "value needed type conversions to match the schema"
    if record.time > now + MAX_RECORD_AGE:
        return "time stamp is in the future"
    return record
