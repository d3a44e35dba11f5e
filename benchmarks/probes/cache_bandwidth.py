"""torch.sum read bandwidth over float32 buffers of 8 MB to 1 GiB, 2 threads, best of 7: where
the last-level cache ends on this machine (what a decode step of a small model can stay in).

    python benchmarks/probes/cache_bandwidth.py
"""
import torch, time
torch.set_num_threads(2)
for mb in (8, 32, 64, 96, 128, 256, 1024):
    x = torch.ones(mb * 2**20 // 4)
    x.sum()
    best = 1e9
    for _ in range(7):
        t = time.perf_counter(); x.sum(); best = min(best, time.perf_counter() - t)
    print(f"{mb} MB: {mb * 2**20 / best / 1e9:.1f} GB/s")
