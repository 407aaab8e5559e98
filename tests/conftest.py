"""Test environment: no network, no writes outside temp dirs, no stray processes.

Set before anything imports bittensor, huggingface_hub or wandb: HOME points at a fresh temp
dir (bittensor creates ~/.bittensor at import), the Hub is offline and wandb writes locally.
"""

from __future__ import annotations

import os
import tempfile

_HOME = tempfile.mkdtemp(prefix="subnet-test-home-")
os.environ["HOME"] = _HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import psutil  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _no_stray_children():
    """Fail loudly if a test leaves child processes behind, and stop them by PID."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    leftover = [p for p in me.children(recursive=True) if p.pid not in before]
    # torch starts one torch_shm_manager per process on first share_memory_() and reuses it;
    # killing it breaks every later shared tensor (hivemind's MPFuture: "RuntimeError: Broken pipe")
    leftover = [p for p in leftover if _name(p) != "torch_shm_manager"]
    for proc in leftover:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(leftover, timeout=5)


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.NoSuchProcess:
        return ""
