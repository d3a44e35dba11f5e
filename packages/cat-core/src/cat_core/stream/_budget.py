"""How much memory a run may use, and what that leaves for keeping weights in memory.

The budget covers the process's RAM (and, with a GPU, its memory). A block being searched needs
about four times its float32 weights (the weights, the search's working copies, the allocator's
slack; measured on Llama shapes), the calibration activations (in and out of a block), and the
process itself (torch, the tokenizer). What the budget leaves over that keeps converted weights resident between
uses, so a model that fits runs at in-memory speed and one that does not still runs.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

__all__ = ["MemoryBudget", "MemoryPlan", "parse_bytes", "plan_memory", "plan_model"]

#: a block's search needs about this many times its float32 weights (the weights, the scale
#: search's trial copies, the clip search's and GPTQ's Grams, the allocator's slack): measured
#: 3.3 GB beside the process's own on the 8b preset's 0.87 GB blocks (2026-12-06)
WORK_FACTOR = 4.0
#: what the process needs besides (torch and its thread pools, the tokenizer, Python)
BASE_BYTES = 10**9
#: float32 values one token holds while a decoder block runs forward, in units of (MLP width,
#: hidden width): the MLP's gate, up and their product, and the attention's and residuals'
#: hidden-sized tensors. Measured on the 1b preset at 32 x 512: RSS rose 1.1 GB above the plan
#: over forwards of 8192 tokens, i.e. about 34k floats a token against 3 x 8192 + 6 x 2048 = 37k.
FORWARD_FLOATS = (3, 6)
#: share of the budget left unplanned: what the estimates above miss and the allocator's slack
#: (the 1b preset at 32 x 512 under 3 GB peaked 1.3% over a plan that filled the budget exactly)
SLACK = 0.05
#: the automatic budget: this share of the memory the system reports available at start
AUTO_SHARE = 0.85


def parse_bytes(text: str, what: str = "--max-memory") -> int:
    """Bytes from ``"6GB"``, ``"500MiB"``, ``"2.5G"`` or a plain number of bytes."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"{what}: expected a size such as 6GB, 500MB or 12GiB, got {text!r}")
    base = 1024 if m.group(3) else 1000
    power = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[m.group(2).upper()]
    n = int(float(m.group(1)) * base**power)
    if n <= 0:
        raise ValueError(f"{what}: must be positive, got {text!r}")
    return n


def _available_ram() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _rss() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


@dataclasses.dataclass(frozen=True)
class MemoryBudget:
    """Bytes of RAM (``cpu``) and of GPU memory (``gpu``, None: no GPU in use) a run may use;
    ``auto``: derived from the free memory rather than given."""

    cpu: int
    gpu: int | None = None
    auto: bool = False

    @classmethod
    def parse(cls, text: str | None, device: torch.device | str = "cpu") -> MemoryBudget:
        """``--max-memory``: ``"6GB"`` (RAM), ``"cpu=6GB,cuda=20GB"``, or None for automatic (85% of
        the RAM available now plus what this process already holds; 90% of the GPU's free memory)."""
        device = torch.device(device)
        cpu = gpu = None
        if text:
            for part in str(text).split(","):
                key, eq, value = part.partition("=")
                if not eq:
                    key, value = "cpu", key
                key = key.strip().lower()
                if key not in ("cpu", "cuda", "gpu"):
                    raise ValueError(f"--max-memory: expected SIZE or cpu=SIZE,cuda=SIZE, got {part!r}")
                if key == "cpu":
                    cpu = parse_bytes(value)
                else:
                    gpu = parse_bytes(value)
        auto = cpu is None
        if cpu is None:
            cpu = int(AUTO_SHARE * _available_ram()) + _rss()
        if device.type == "cuda" and gpu is None:
            free, _ = torch.cuda.mem_get_info(device)
            gpu = int(0.9 * free)
        return cls(cpu=cpu, gpu=gpu if device.type == "cuda" else None, auto=auto)

    def describe(self) -> str:
        out = f"{self.cpu / 1e9:.1f} GB RAM"
        if self.gpu is not None:
            out += f", {self.gpu / 1e9:.1f} GB GPU"
        return out + (" (automatic: from the free memory)" if self.auto else "")


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """What a budget allows: ``keep_bytes`` of converted weights resident between uses, and
    whether the calibration activations go to disk."""

    budget: MemoryBudget
    block_bytes: int
    work_bytes: int
    activation_bytes: int
    keep_bytes: int
    spill_activations: bool

    def describe(self) -> str:
        return (f"budget {self.budget.describe()}: a block {self.block_bytes / 1e9:.2f} GB in float32, its search "
                f"about {self.work_bytes / 1e9:.2f} GB, activations {self.activation_bytes / 1e9:.2f} GB"
                f"{' (on disk)' if self.spill_activations else ''}, "
                f"{self.keep_bytes / 1e9:.1f} GB of weights kept in memory between uses")


