"""The GPT-2 model every peer trains: presets, seeded build, checkpoint identity.

Presets live in :data:`PRESETS`, one line each. All are GPT-2 (pre-LayerNorm blocks, learned
positions, GELU MLP 4x wide, embeddings tied to the LM head) with the GPT-2 tokenizer's 50257
tokens and 1024 positions, and head size 64 as in GPT-2 small to XL (``tiny`` has 4 heads of 32,
so its attention still has several heads to exercise). Parameter counts below were measured
with a meta-device build (``count_parameters(GPT2LMHeadModel(gpt2_config(p)))``), tied weights
counted once:

=============  ========  =======  =======  ==============  ==========================
preset         n_layer   n_embd   n_head   parameters      note
=============  ========  =======  =======  ==============  ==========================
``tiny``       2         128      4        6,960,768       CPU tests and the demo
``gpt2-124m``  12        768      12       124,439,808     GPT-2 small, exactly
``gpt2-250m``  16        1024     16       254,053,376     GPT-2 medium's width
``gpt2-500m``  24        1280     20       537,900,800     GPT-2 large's width
``gpt2-1b``    24        1792     28       1,017,302,272   between GPT-2 large and XL
=============  ========  =======  =======  ==============  ==========================

Odd numbers, explained:

* vocab 50257 = 50000 BPE merges + 256 byte tokens + ``<|endoftext|>``. nanoGPT pads it to
  50304 (a multiple of 64) for speed; we keep 50257 so a pushed checkpoint loads in stock
  ``transformers`` and the GPT-2 tokenizer with no surgery. The LM head dominates the tiny
  preset (6.4M of its 7.0M parameters), which is why it is still ~1.4 GB to train on a CPU.
* ``tiny`` keeps all 1024 positions (131k extra parameters) so every ``--data.seq_len`` the
  config accepts fits every preset.
* Dropout is 0 (embedding, residual and attention): a validator recomputes a miner's gradient
  and compares; with dropout the two would differ by the dropout mask.

Initial weights are drawn by :func:`build_model` on the CPU from a private generator, in float64
and rounded to float32. float32 ``normal_`` is NOT the same on every CPU: PyTorch picks an AVX2
kernel or a scalar one at run time (``ATEN_CPU_CAPABILITY``) and they differ in the last bits;
the float64 path is scalar everywhere, so the same preset and seed give bitwise identical weights
on any x86 machine (tested across kernels in ``tests/test_model.py``), and across libm
implementations up to a rounding coincidence of ~1 value in 5e8.

Checkpoint identity: :func:`parameter_hash` (exact, sha256) names a set of weights;
:func:`fingerprint` (a seeded projection to :data:`FINGERPRINT_DIMS` numbers) says whether two
peers hold the *same model up to floating-point noise*, which is all an all-reduce can promise.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from template.config import ModelConfig
from template.projection import project

VOCAB_SIZE = 50257  # GPT-2 BPE: 50000 merges + 256 bytes + <|endoftext|>
N_POSITIONS = 1024  # GPT-2's context; must match template.config._MAX_POSITIONS
INIT_STD = 0.02  # GPT-2's initializer_range
TIED_ALIASES = {"lm_head.weight": "transformer.wte.weight"}
"""Names that are another name's tensor in a tied GPT-2. Hashes, fingerprints and saved files
skip the alias, so a model and the state dict read back from its safetensors agree."""
_NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


@dataclass(frozen=True)
class Preset:
    n_layer: int
    n_embd: int
    n_head: int


PRESETS: dict[str, Preset] = {
    "tiny": Preset(n_layer=2, n_embd=128, n_head=4),
    "gpt2-124m": Preset(n_layer=12, n_embd=768, n_head=12),
    "gpt2-250m": Preset(n_layer=16, n_embd=1024, n_head=16),
    "gpt2-500m": Preset(n_layer=24, n_embd=1280, n_head=20),
    "gpt2-1b": Preset(n_layer=24, n_embd=1792, n_head=28),
}


class ModelError(ValueError):
    """The model cannot be built or loaded as configured; the message says what to change."""


class StateMismatchError(ModelError):
    """A state dict (e.g. a pulled checkpoint) does not fit the model: keys, shapes or values."""


def gpt2_config(preset: str) -> GPT2Config:
    """The ``GPT2Config`` of a named preset, with dropout off and fp32 SDPA attention."""
    if preset not in PRESETS:
        raise ModelError(
            f"--model.preset: unknown preset {preset!r}; use one of {', '.join(PRESETS)} "
            "or a Hub repo id like `org/name`"
        )
    shape = PRESETS[preset]
    return GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=N_POSITIONS,
        n_layer=shape.n_layer,
        n_embd=shape.n_embd,
        n_head=shape.n_head,
        initializer_range=INIT_STD,
        tie_word_embeddings=True,
        **_NO_DROPOUT,
    )


def _attn_implementation() -> str:
    return "sdpa" if hasattr(torch.nn.functional, "scaled_dot_product_attention") else "eager"


def build_model(cfg: ModelConfig, *, seed: int = 0) -> GPT2LMHeadModel:
    """A fresh fp32 model on the CPU: same preset and seed -> bitwise identical weights.

    ``cfg.preset`` names a preset (initialised from ``seed``) or a Hub repo id / local folder
    (loaded with ``from_pretrained`` at ``cfg.revision``; ``seed`` is unused). The caller moves
    the model to its device; mixed precision is autocast, so the weights stay fp32.
    """
    if cfg.preset not in PRESETS:
        return _load_pretrained(cfg)
    config = gpt2_config(cfg.preset)
    config._attn_implementation = _attn_implementation()
    with torch.device("meta"):  # no memory, no RNG: every value is set by _init_weights
        model = GPT2LMHeadModel(config)
    model = model.to_empty(device="cpu")
    model.tie_weights()  # to_empty makes a new tensor per module; tie them again
    _init_weights(model, seed=seed, n_layer=config.n_layer)
    return model.train()


@torch.no_grad()
def _init_weights(model: GPT2LMHeadModel, *, seed: int, n_layer: int) -> None:
    """GPT-2's init (as in HF and nanoGPT), drawn in sorted-name order from one generator.

    Weights N(0, 0.02); residual projections (``c_proj.weight``) N(0, 0.02/sqrt(2*n_layer)) so
    the residual stream's variance does not grow with depth; biases 0; LayerNorm gains 1.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in sorted(_unique_named_tensors(model).items()):
        if ".ln_" in name or name.startswith("transformer.ln_f."):
            tensor.fill_(1.0 if name.endswith(".weight") else 0.0)
        elif name.endswith(".bias"):
            tensor.zero_()
        else:
            std = INIT_STD / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else INIT_STD
            draw = torch.empty(tensor.shape, dtype=torch.float64).normal_(0.0, std, generator=gen)
            tensor.copy_(draw.to(torch.float32))


