"""ONNX Runtime's providers: CUDA only where a GPU is usable, asked of torch or of the CUDA driver."""

import ctypes

import pytest
import torch

from deploytool.runtime.backends import onnxruntime as ort_backend


@pytest.mark.parametrize("available", [True, False])
def test_with_torch_installed_torch_says_whether_a_gpu_is_usable(monkeypatch, available):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    assert ort_backend.gpu_usable() is available


def test_without_a_cuda_driver_no_gpu_is_usable(monkeypatch):
    def no_library(name, *args, **kwargs):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_library)
    assert ort_backend.cuda_driver_sees_a_gpu() is False


def test_the_driver_is_asked_for_its_device_count(monkeypatch):
    class Driver:
        def __init__(self, count):
            self.count = count

        def cuInit(self, flags):
            return 0

        def cuDeviceGetCount(self, pointer):
            pointer._obj.value = self.count
            return 0

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Driver(2))
    assert ort_backend.cuda_driver_sees_a_gpu() is True
    monkeypatch.setattr(ctypes, "CDLL", lambda name: Driver(0))
    assert ort_backend.cuda_driver_sees_a_gpu() is False
