"""GPT-2 tokenizer: offline from packaged files, same ids as the Hub's, no network in tests."""

from __future__ import annotations

import socket

import pytest

from template.data import tokenizer as tok_mod
from template.data.tokenizer import EOS_ID, VOCAB_SIZE, TokenizerError, load_tokenizer


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_tokenizer_is_gpt2():
    tok = load_tokenizer(offline=True)
    assert len(tok) == VOCAB_SIZE == 50257
    assert tok.eos_token_id == EOS_ID == 50256
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert tok.decode([15496, 995]) == "Hello world"
    assert load_tokenizer(offline=True) is tok  # cached


def test_auto_mode_respects_hf_hub_offline():
    # conftest sets HF_HUB_OFFLINE=1: the default call must not try the Hub
    assert tok_mod.hub_offline_env()
    tok = load_tokenizer()
    assert tok("The cat sat.")["input_ids"] == load_tokenizer(offline=True)(
        "The cat sat.")["input_ids"]


def test_unknown_model_offline_is_refused():
    with pytest.raises(TokenizerError, match="no offline copy"):
        load_tokenizer(model_id="bert-base-uncased", offline=True)


def test_unreachable_hub(monkeypatch):
    # Point the Hub at a closed local port: auto mode falls back, offline=False raises.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    load_tokenizer.cache_clear()
    try:
        assert not tok_mod.hub_reachable(timeout=1.0)
        assert load_tokenizer()("Hello world")["input_ids"] == [15496, 995]
        with pytest.raises(TokenizerError, match="unreachable"):
            load_tokenizer(offline=False)
    finally:
        load_tokenizer.cache_clear()
