"""Device and precision resolution: what "auto" picks, and a sentence for every device that is not there."""

from __future__ import annotations

import logging

import pytest
import torch

from recon.devices import fit_device, resolve_device, resolve_dtype
from recon.errors import InputError

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a CUDA GPU")
no_mps = pytest.mark.skipif(torch.backends.mps.is_available(), reason="checks the machine without MPS")


def test_cpu_and_auto() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_a_sentence(name: str) -> None:
    with pytest.raises(InputError) as error:
        resolve_device(name)
    message = str(error.value)
    assert message.startswith("CUDA was requested but no CUDA GPU is visible")
    assert "--device cpu" in message and "\n" not in message and message.endswith(".")


@no_mps
def test_mps_without_apple_gpu_is_a_sentence() -> None:
    with pytest.raises(InputError, match=r"MPS .* not available here; use --device cpu"):
        resolve_device("mps")


def test_unknown_device_and_dtype() -> None:
    with pytest.raises(InputError, match="Unknown device 'tpu'; use auto, cuda"):
        resolve_device("tpu")
    with pytest.raises(InputError, match="Unknown dtype 'fp8'; use auto, fp16"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_dtype_follows_the_device() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", cuda) == torch.float16
    assert resolve_dtype("auto", torch.device("mps")) == torch.float16
    assert resolve_dtype("fp32", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("FP16", cuda) == torch.float16


def test_fp16_on_cpu_is_upcast_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="recon.devices"):
        assert resolve_dtype("fp16", torch.device("cpu")) == torch.float32
    assert "runs in fp32" in caplog.text


def test_reconstruction_runs_where_asked_or_falls_back_from_mps_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    assert fit_device(torch.device("cpu")) == torch.device("cpu")
    if torch.cuda.is_available():
        assert fit_device(torch.device("cuda")).type == "cuda"
    if torch.backends.mps.is_available():  # MPS runs the fit when this torch differentiates 3-D grid sampling there
        with caplog.at_level(logging.WARNING, logger="recon.devices"):
            device = fit_device(torch.device("mps"))
        assert device.type == "mps" or (device.type == "cpu" and len(caplog.records) == 1)
