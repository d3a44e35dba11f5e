"""What every command shares: one-line errors, exit codes, --debug, devices, memory, sizes.

Exit codes, the same for every front-end: 0 success; 2 a usage error, the command line is wrong as
written (argparse's own checks and the tools' range checks alike: ``--n-samples 0``, a malformed
``--group-size``); 1 any other failure (a missing or unreadable file, an output path that cannot be
written, a model that does not fit the arguments, an error during the work); 130 Ctrl-C; 143 SIGTERM (both unwind: nothing half-written stays)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from cat_apps import _threads
from cat_apps._quiet import QuietProgress

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's or `kill`'s stop) raised in the main thread, so that the work
    unwinds as for Ctrl-C: staged output and spilled blocks are removed, nothing half-written stays."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated


class CLIError(Exception):
    """A user-facing error: its message is printed as one line, no traceback; exit code 1."""


class UsageError(CLIError):
    """The command line is wrong as written (a value out of range, options that conflict): exit
    code 2, as for the errors argparse finds itself."""


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (plus a hint) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


EXIT_CODES_HELP = """\
exit codes: 0 success; 1 a failure (missing or unreadable file, unwritable output path, a model that
does not fit the arguments, an error during the work); 2 a usage error (the command line is wrong as
written: argparse's checks and the command's own range checks alike); 130 interrupted (Ctrl-C);
143 stopped by SIGTERM.
Arguments, files and paths are checked before the model loads, lengths against its config before
its weights.
"""


def parser(prog: str, description: str, epilog: str | None = None) -> Parser:
    epilog = f"{epilog.rstrip()}\n\n{EXIT_CODES_HELP}" if epilog else EXIT_CODES_HELP
    p = Parser(prog=prog, description=description, epilog=epilog,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    return p


def add_max_memory(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help=f"memory the run may use: SIZE (RAM, e.g. 6GB) or cpu=SIZE,cuda=SIZE. {what} "
                        "Default: 85%% of the memory available at start")


def add_common(p: argparse.ArgumentParser, device: bool = True) -> None:
    if device:
        p.add_argument("--device", default="auto",
                       help="where the model runs: 'cpu', 'cuda', 'cuda:N' or 'auto' (cuda when available, "
                            "else cpu). Default: auto")
    p.add_argument("--debug", action="store_true",
                   help="on errors, print the full Python traceback instead of a one-line message")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars; instead, in a run longer than a minute, one line per minute on "
                        "stderr with the latest progress (CAT_QUIET_PROGRESS_S sets the interval)")


def _one_line(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    if isinstance(e, KeyError):
        msg = f"missing key {msg}"
    line = " ".join(msg.split())  # collapse newlines: one line, always
    if not isinstance(e, CLIError) and type(e).__name__ not in line:
        line = f"{type(e).__name__}: {line}"
    return line


def main_wrapper(prog: str, build: Callable[[], argparse.ArgumentParser],
                 run: Callable[[argparse.Namespace], int | None], argv: Sequence[str] | None) -> int:
    """Parse ``argv``, call ``run``; map errors to one stderr line and an exit code.

    Ctrl-C exits 130 with one line. ``--debug`` re-raises (full traceback)."""
    args = build().parse_args(argv)
    _threads.configure()  # before anything imports torch: libgomp reads its settings once
    debug = bool(getattr(args, "debug", False))
    quiet = contextlib.nullcontext()
    if getattr(args, "quiet", False):
        quiet_libraries()
        # the bars still run, into a buffer: one line of it reaches stderr per minute
        quiet, args.quiet = QuietProgress(prog), False
    previous = _catch_sigterm()
    try:
        with quiet:
            rc = run(args)
        return int(rc or 0)
    except KeyboardInterrupt as e:
        if debug:
            raise
        how = "stopped (SIGTERM)" if isinstance(e, _Terminated) else "interrupted (Ctrl-C)"
        sys.stderr.write(f"\n{prog}: {how}; nothing was written\n")
        return EXIT_TERMINATED if isinstance(e, _Terminated) else EXIT_INTERRUPTED
    except SystemExit:
        raise
    except UsageError as e:
        if debug:
            raise
        sys.stderr.write(f"{prog}: error: {_one_line(e)} (see {prog} --help)\n")
        return EXIT_USAGE
    except BaseException as e:  # noqa: BLE001 - the point is one line for anything
        if debug:
            raise
        sys.stderr.write(f"{prog}: error: {_one_line(e)} (--debug for a traceback)\n")
        return EXIT_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _catch_sigterm() -> Any:
    """Install the SIGTERM handler (main thread only, where Python delivers signals); the
    previous handler, or None when not installed."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _on_sigterm)


def entry(prog: str, build: Callable[[], argparse.ArgumentParser],
          run: Callable[[argparse.Namespace], int | None]) -> Callable[[Sequence[str] | None], int]:
    def main(argv: Sequence[str] | None = None) -> int:
        return main_wrapper(prog, build, run, argv)
    return main


