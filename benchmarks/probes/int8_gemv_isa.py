"""int8_gemv.py on a forced kernel path (e.g. avx2 on an AVX-512 machine: what a CPU without
VNNI gets).

    python benchmarks/probes/int8_gemv_isa.py ISA N K [BITS] [PREFILL_M]
"""

import runpy
import sys
from pathlib import Path

import cat_kernels as ck

ck._C._set_isa(sys.argv[1])
sys.argv = [sys.argv[0]] + sys.argv[2:]
runpy.run_path(str(Path(__file__).with_name("int8_gemv.py")), run_name="__main__")
