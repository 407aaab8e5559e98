"""Device and precision selection: typed errors that name the flag, and a real autocast switch."""

from __future__ import annotations

import pytest
import torch

from template.config import ConfigError
from template.device import autocast, resolve_device, resolve_precision

HAS_CUDA = torch.cuda.is_available()


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    expected = "cuda" if HAS_CUDA else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(HAS_CUDA, reason="checks the error raised on a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_gpu_names_the_flag(spec):
    with pytest.raises(ConfigError) as err:
        resolve_device(spec)
    assert err.value.flag == "--neuron.device"
    assert "--neuron.device" in str(err.value)
    assert "no CUDA device" in str(err.value)


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda:-1", "tpu"])
def test_unknown_device_names_the_flag(spec):
    with pytest.raises(ConfigError) as err:
        resolve_device(spec)
    assert err.value.flag == "--neuron.device"


def test_cuda_index_range(monkeypatch):
    # Pretend two GPUs are visible: selection logic only, nothing is allocated on them.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 0)
    with pytest.raises(ConfigError) as err:
        resolve_device("cuda:2")
    assert err.value.flag == "--neuron.device"
    assert "only 2 CUDA device(s)" in str(err.value)


def test_precision():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("auto", gpu) == "bf16"
    assert resolve_precision("fp32", gpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError) as err:
        resolve_precision("fp16", cpu)
    assert err.value.flag == "--neuron.precision"


def test_autocast_switches_matmul_dtype_and_keeps_fp32_grads():
    cpu = torch.device("cpu")
    weight = torch.randn(16, 16, requires_grad=True)
    x = torch.randn(4, 16)
    with autocast(cpu, "fp32"):
        assert (x @ weight).dtype == torch.float32
    with autocast(cpu, "bf16"):
        out = x @ weight
        assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert weight.grad is not None and weight.grad.dtype == torch.float32
    # Outside the context, matmuls are fp32 again.
    assert (x @ weight).dtype == torch.float32
    with pytest.raises(ValueError), autocast(cpu, "fp16"):
        pass