def _load_pretrained(cfg: ModelConfig) -> GPT2LMHeadModel:
    try:
        model = GPT2LMHeadModel.from_pretrained(
            cfg.preset,
            revision=cfg.revision,
            dtype=torch.float32,
            attn_implementation=_attn_implementation(),
            **_NO_DROPOUT,
        )
    except OSError as err:  # transformers reports missing repos/files/offline mode as OSError
        raise ModelError(
            f"--model.preset: cannot load {cfg.preset!r} at revision {cfg.revision!r}: {err}. "
            f"Use a preset ({', '.join(PRESETS)}), a local folder written by save_pretrained, "
            "or a reachable Hub repo (HF_HUB_OFFLINE must be unset to download)."
        ) from err
    if model.config.vocab_size != VOCAB_SIZE:
        raise ModelError(
            f"--model.preset: {cfg.preset!r} has vocab_size {model.config.vocab_size}; "
            f"the run uses the GPT-2 tokenizer ({VOCAB_SIZE} tokens)"
        )
    return model.float().train()


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters, each tied tensor counted once (GPT-2 small: 124,439,808)."""
    return sum(p.numel() for p in model.parameters())  # parameters() already dedupes ties


# ------------------------------------------------------------------ canonical state


def _unique_named_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return canonical_state(model.state_dict(keep_vars=False))


def canonical_state(
    model_or_state: torch.nn.Module | Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Name -> tensor with tied aliases (:data:`TIED_ALIASES`) dropped when they are tied.

    An alias is dropped when it shares storage with its target or is bitwise equal to it (a
    state dict read from disk loses the sharing); an untied, different LM head is kept, so it
    changes the hash as it should.
    """
    if isinstance(model_or_state, torch.nn.Module):
        state = dict(model_or_state.state_dict())
    else:
        state = dict(model_or_state)
    for alias, target in TIED_ALIASES.items():
        if alias in state and target in state and _same_tensor(state[alias], state[target]):
            del state[alias]
    return state


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.device == b.device and a.data_ptr() == b.data_ptr():
        return True
    return bool(torch.equal(a.detach().cpu(), b.detach().cpu()))


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    if sys.byteorder != "little":  # every platform torch ships for is little-endian
        raise NotImplementedError("parameter_hash needs a little-endian machine")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def parameter_hash(model_or_state: torch.nn.Module | Mapping[str, torch.Tensor]) -> str:
    """sha256 hex of all weights: same weights (values, dtypes, shapes, names) -> same hash.

    For each name of :func:`canonical_state` in sorted order the digest takes
    ``name \\0 dtype \\0 shape \\0`` and the tensor's contiguous little-endian bytes. A model and
    the state dict loaded from its ``model.safetensors`` hash the same (the tied LM head is
    skipped in both). Cost: about 1 s per 500 MB of weights (GPT-2 small: 0.5 GB).
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(canonical_state(model_or_state).items()):
        header = f"{name}\0{str(tensor.dtype).removeprefix('torch.')}\0{tuple(tensor.shape)}\0"
        digest.update(header.encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


# ------------------------------------------------------------------ fingerprint

FINGERPRINT_SEED = 0x5EED_F1
"""Seed of the fingerprint's projection; every peer and validator must use the same one."""
FINGERPRINT_DIMS = 32
"""Numbers in a fingerprint. Distances are estimated to about 1/sqrt(32) ~ 18% relative, plenty
to tell 1e-7 noise from a 5e-3 real difference; more dims cost proportionally more time."""
FINGERPRINT_TOLERANCE = 1e-4
"""Largest :func:`fingerprint_distance` at which two peers count as holding the same model,
for uncompressed averaging (:func:`template.consensus.consensus_tolerance` gives the value for
each ``--averaging.compression``).

Honest peers differ after an all-reduce because each applies ``local + delta`` (ulp-level apart
in fp32, see NOTES), and the optimizer step carries that into the weights. Measured: 1e-7
relative noise on every weight gives ~1e-7 (``tests/test_model.py``); honest miners after a
real round and AdamW step 3.75e-7 (``scripts/measure_validator.py``), over swarm runs ~2e-7
(``tests/test_swarm.py``); one extra AdamW step at lr 1e-4 ~1e-3 and a step at twice the
rate ~1e-2, far outside.
"""
_TINY = 1e-30