def plan_memory(budget: MemoryBudget, block_bytes: int, largest_other: int, activation_bytes: int,
                device: torch.device | str = "cpu", forward_bytes: int = 0) -> MemoryPlan:
    """The plan for a model whose largest block is ``block_bytes`` in the compute dtype and whose
    largest other unit (embedding, head) is ``largest_other``, with ``activation_bytes`` of
    calibration hidden states (one copy) and ``forward_bytes`` of transients while a block runs
    its largest forward. Raises ValueError, naming the sizes, when even one block cannot be
    searched within the budget."""
    device = torch.device(device)
    work = int(WORK_FACTOR * block_bytes) + forward_bytes
    on_gpu = device.type == "cuda"
    # a unit read from a 16-bit file holds its stored bytes and its converted copy at once (the
    # 1b preset's head: 0.5 + 1.05 GB, the peak of its self-calibration sampling)
    ram_work = BASE_BYTES + (0 if on_gpu else max(work, largest_other * 3 // 2))
    if on_gpu:
        gpu_need = work + 2 * activation_bytes // 4  # a chunk of activations at a time
        if budget.gpu is not None and gpu_need > budget.gpu:
            raise ValueError(
                f"--max-memory: one decoder block needs about {gpu_need / 1e9:.2f} GB of GPU memory while it is "
                f"searched ({block_bytes / 1e9:.2f} GB of weights in float32, x{WORK_FACTOR:g} for the search, "
                f"{forward_bytes / 1e9:.2f} GB for a forward over the calibration chunk), "
                f"more than the budget's {budget.gpu / 1e9:.2f} GB")
    if ram_work > budget.cpu:
        raise ValueError(
            f"--max-memory: one decoder block needs about {ram_work / 1e9:.2f} GB while it is searched "
            f"({block_bytes / 1e9:.2f} GB of weights in float32, x{WORK_FACTOR:g} for the search, "
            f"{forward_bytes / 1e9:.2f} GB for a forward over the calibration chunk, plus "
            f"{BASE_BYTES / 1e9:.1f} GB for the process), more than the budget's {budget.cpu / 1e9:.2f} GB")
    if on_gpu:  # units live on the GPU: what its budget leaves keeps them there between uses
        spill = False
        left = int((budget.gpu if budget.gpu is not None else 0) * (1 - SLACK)) - gpu_need
    else:  # the activations in and out of the block live in RAM unless that would crowd out the work
        usable = int(budget.cpu * (1 - SLACK))
        spill = ram_work + 2 * activation_bytes > usable
        left = usable - ram_work - (0 if spill else 2 * activation_bytes)
    return MemoryPlan(budget=budget, block_bytes=block_bytes, work_bytes=work, activation_bytes=activation_bytes,
                      keep_bytes=max(0, left), spill_activations=spill)


def plan_model(model: torch.nn.Module, budget: MemoryBudget, calib_tokens: int,
               device: torch.device | str = "cpu", forward_tokens: int | None = None) -> MemoryPlan:
    """:func:`plan_memory` for a lazily loaded ``model`` (its units' sizes in the compute dtype)
    quantized on ``calib_tokens`` calibration tokens, of which at most ``forward_tokens`` go
    through a block in one forward (default: AWQ's chunk bound, which is also the default search
    batch)."""
    from cat_core.awq._batches import CHUNK_TOKENS
    from cat_core.graph import find_blocks
    from cat_core.stream._lazy import lazy_weights

    lazy = lazy_weights(model)
    if lazy is None:
        raise ValueError("plan_model takes a lazily loaded model (cat_core.stream.load_lazy)")
    _, _, blocks = find_blocks(model)
    ids = {id(b) for b in blocks}
    sizes = [(id(m) in ids, lazy.unit_bytes(m)) for _, m in lazy.units()]
    block = max((n for is_block, n in sizes if is_block), default=0)
    other = max((n for is_block, n in sizes if not is_block), default=0)
    config = getattr(model, "config", None)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    mlp = int(getattr(config, "intermediate_size", 0) or 4 * hidden)
    tokens = min(calib_tokens, CHUNK_TOKENS if forward_tokens is None else forward_tokens)
    per_token = (FORWARD_FLOATS[0] * mlp + FORWARD_FLOATS[1] * hidden) * 4  # float32 whatever is stored
    return plan_memory(budget, block, other, calib_tokens * hidden * lazy.dtype.itemsize, device,
                       forward_bytes=tokens * per_token)


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of every unit of a lazily loaded model in the compute dtype."""
    from cat_core.stream._lazy import lazy_weights

    lazy = lazy_weights(model)
    return sum(lazy.unit_bytes(m) for _, m in lazy.units())