def quiet_libraries() -> None:
    """Silence the progress bars and info logs of transformers / huggingface_hub."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


# ----------------------------------------------------------------------------- devices & memory

DTYPES = ("auto", "float32", "float16", "bfloat16")
_HALF = ("float16", "bfloat16")


def add_dtype(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="dtype the model computes in (a quantized layer's packed weights and scales are "
                        "kept as stored): 'auto' is float32 on a CPU and, on a GPU, the model's own 16-bit "
                        "dtype (bfloat16 or float16), else float16. Default: auto")


HEAD_BITS = (16, 8, 4)


def add_head_bits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--head-bits", type=int, choices=HEAD_BITS, default=8,
                   help="output head of a quantized checkpoint, rounded to nearest when it is loaded: 8 "
                        "(symmetric, groups of 32: the logits move far less than the 3/4-bit body moves them, "
                        "and every decoded token reads it whole), 4 (asymmetric, groups of 32), or 16 to keep "
                        "it as stored. Unquantized models keep theirs. Default: 8")


def add_plain_decode(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plain-decode", action="store_true",
                   help="run every decode step of a quantized model through transformers' modules "
                        "(default: one native call per step where the model fits: a Llama, Mistral, "
                        "Qwen2 or Qwen3 model in float32 on the CPU; left-padded batches included)")


def add_activations(p: argparse.ArgumentParser, *, both: bool = False) -> None:
    choices = ("float", "int8", "both") if both else ("float", "int8")
    p.add_argument("--activations", choices=choices, default="float",
                   help="how a quantized model's layers take their input on the CPU: 'float' uses it exactly; "
                        "'int8' rounds it to int8 per 32 values (scale max|x|/127, as llama.cpp's Q8_0) and runs "
                        "integer dot products (AVX-512 VNNI where the CPU has it): faster decode and prefill for a "
                        "small change in the outputs"
                   + ("; 'both' measures each quantized model both ways" if both else "") + ". Default: float")


def set_activations(model: Any, mode: str) -> str:
    """Apply --activations ('float' or 'int8') to a quantized ``model``; returns the label for
    the user ('' for float)."""
    from cat_core.nn import set_int8_activations

    set_int8_activations(model, mode == "int8")
    return ", int8 activations" if mode == "int8" else ""


def apply_activations(loaded: Any, mode: str) -> str:
    """--activations for a loaded model (cat-generate, cat-eval): set on a quantized one (returns
    its label), refused for an unquantized one unless 'float'."""
    if loaded.quantized:
        return set_activations(loaded.model, mode)
    if mode != "float":
        raise CLIError(f"--activations {mode}: {loaded.source} is not quantized (the option applies to "
                       "quantized layers)")
    return ""


def decode_step(model: Any, plain: bool) -> str:
    """Put a quantized ``model`` on the native decode step unless ``plain``; returns what its
    decode steps run on, for the user ("native step" or why not)."""
    from cat_core.native_decode import disable_native_decode, try_enable_native_decode

    if plain:
        disable_native_decode(model)  # loaders turn it on where the model fits
        return "plain decode (--plain-decode)"

    why = try_enable_native_decode(model)
    return "native step" if why is None else "plain decode: " + why.removeprefix("native decode step: ")


def compute_dtype(arg: str, device: Any, declared: str | None) -> Any:
    """The torch dtype to run in: ``arg`` unless 'auto' (see :func:`add_dtype`). ``declared`` is
    the dtype the model's own config names (its checkpoint's storage dtype), if any."""
    import torch

    if arg != "auto":
        return getattr(torch, arg)
    if getattr(device, "type", str(device)) != "cuda":
        return torch.float32  # half-precision matmuls on a CPU are slower, and not everywhere exact
    return _own_half(declared)


def storage_dtype(arg: str, declared: str | None) -> Any:
    """The torch dtype to store unquantized tensors in: ``arg`` unless 'auto', which keeps a
    16-bit source as it was (lossless) and stores anything else (float32, GGUF) as float16."""
    import torch

    return getattr(torch, arg) if arg != "auto" else _own_half(declared)


def _own_half(declared: str | None) -> Any:
    """The model's own 16-bit dtype where its config declares one, else float16."""
    import torch

    return getattr(torch, declared if declared in _HALF else "float16")


def dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def resolve_device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise CLIError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"device {name!r} asked for but no CUDA GPU is available (use --device cpu)")
    return dev


def sync(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


def rss_mb() -> float:
    """Current resident set size of this process (MB, 1e6 bytes)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError):  # not Linux: fall back to the high-water mark
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory (MB, 10**6 bytes, as --max-memory counts)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak * 1024 / 1e6 if sys.platform != "darwin" else peak / 1e6


def peak_memory(device: Any) -> tuple[float, str]:
    """(MB, what was measured): CUDA max allocated on a GPU, else the process's peak RSS."""
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e6, "peak CUDA memory allocated"
    return peak_rss_mb(), "peak process RSS"


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"


def fmt_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(s, 60)
    return f"{int(m)} min {s:.0f} s"


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def progress(total: int | None, desc: str, quiet: bool, unit: str = "it") -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, file=sys.stderr, leave=True)
