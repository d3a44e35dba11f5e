"""One configuration of benchmarks/probes/omp_waits.sh: self-sampling (the quality reference's
sampler) from the embedded SmolLM2 and an AWQ-search-like block of fp32 linears, in this process's
OpenMP settings. Prints one line per workload.
    python benchmarks/probes/omp_waits.py TAG N_SEQ SEQLEN"""

import sys
import time

t0 = time.perf_counter()
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from cat_apps._models import load  # noqa: E402
from cat_core.eval import reference_logprobs, sample_texts  # noqa: E402

tag, n, seqlen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
m = load(None, quiet=True)
t1 = time.perf_counter()
ids = sample_texts(m.model, m.tokenizer, n, seqlen, 1234)
t2 = time.perf_counter()
reference_logprobs(m.model, ids)
t3 = time.perf_counter()
print(f"{tag}: threads {torch.get_num_threads()} load {t1 - t0:.1f}s sample {n}x{seqlen} {t2 - t1:.2f}s "
      f"({1e3 * (t2 - t1) / (seqlen - 1):.1f} ms/step) reflogprobs {t3 - t2:.2f}s", flush=True)

# the AWQ search's shape of work: 512 tokens through SmolLM2-sized linears, for 6 s
torch.manual_seed(0)
x = torch.randn(512, 576)
ws = [torch.randn(1536, 576), torch.randn(576, 1536), torch.randn(576, 576)]


def step():
    h = F.silu(F.linear(x, ws[0]))
    return F.linear(F.linear(h, ws[1]), ws[2]).sum()


for _ in range(3):
    step()
t, k = time.perf_counter(), 0
while time.perf_counter() - t < 6:
    step()
    k += 1
print(f"{tag}: awq-like {1e3 * (time.perf_counter() - t) / k:.2f} ms/iter", flush=True)