def fingerprint(
    model_or_params: torch.nn.Module | Mapping[str, torch.Tensor],
    *,
    seed: int = FINGERPRINT_SEED,
    dims: int = FINGERPRINT_DIMS,
) -> list[float]:
    """A seeded projection of all weights to ``dims`` numbers (``template.projection.project``).

    Tensors are walked in sorted-name order of :func:`canonical_state` (tied weights once), so
    the same weights give the same numbers on any machine up to float rounding of the
    projection's matmul (~1e-7 relative: compare with :func:`fingerprint_distance`, never
    ``==``). Cost on CPU for GPT-2 small: see docs/benchmarks.md (well under a second).
    """
    state = canonical_state(model_or_params)
    tensors: Iterable[torch.Tensor] = (state[name] for name in sorted(state))
    return [float(x) for x in project(tensors, seed=seed, dims=dims)]


def fingerprint_distance(a: list[float] | torch.Tensor, b: list[float] | torch.Tensor) -> float:
    """Relative L2 distance ``||a - b|| / ||b||`` (``b`` is the reference, e.g. canonical)."""
    ta = torch.as_tensor(a, dtype=torch.float64)
    tb = torch.as_tensor(b, dtype=torch.float64)
    if ta.shape != tb.shape:
        raise ValueError(f"fingerprints differ in length: {ta.numel()} vs {tb.numel()}")
    scale = max(float(torch.linalg.vector_norm(tb)), _TINY)
    return float(torch.linalg.vector_norm(ta - tb)) / scale


# ------------------------------------------------------------------ loading weights


@torch.no_grad()
def load_state_into(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state_dict`` into ``model`` in place, or raise :class:`StateMismatchError`.

    Checked before anything is copied (so a bad checkpoint leaves the model untouched): same
    names up to the tied alias, same shapes, floating dtypes, finite values. Values are cast to
    the model's dtype and device.
    """
    want = canonical_state(model)
    got = canonical_state(state_dict)
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    if missing or unexpected:
        raise StateMismatchError(
            f"checkpoint does not fit the model: missing {_few(missing)}, "
            f"unexpected {_few(unexpected)} (is it the same --model.preset?)"
        )
    for name, tensor in got.items():
        if tuple(tensor.shape) != tuple(want[name].shape):
            raise StateMismatchError(
                f"checkpoint tensor {name} has shape {tuple(tensor.shape)}, "
                f"model expects {tuple(want[name].shape)} (is it the same --model.preset?)"
            )
        if not tensor.is_floating_point():
            raise StateMismatchError(f"checkpoint tensor {name} has dtype {tensor.dtype}")
        if not bool(torch.isfinite(tensor).all()):
            raise StateMismatchError(f"checkpoint tensor {name} has NaN or infinite values")
    for name, tensor in got.items():
        want[name].copy_(tensor)


def _few(names: list[str], limit: int = 5) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
