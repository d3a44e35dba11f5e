#!/usr/bin/env python3
"""SASS budget of the CUDA gemm kernels, without a GPU.

Builds the gemm kernel sources for sm_89 and sm_90 with nvcc (-cubin, -Xptxas -v), reads the SASS
with cuobjdump and prints, per kernel: SASS instructions per weight in the main loop, registers,
spills and shared memory. Exits non-zero when a v2 GEMV kernel exceeds its budget (issue 15: at
most 3 instructions per weight at 4 bits with float16 x, 3.5 with bfloat16 x, 4 at 3 bits) or
spills. The legacy kernels (kept until a GPU run has verified v2) are listed, not budgeted.

    python packages/cat-kernels/tools/sass_budget.py [--archs 89 90] [--out docs/sass_budget.md]

The main loop is the innermost loop (a backward branch enclosing no other) with the most
instructions; its static instruction count, divided by the weights one thread handles per trip,
is the figure (every instruction in the loop body counts once per trip, including ones behind a
rarely taken branch: an upper bound). Kernels are found generically in every compiled file;
WEIGHTS maps a kernel name to its weights per thread per trip (a kernel it does not know still
gets its row, with the loop's instruction count and no per-weight figure).

Tools: nvcc from --nvcc / $NVCC / PATH / /usr/local/cuda/bin; cuobjdump from the same toolkit or
the PyPI package nvidia-cuda-cuobjdump (tools/setup.sh installs it into .venv and .venv-kernels);
cu++filt or c++filt demangles.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PKG = HERE.parent
CUDA_DIR = PKG / "csrc" / "cuda"
# The sources the table covers: every gemm kernel file (gemv*.cu, gemm_tiled*.cu).
SOURCE_GLOBS = ("gemv*.cu", "gemm_tiled*.cu")

# kernel name (demangled, template args included) -> weights per thread per main-loop trip
WEIGHTS: list[tuple[str, object]] = [
    # v2 GEMV: a trip is two steps (ping-pong buffers) of U blocks, 2 rows x 8 codes per lane
    # per block
    (r"gemv_v2_kernel<(\d+), (true|false), (\d+)>", lambda m: 32 * int(m.group(3))),
    # legacy GEMV: one block of 4 rows per lane per trip
    (r"gemv_kernel<(\d+), (\d+)>", lambda m: 128),
    # tiled (legacy and v2): a 64 x 64 W tile per 128 threads per k-step
    (r"gemm_(tc|fma|tiled_v2)_kernel<", lambda m: 32),
]
# (bits, bf16) -> max instructions per weight. Issue 15: 3 at 4 bits, 4 at 3 bits (its speed
# goals are stated for float16 x). bfloat16's 7-bit mantissa cannot hold a nibble at bit 4, so
# its 4-bit decode needs 3 shifts per word where float16's needs 1 (gemv_arith.h): 3.5 there.
BUDGET = {(3, False): 4.0, (3, True): 4.0, (4, False): 3.0, (4, True): 3.5}


def budget_for(name: str) -> float | None:
    """The budget applies to the kernel of group 128 (and any multiple, or a whole row of a
    multiple of 128 columns): unit 4. Units 2 and 1 (groups of 64 and 32 columns) pay their
    scale and zero-point setup every 32 or 16 weights per lane; their rows are reported only."""
    m = re.search(r"gemv_v2_kernel<(\d+), (true|false), 4>", name)
    return BUDGET.get((int(m.group(1)), m.group(2) == "true")) if m else None


@dataclass
class Kernel:
    arch: str
    mangled: str
    name: str = ""
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    stack: int = 0
    smem: int = 0
    sass: list = field(default_factory=list)  # (address, text)
    loop_instr: int = 0
    loop_has: str = ""
    weights: int | None = None

    @property
    def per_weight(self) -> float | None:
        return self.loop_instr / self.weights if self.weights else None


def find_tool(name: str, explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    env = os.environ.get(name.upper().replace("+", "P"))
    if env:
        return env
    hit = shutil.which(name)
    if hit:
        return hit
    for d in ("/usr/local/cuda/bin",):
        p = Path(d) / name
        if p.exists():
            return str(p)
    # the PyPI wheels (nvidia-cuda-cuobjdump / -nvdisasm): nvidia/cu13/bin in site-packages
    for sp in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        for p in Path(sp).glob(f"nvidia/*/bin/{name}"):
            return str(p)
    return None


def compile_cubin(nvcc: str, src: Path, arch: str, out: Path) -> str:
    cmd = [nvcc, "-std=c++17", "-O3", "-cubin", f"-arch=sm_{arch}", "-Xptxas", "-v",
           f"-I{PKG / 'csrc' / 'include'}", str(src), "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"nvcc failed on {src.name} for sm_{arch}:\n{r.stderr[-4000:]}")
    return r.stderr + r.stdout


def parse_ptxas(log: str, arch: str) -> dict[str, Kernel]:
    kernels: dict[str, Kernel] = {}
    cur = None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for 'sm_(\d+)", line)
        if m:
            cur = kernels.setdefault(m.group(1), Kernel(arch=arch, mangled=m.group(1)))
            continue
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            cur = kernels.get(m.group(1), cur)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur.stack, cur.spill_stores, cur.spill_loads = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur.registers = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            cur.smem = int(s.group(1)) if s else 0
    return kernels


def parse_sass(text: str) -> dict[str, list]:
    funcs: dict[str, list] = {}
    cur = None
    for line in text.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            cur = funcs.setdefault(m.group(1), [])
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m and cur is not None:
            cur.append((int(m.group(1), 16), m.group(2)))
    return funcs


def main_loop(sass: list) -> tuple[int, str]:
    """Instruction count of the innermost loop with the most instructions, and a summary of
    the instruction kinds in it."""
    loops = []
    for addr, text in sass:
        m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if m:
            tgt = int(m.group(1), 16)
            if tgt <= addr:
                loops.append((tgt, addr))
    inner = [lp for lp in loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]
    if not inner:
        return 0, ""
    best = None
    for lo, hi in inner:
        body = [t for a, t in sass if lo <= a <= hi]
        if best is None or len(body) > len(best):
            best = body
    kinds: dict[str, int] = {}
    for t in best:
        op = re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0]
        kinds[op] = kinds.get(op, 0) + 1
    top = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])[:6])
    return len(best), top


def demangle(names: list[str]) -> dict[str, str]:
    tool = find_tool("cu++filt") or find_tool("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    r = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True)
    out = r.stdout.splitlines()
    return {n: (d if d else n) for n, d in zip(names, out)} if len(out) == len(names) else {n: n for n in names}


def short(name: str) -> str:
    name = re.sub(r"cat::cuda::gemm_detail::(\(anonymous namespace\)|_NV_ANON_NAMESPACE)::", "", name)
    name = re.sub(r"\(cat::cuda::gemm_detail::Args.*$", "", name)
    name = re.sub(r"\(.*$", "", name)
    name = name.replace("cat::DType::", "")
    return name


def analyse(nvcc: str, cuobjdump: str, src: Path, arch: str, tmp: Path) -> list[Kernel]:
    cubin = tmp / f"{src.stem}.sm_{arch}.cubin"
    log = compile_cubin(nvcc, src, arch, cubin)
    kernels = parse_ptxas(log, arch)
    r = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, check=True)
    sass = parse_sass(r.stdout)
    names = demangle(list(kernels))
    out = []
    for mangled, k in kernels.items():
        k.name = short(names[mangled])
        k.sass = sass.get(mangled, [])
        k.loop_instr, k.loop_has = main_loop(k.sass)
        for pat, fn in WEIGHTS:
            m = re.search(pat, k.name)
            if m:
                k.weights = fn(m)
                break
        out.append(k)
    return out


def table(kernels: list[Kernel]) -> str:
    lines = [
        "| kernel | arch | instr/weight (main loop) | loop instr | weights/trip/thread | regs | spills (st/ld B) | smem B | main loop mix |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k in sorted(kernels, key=lambda k: (k.name, k.arch)):
        pw = f"{k.per_weight:.2f}" if k.per_weight is not None else "-"
        b = budget_for(k.name)
        if b is not None:
            pw += f" (<= {b:g})"
        lines.append(
            f"| `{k.name}` | sm_{k.arch} | {pw} | {k.loop_instr} | {k.weights or '-'} | {k.registers} | "
            f"{k.spill_stores}/{k.spill_loads} | {k.smem} | {k.loop_has} |"
        )
    return "\n".join(lines)


def check(kernels: list[Kernel]) -> list[str]:
    errors = []
    for k in kernels:
        if "gemv_v2" in k.name and (k.spill_stores or k.spill_loads):
            errors.append(f"{k.name} sm_{k.arch}: spills ({k.spill_stores} B stored, {k.spill_loads} B loaded)")
        b = budget_for(k.name)
        if b is not None:
            if not k.loop_instr:
                errors.append(f"{k.name} sm_{k.arch}: main loop not found in the SASS")
            elif k.per_weight > b:
                errors.append(f"{k.name} sm_{k.arch}: {k.per_weight:.2f} instructions per weight > budget {b:g}")
    return errors


def run(archs: list[str], sources: list[Path], nvcc: str | None = None, jobs: int = 2) -> list[Kernel]:
    nvcc = find_tool("nvcc", nvcc)
    cuobjdump = find_tool("cuobjdump")
    if not nvcc:
        raise SystemExit("sass_budget: nvcc not found (PATH, $NVCC or /usr/local/cuda/bin)")
    if not cuobjdump:
        raise SystemExit("sass_budget: cuobjdump not found; pip install nvidia-cuda-cuobjdump")
    with tempfile.TemporaryDirectory(prefix="cat_sass_") as d:
        with cf.ThreadPoolExecutor(max_workers=jobs) as ex:
            futs = [ex.submit(analyse, nvcc, cuobjdump, s, a, Path(d)) for s in sources for a in archs]
            kernels = [k for f in futs for k in f.result()]
    return kernels


def default_sources() -> list[Path]:
    seen = []
    for g in SOURCE_GLOBS:
        for p in sorted(CUDA_DIR.glob(g)):
            if p not in seen:
                seen.append(p)
    return seen


def write_doc(out: Path, kernels: list[Kernel], errors: list[str], source_names: list[str],
              nvcc: str | None = None) -> None:
    nvcc = find_tool("nvcc", nvcc)
    ver = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-2:]
    out.write_text(
        "# SASS budget of the CUDA gemm kernels\n\n"
        "Generated by `python packages/cat-kernels/tools/sass_budget.py --out "
        "packages/cat-kernels/docs/sass_budget.md` (no GPU needed); CI runs the same check "
        "(tests/test_sass_budget.py). Budget (issue 15): the v2 GEMV's main loop (group 128) at most 3 "
        "SASS instructions per weight at 4 bits with float16 x (3.5 with bfloat16 x, whose 4-bit "
        "decode needs two more shifts per word), 4 at 3 bits, and no v2 GEMV kernel spills; the other "
        "kernels are listed, not budgeted (the legacy ones are kept until a GPU run has verified v2). The main "
        "loop is the innermost loop with the most instructions; instructions per weight = its "
        "static instruction count / the weights one thread handles per trip (an upper bound: "
        "rarely taken branches inside count fully). The v2 GEMV's figure holds for every M <= 8 "
        "(one kernel serves them all); a trip of its main loop is two steps of `unit` blocks "
        "(`gemv_v2_kernel<bits, bf16, unit>`: unit 4 for groups of 128 or more, 2 for 64, 1 for 32), "
        "each step including the group change (scale, zero point, next group's fetch) that group 128 "
        "makes at every step. A trip of a tiled kernel's main loop is one k-step of 64 columns "
        "(`gemm_tiled_v2_kernel<bits, bf16, MT>`: MT x 16 rows of x).\n\n"
        f"Toolkit: {' '.join(ver)}. Sources: {', '.join(source_names)}.\n\n"
        + table(kernels) + "\n\n" + ("Budget: OK\n" if not errors else "Budget FAILED:\n" + "\n".join(errors) + "\n")
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", nargs="+", default=["89", "90"])
    ap.add_argument("--sources", nargs="*", type=Path, default=None,
                    help="kernel files (default: csrc/cuda/gemv*.cu and gemm_tiled*.cu)")
    ap.add_argument("--nvcc", default=None)
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("SASS_JOBS", "2")))
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    args = ap.parse_args(argv)
    sources = args.sources or default_sources()
    kernels = run(args.archs, sources, args.nvcc, args.jobs)
    tab = table(kernels)
    print(tab)
    errors = check(kernels)
    if args.out:
        write_doc(args.out, kernels, errors, [s.name for s in sources], args.nvcc)
    if errors:
        print("\nSASS budget FAILED:\n  " + "\n  ".join(errors), file=sys.stderr)
        return 1
    print("\nSASS budget: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
