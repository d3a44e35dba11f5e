import os
import random

import numpy as np
import pytest

import _emulator


@pytest.fixture
def rng(request):
    """Fresh random data every run; the seed is printed on failure (pytest shows captured
    output) and can be pinned with CAT_KERNELS_TEST_SEED."""
    seed = int(os.environ.get("CAT_KERNELS_TEST_SEED", random.SystemRandom().randrange(2**32)))
    print(f"random seed for {request.node.nodeid}: {seed} (rerun with CAT_KERNELS_TEST_SEED={seed})")
    return np.random.default_rng(seed)


@pytest.fixture(autouse=True)
def _restore_kernel_state():
    """Tests may force an ISA / thread count through the private hooks; undo it."""
    yield
    from cat_kernels import _C

    _C._set_isa("")
    _C._set_num_threads(0)


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    """The host emulator of the v2 CUDA kernels (tests/emulator/), built once per session."""
    try:
        return _emulator.build(tmp_path_factory.mktemp("emulator"))
    except RuntimeError as e:
        pytest.fail(str(e))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that skips for want of torch must be marked `torch` (or `cuda`): tools/test.sh runs
    the kernel suite without torch and then only the marked tests with it, so an unmarked one
    would never run anywhere."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or item.get_closest_marker("torch") or item.get_closest_marker("cuda"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if "torch" in reason:
        report.outcome = "failed"
        report.longrepr = f"skipped ({reason}) but not marked `torch`: mark it, or it runs nowhere"
