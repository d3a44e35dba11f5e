"""The switch between the v2 and the legacy CUDA gemm kernels (works in every build; it only
changes which CUDA kernels run)."""

from __future__ import annotations

import pytest

import cat_kernels as ck


@pytest.fixture(autouse=True)
def _restore(monkeypatch):
    monkeypatch.delenv("CAT_KERNELS_CUDA_IMPL", raising=False)
    ck.set_cuda_impl(None)
    yield
    monkeypatch.delenv("CAT_KERNELS_CUDA_IMPL", raising=False)
    ck.set_cuda_impl(None)


def test_default_is_v2():
    assert ck.cuda_impl() == "v2"


def test_set_and_reset():
    ck.set_cuda_impl("legacy")
    assert ck.cuda_impl() == "legacy"
    ck.set_cuda_impl("v2")
    assert ck.cuda_impl() == "v2"


def test_environment_is_read_after_reset(monkeypatch):
    monkeypatch.setenv("CAT_KERNELS_CUDA_IMPL", "legacy")
    ck.set_cuda_impl(None)
    assert ck.cuda_impl() == "legacy"
    ck.set_cuda_impl("v2")  # an explicit choice wins over the environment
    assert ck.cuda_impl() == "v2"


def test_bad_values_name_the_argument(monkeypatch):
    with pytest.raises(ValueError, match="impl: expected 'v2', 'legacy' or None"):
        ck.set_cuda_impl("fast")  # type: ignore[arg-type]
    monkeypatch.setenv("CAT_KERNELS_CUDA_IMPL", "Legacy")
    ck.set_cuda_impl(None)
    with pytest.raises(ValueError, match="CAT_KERNELS_CUDA_IMPL"):
        ck.cuda_impl()
