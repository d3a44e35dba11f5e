"""CUDA kernels of cat-kernels, checked against the CPU kernels and an independent numpy model.

Every CUDA op (pack, unpack, dequantize, gemm) is called with torch CUDA tensors and compared
with the same op on CPU tensors and with a numpy reference written from docs/format.md alone.

Tolerances (gemm). Let W32 be the dequantized weight computed as format.md says in float32
(exactly what the reference below computes) and ref = x @ W32.T in float64. A kernel may
  * round each weight once to x's dtype before multiplying (the tensor-core path does: that is
    `dequantize(..., dtype=x.dtype)`): relative error u_x per product,
  * accumulate in float32 in any fixed order: at most K * 2**-24 of sum_k |x_k w_k| (the
    classical worst-case bound for a sum of K terms, whatever the order or split),
  * round the result once to x's dtype: u_x of |y|,
with u = 2**-24 (float32), 2**-11 (float16), 2**-8 (bfloat16) (unit roundoff, round-to-nearest).
So |y - ref| <= (u_x + K * 2**-24) * (|x| @ |W32|.T) + u_x * |ref|, up to second-order terms;
the tests allow twice that. A wrong code, zero or scale moves an element by about
|x_k| * |s| -- far outside this bound for float32 and float16 inputs. dequantize and pack /
unpack are exact, so they are compared bit for bit.
"""

from __future__ import annotations

import functools
import itertools
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (CUDA tests use torch CUDA tensors)")
import cat_kernels as ck  # noqa: E402  (a broken build must fail loudly, not skip)

if not torch.cuda.is_available():
    pytest.skip("torch.cuda.is_available() is False: no usable CUDA device", allow_module_level=True)
if not ck.cuda_available():
    pytest.skip(
        "cat_kernels.cuda_available() is False: cat-kernels was built without CUDA "
        "(CAT_KERNELS_CUDA=OFF) or sees no device",
        allow_module_level=True,
    )

pytestmark = pytest.mark.cuda

DEV = torch.device("cuda")
BITS = [2, 3, 4, 8]
GROUPS = [32, 64, 128, -1]
XDTYPES = [torch.float32, torch.float16, torch.bfloat16]
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
DTYPE_NAME = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


# ---------------------------------------------------------------- helpers


def seed_for(*params) -> int:
    """A stable seed per test case (reproducible failures), different for every case."""
    return zlib.crc32(repr(params).encode())


def as_torch(a) -> "torch.Tensor":
    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    return torch.from_dlpack(a)


def dequant(packed, scales, zeros, group_size, k, dtype):
    """ck.dequantize with an explicit output dtype (torch dtype, or its name as a fallback)."""
    try:
        out = ck.dequantize(packed, scales, zeros, group_size, k=k, dtype=dtype)
    except (TypeError, ValueError):
        out = ck.dequantize(packed, scales, zeros, group_size, k=k, dtype=DTYPE_NAME[dtype])
    return as_torch(out)


def ref_pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Independent packer, straight from docs/format.md."""
    n, k = codes.shape
    t, b = -(-n // 16), -(-k // 32)
    q = np.zeros((t * 16, b * 32), dtype=np.uint64)
    q[:n, :k] = codes.astype(np.uint64)
    q = q.reshape(t, 16, b, 32).transpose(0, 2, 1, 3)  # [t, b, r, v]
    if bits == 3:
        # One 96-bit little-endian stream per block: value v at stream bits [3v, 3v + 3), word w
        # = stream bits [32w, 32w + 32). Spread every code into its bits, regroup by 32.
        bit = (q[..., None] >> np.arange(3, dtype=np.uint64)) & 1  # [t, b, r, v, 3]
        stream = bit.reshape(t, b, 16, 3, 32)  # stream bit 3v + i -> word (3v+i)//32, bit (3v+i)%32
        words = (stream << np.arange(32, dtype=np.uint64)).sum(axis=-1)  # [t, b, r, 3]
    else:
        f = 32 // bits
        qq = q.reshape(t, b, 16, bits, f)
        words = (qq << (bits * np.arange(f, dtype=np.uint64))).sum(axis=-1)  # [t, b, r, bits]
    words = words.transpose(0, 1, 3, 2).astype(np.uint32)  # [t, b, w, r]
    return np.ascontiguousarray(words).view(np.int32)


def ref_dequant(codes, scales_f32, zero_codes, group_size, bits) -> np.ndarray:
    """float32(q - z) * float32(s), computed in float32 (numpy rounds correctly)."""
    n, k = codes.shape
    g = k if group_size == -1 else group_size
    z = np.full((n, k // g), 2 ** (bits - 1), np.int32) if zero_codes is None else zero_codes.astype(np.int32)
    diff = (codes.astype(np.int32) - np.repeat(z, g, axis=1)).astype(np.float32)
    return diff * np.repeat(scales_f32.astype(np.float32), g, axis=1)


class Problem:
    """Random quantized weight [n, k] (packed on the CPU) plus its reference pieces."""

    def __init__(self, n, k, bits, group_size, sym, scale_dtype, seed):
        rng = np.random.default_rng(seed)
        self.n, self.k, self.bits, self.group_size = n, k, bits, group_size
        g = k if group_size == -1 else group_size
        ng = k // g
        self.codes = rng.integers(0, 2**bits, size=(n, k), dtype=np.uint8)
        # Scales of both signs and a spread of magnitudes, rounded to their storage dtype.
        s = rng.uniform(0.5, 2.0, size=(n, ng)) * rng.choice([-1.0, 1.0], size=(n, ng)) * 2.0 ** -bits
        self.scales_t = torch.from_numpy(s.astype(np.float32)).to(scale_dtype)
        self.scales_f32 = self.scales_t.float().numpy()
        self.zero_codes = None if sym else rng.integers(0, 2**bits, size=(n, ng), dtype=np.uint8)
        self.packed_cpu = as_torch(ck.pack(self.codes, bits))
        self.zeros_cpu = None if sym else as_torch(ck.pack_zeros(self.zero_codes, bits))
        self.w32 = ref_dequant(self.codes, self.scales_f32, self.zero_codes, group_size, bits)

    def args(self, device):
        z = None if self.zeros_cpu is None else self.zeros_cpu.to(device)
        return self.packed_cpu.to(device), self.scales_t.to(device), z, self.group_size


def random_x(m, k, dtype, seed):
    rng = np.random.default_rng(seed ^ 0x5EED)
    return torch.from_numpy(rng.standard_normal((m, k)).astype(np.float32)).to(dtype)


def gemm_bound(x: "torch.Tensor", w32: np.ndarray):
    x64 = x.double().cpu().numpy()
    w64 = w32.astype(np.float64)
    ref = x64 @ w64.T
    absref = np.abs(x64) @ np.abs(w64).T
    u = UNIT_ROUNDOFF[x.dtype]
    k = x.shape[1]
    tol = 2.0 * ((u + k * 2.0**-24) * absref + u * np.abs(ref)) + 1e-30
    return ref, tol


def assert_close(y, ref, tol, what):
    got = y.double().cpu().numpy()
    err = np.abs(got - ref)
    bad = ~(err <= tol)  # also catches NaN
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        pytest.fail(
            f"{what}: {int(bad.sum())} of {bad.size} elements out of tolerance; first at {i}: "
            f"got {got[i]!r}, reference {ref[i]!r}, tolerance {tol[i]!r}"
        )


def run_gemm(x, prob: Problem, device):
    packed, scales, zeros, g = prob.args(device)
    return as_torch(ck.gemm(x.to(device), packed, scales, zeros, g))


# ---------------------------------------------------------------- pack / unpack


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", [(1, 1), (16, 32), (37, 100), (300, 1024), (5, 4097)])
@pytest.mark.parametrize("code_dtype", [np.uint8, np.int32])
def test_pack_unpack_match_cpu_and_reference(bits, shape, code_dtype):
    rng = np.random.default_rng(seed_for("pack", bits, shape, code_dtype))
    codes = rng.integers(0, 2**bits, size=shape).astype(code_dtype)
    check_pack_roundtrip(lambda c: ck.pack(c, bits), lambda p: ck.unpack(p, *shape), codes,
                         ref_pack(codes, bits))


def check_pack_roundtrip(pack, unpack, values: np.ndarray, expect: np.ndarray) -> None:
    """`pack` gives `expect` on the CPU and on the GPU, and `unpack` on the GPU gives `values`."""
    cpu = as_torch(pack(values)).numpy()
    gpu = as_torch(pack(torch.from_numpy(values).to(DEV)))
    assert gpu.is_cuda and gpu.dtype == torch.int32
    np.testing.assert_array_equal(cpu, expect)
    np.testing.assert_array_equal(gpu.cpu().numpy(), expect)
    back = as_torch(unpack(gpu))
    assert back.is_cuda and back.dtype == torch.uint8
    np.testing.assert_array_equal(back.cpu().numpy(), values.astype(np.uint8))


def ref_pack_zeros(z: np.ndarray, bits: int) -> np.ndarray:
    """Independent zero-point packer from docs/format.md: each row one dense stream of
    ceil(n_groups * bits / 32) words, zero point g at stream bits [bits g, bits g + bits)."""
    n, ng = z.shape
    t, nw = -(-n // 16), -(-(ng * bits) // 32)
    out = np.zeros((t, nw, 16), dtype=np.uint32)
    for row in range(n):
        s = 0
        for g in range(ng):
            s |= int(z[row, g]) << (bits * g)
        for w in range(nw):
            out[row // 16, w, row % 16] = (s >> (32 * w)) & 0xFFFFFFFF
    return out.view(np.int32)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", [(1, 1), (16, 9), (37, 11), (300, 24), (5, 200)])
def test_pack_unpack_zeros_match_cpu_and_reference(bits, shape):
    rng = np.random.default_rng(seed_for("pack_zeros", bits, shape))
    z = rng.integers(0, 2**bits, size=shape).astype(np.uint8)
    check_pack_roundtrip(lambda v: ck.pack_zeros(v, bits),
                         lambda p: ck.unpack_zeros(p, *shape, bits), z, ref_pack_zeros(z, bits))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("code_dtype", [np.uint8, np.int32])
def test_pack_reports_first_bad_code_like_cpu(bits, code_dtype):
    if bits == 8 and code_dtype == np.uint8:
        pytest.skip("every uint8 value is a valid 8-bit code")
    codes = np.zeros((40, 70), dtype=code_dtype)
    codes[30, 5] = 2**bits + 3  # later in row-major order
    codes[7, 66] = 2**bits  # the first bad code
    if code_dtype == np.int32:
        codes[20, 1] = -1
    with pytest.raises(ValueError) as cpu_err:
        ck.pack(codes, bits)
    with pytest.raises(ValueError) as gpu_err:
        ck.pack(torch.from_numpy(codes).to(DEV), bits)
    assert str(gpu_err.value) == str(cpu_err.value)
    assert "7" in str(gpu_err.value) and "66" in str(gpu_err.value)


def test_pack_negative_int32_code():
    codes = np.zeros((3, 40), dtype=np.int32)
    codes[1, 2] = -5
    with pytest.raises(ValueError) as cpu_err:
        ck.pack(codes, 4)
    with pytest.raises(ValueError) as gpu_err:
        ck.pack(torch.from_numpy(codes).to(DEV), 4)
    assert str(gpu_err.value) == str(cpu_err.value)


# ---------------------------------------------------------------- dequantize


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", GROUPS)
@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("scale_dtype", XDTYPES, ids=lambda d: DTYPE_NAME[d])
@pytest.mark.parametrize("out_dtype", XDTYPES, ids=lambda d: DTYPE_NAME[d])
def test_dequantize_bit_exact(bits, group_size, sym, scale_dtype, out_dtype):
    n, k = (45, 1001) if group_size == -1 else (45, 512)
    prob = Problem(n, k, bits, group_size, sym, scale_dtype, seed_for("dq", bits, group_size, sym, scale_dtype))
    expect = torch.from_numpy(prob.w32).to(out_dtype)  # one round-to-nearest-even from float32
    gpu = dequant(*prob.args(DEV), k=k, dtype=out_dtype)
    cpu = dequant(*prob.args("cpu"), k=k, dtype=out_dtype)
    assert gpu.is_cuda and gpu.dtype == out_dtype and tuple(gpu.shape) == (n, k)
    assert torch.equal(gpu.cpu(), expect), "CUDA dequantize differs from float32(q - z) * float32(s)"
    assert torch.equal(gpu.cpu(), cpu), "CUDA dequantize differs from the CPU dequantize"


# ---------------------------------------------------------------- gemm

GEMM_CASES = list(itertools.product(BITS, GROUPS, [True, False], XDTYPES, [1, 3, 8, 17, 64]))


@pytest.mark.parametrize(
    "bits,group_size,sym,x_dtype,m",
    GEMM_CASES,
    ids=[f"b{b}-g{g}-{'sym' if s else 'asym'}-{DTYPE_NAME[d]}-m{m}" for b, g, s, d, m in GEMM_CASES],
)
def test_gemm_matches_cpu_and_reference(bits, group_size, sym, x_dtype, m):
    # N = 40: not a multiple of 16 (a padded tile). K = 1024 (or odd 1001 for a whole-row group)
    # gives several K partitions in both the GEMV (M <= 8) and the tiled path.
    n, k = (40, 1001) if group_size == -1 else (40, 1024)
    seed = seed_for("gemm", bits, group_size, sym, x_dtype, m)
    scale_dtype = XDTYPES[seed % 3]  # every path sees every scale dtype across the matrix
    prob = Problem(n, k, bits, group_size, sym, scale_dtype, seed)
    x = random_x(m, k, x_dtype, seed)
    y = run_gemm(x, prob, DEV)
    assert y.is_cuda and y.dtype == x_dtype and tuple(y.shape) == (m, n)
    ref, tol = gemm_bound(x, prob.w32)
    assert_close(y, ref, tol, "CUDA gemm vs float64 reference")
    y_cpu = run_gemm(x, prob, "cpu")
    assert_close(y, y_cpu.double().numpy(), 2 * tol, "CUDA gemm vs CPU gemm")


@pytest.mark.parametrize(
    "m,n,k,group_size,bits",
    [
        (1, 4100, 4096, 128, 4),  # GEMV, many tiles, split-K
        (1, 5000, 256, 32, 3),  # GEMV, one partition (direct store)
        (2, 1000, 4096, 128, 3),
        (8, 1000, 4096, 128, 4),
        (5, 17, 50, -1, 2),  # tiny odd K, K < one warp step
        (9, 33, 96, 32, 8),  # smallest tiled M
        (33, 1, 32, 32, 4),  # N = 1
        (64, 1000, 2048, 64, 3),
        (200, 300, 520, -1, 4),  # K not a multiple of 8 (scalar x loads in the tiled path)
        (1024, 1024, 256, 128, 4),  # tiled, one partition
    ],
)
@pytest.mark.parametrize("x_dtype", XDTYPES, ids=lambda d: DTYPE_NAME[d])
def test_gemm_shapes(m, n, k, group_size, bits, x_dtype):
    seed = seed_for("shapes", m, n, k, group_size, bits, x_dtype)
    prob = Problem(n, k, bits, group_size, seed % 2 == 0, torch.float16, seed)
    x = random_x(m, k, x_dtype, seed)
    y = run_gemm(x, prob, DEV)
    ref, tol = gemm_bound(x, prob.w32)
    assert_close(y, ref, tol, f"CUDA gemm {m}x{n}x{k}")


@pytest.mark.parametrize("m", [1, 6, 40])
@pytest.mark.parametrize("x_dtype", XDTYPES, ids=lambda d: DTYPE_NAME[d])
def test_gemm_unaligned_views(m, x_dtype):
    """packed / zeros / x that start 4 bytes past a 16-byte boundary (no 128-bit loads): the same
    result as aligned arrays, bit for bit where both calls run the same kernel."""
    n, k, bits = 70, 512, 4
    seed = seed_for("unaligned", m, x_dtype)
    prob = Problem(n, k, bits, 64, False, torch.float32, seed)
    packed, scales, zeros, g = prob.args(DEV)

    def shifted(t, pad_elems):
        buf = torch.zeros(t.numel() + pad_elems, dtype=t.dtype, device=DEV)
        v = buf[pad_elems:].view(t.shape)
        v.copy_(t)
        return v

    packed_u, zeros_u = shifted(packed, 1), shifted(zeros, 1)
    assert packed_u.data_ptr() % 16 != 0
    x = random_x(m, k, x_dtype, seed)
    x_u = shifted(x.to(DEV), 1 if x_dtype == torch.float32 else 2)
    y = as_torch(ck.gemm(x_u, packed_u, scales, zeros_u, g))
    ref, tol = gemm_bound(x, prob.w32)
    assert_close(y, ref, tol, "CUDA gemm on unaligned views")
    y_aligned = run_gemm(x, prob, DEV)
    if m <= 8 and x_dtype != torch.float32 and ck.cuda_impl() == "v2":
        # Aligned, the v2 GEMV runs; unaligned, the legacy GEMV (v2 loads 64-bit words). Both meet
        # the contract but sum in different orders, so one output rounding may differ.
        assert_close(y, y_aligned.double().cpu().numpy(), 2 * tol,
                     "unaligned (legacy GEMV) vs aligned (v2 GEMV)")
    else:
        assert torch.equal(y, y_aligned), "alignment changed the result"


@pytest.mark.parametrize("m", [1, 8, 64])
def test_gemm_deterministic(m):
    prob = Problem(4096, 4096, 4, 128, False, torch.float16, seed_for("det", m))
    x = random_x(m, 4096, torch.float16, 7).to(DEV)
    packed, scales, zeros, g = prob.args(DEV)
    y1 = as_torch(ck.gemm(x, packed, scales, zeros, g))
    y2 = as_torch(ck.gemm(x, packed, scales, zeros, g))
    assert torch.equal(y1, y2), "two identical gemm calls differ (split-K must be deterministic)"


@pytest.mark.parametrize("m", [1, 64])
def test_gemm_runs_on_current_stream(m):
    """Inputs produced on a side stream behind a long sleep: a kernel launched on any other stream
    would read them before they exist."""
    n, k = 1000, 2048
    prob = Problem(n, k, 4, 128, True, torch.float16, seed_for("stream", m))
    packed, scales, zeros, g = prob.args(DEV)
    x_src = random_x(m, k, torch.float16, 3).to(DEV)
    expect = as_torch(ck.gemm(x_src, packed, scales, zeros, g))
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        x = torch.empty_like(x_src)
        torch.cuda._sleep(100_000_000)  # ~50 ms of GPU time on this stream
        x.copy_(x_src)
        y = as_torch(ck.gemm(x, packed, scales, zeros, g))
    side.synchronize()
    assert torch.equal(y, expect)


@pytest.mark.parametrize("m", [1, 64])
def test_gemm_cuda_graph_capture(m):
    n, k = 1000, 2048
    prob = Problem(n, k, 3, 128, False, torch.bfloat16, seed_for("graph", m))
    packed, scales, zeros, g = prob.args(DEV)
    static_x = random_x(m, k, torch.float16, 1).to(DEV)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch recommends
        for _ in range(2):
            ck.gemm(static_x, packed, scales, zeros, g)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = as_torch(ck.gemm(static_x, packed, scales, zeros, g))
    x2 = random_x(m, k, torch.float16, 2).to(DEV)
    static_x.copy_(x2)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_y, as_torch(ck.gemm(x2, packed, scales, zeros, g)))
    ref, tol = gemm_bound(x2.cpu(), prob.w32)
    assert_close(static_y, ref, tol, "replayed graph")


def test_gemm_cuda_graph_capture_split_k_gemv():
    """Decode on real models: M = 1 with a K long enough to split (the v2 GEMV's split-K reduces
    through per-tile counters in the workspace, which every replay must find reset)."""
    m, n, k, g, bits = 1, 1024, 4096, 128, 4
    assert ck._C._cuda_gemm_workspace_elems(m, n, k, bits, g) > 0, "the shape no longer splits K"
    prob = Problem(n, k, bits, g, False, torch.float16, seed_for("graph_split", m))
    packed, scales, zeros, _ = prob.args(DEV)
    static_x = random_x(m, k, torch.float16, 1).to(DEV)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ck.gemm(static_x, packed, scales, zeros, g)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = as_torch(ck.gemm(static_x, packed, scales, zeros, g))
    for seed in (2, 3, 3):  # the same input twice: a stale counter would show as a different result
        x = random_x(m, k, torch.float16, seed).to(DEV)
        static_x.copy_(x)
        graph.replay()
        torch.cuda.synchronize()
        eager = as_torch(ck.gemm(x, packed, scales, zeros, g))
        assert torch.equal(static_y, eager), f"replay with x seed {seed}"
        ref, tol = gemm_bound(x.cpu(), prob.w32)
        assert_close(static_y, ref, tol, f"replayed split-K graph, x seed {seed}")


@pytest.mark.parametrize("m", [1, 5, 64])
@pytest.mark.parametrize("x_dtype", XDTYPES, ids=lambda d: DTYPE_NAME[d])
def test_packed_weight_matches_gemm_on_streams_and_graphs(m, x_dtype):
    """PackedWeight (the per-call path of cat-core's layers: raw pointers for torch tensors)
    gives ck.gemm's bits, on the current stream, and under CUDA graph capture."""
    n, k = 333, 1024
    prob = Problem(n, k, 3, 64, False, torch.float16, seed_for("pw", m, str(x_dtype)))
    packed, scales, zeros, g = prob.args(DEV)
    pw = ck.PackedWeight(packed, scales, zeros, g)
    assert pw.device == f"cuda:{DEV.index or 0}"
    x = random_x(m, k, x_dtype, 5).to(DEV)
    expect = as_torch(ck.gemm(x, packed, scales, zeros, g))
    assert torch.equal(pw.gemm(x), expect)
    assert torch.equal(as_torch(pw.dequantize(torch.float32)), dequant(packed, scales, zeros, g, k, torch.float32))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        xs = torch.empty_like(x)
        torch.cuda._sleep(50_000_000)
        xs.copy_(x)
        ys = pw.gemm(xs)
    side.synchronize()
    assert torch.equal(ys, expect)
    static_x = x.clone()
    with torch.cuda.stream(side):
        pw.gemm(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = pw.gemm(static_x)
    x2 = random_x(m, k, x_dtype, 6).to(DEV)
    static_x.copy_(x2)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_y, as_torch(ck.gemm(x2, packed, scales, zeros, g)))
    with pytest.raises(ValueError, match="x: expected an array on cuda"):
        pw.gemm(x.cpu())


# ---------------------------------------------------------------- bad input


def test_cpu_cuda_mix_raises_value_error():
    prob = Problem(32, 128, 4, 32, False, torch.float16, 11)
    packed, scales, zeros, g = prob.args(DEV)
    x = random_x(2, 128, torch.float16, 11)
    with pytest.raises(ValueError):
        ck.gemm(x, packed, scales, zeros, g)  # x on the CPU
    with pytest.raises(ValueError):
        ck.gemm(x.to(DEV), packed, scales.cpu(), zeros, g)
    with pytest.raises(ValueError):
        ck.gemm(x.to(DEV), packed, scales, zeros.cpu(), g)
    with pytest.raises(ValueError):
        ck.dequantize(packed, scales.cpu(), zeros, g)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_devices_raise_value_error_and_second_device_works():
    prob = Problem(32, 128, 4, 32, False, torch.float16, 12)
    packed, scales, zeros, g = prob.args("cuda:0")
    x = random_x(2, 128, torch.float16, 12)
    with pytest.raises(ValueError):
        ck.gemm(x.to("cuda:1"), packed, scales, zeros, g)
    with pytest.raises(ValueError):
        ck.gemm(x.to("cuda:0"), packed, scales.to("cuda:1"), zeros, g)
    y1 = as_torch(ck.gemm(x.to("cuda:1"), *prob.args("cuda:1")))
    assert y1.device == torch.device("cuda:1")
    assert torch.equal(y1.cpu(), as_torch(ck.gemm(x.to("cuda:0"), packed, scales, zeros, g)).cpu())


# ---------------------------------------------------------------- v2 kernels (issue 15)
#
# Both kernel sets are tested until a GPU run has verified v2 (then legacy is deleted). The
# tolerance here is the contract's (docs/format.md "Numeric contract"): float32 accumulation of
# exact products, one rounding to x's dtype, W never rounded to 16 bits. For a path that does
# round W (the legacy tiled kernel, M > 8 with 16-bit x) the reference rounds W the same way,
# so the tolerance stays tight enough for one wrong code to fail.

IMPLS = ["v2", "legacy"]
TILED_V2 = bool(getattr(ck._C, "_cuda_tiled_v2", False))


@pytest.fixture(params=IMPLS)
def impl(request):
    ck.set_cuda_impl(request.param)
    assert ck.cuda_impl() == request.param
    yield request.param
    ck.set_cuda_impl(None)


def rounds_w(impl_name: str, m: int, x_dtype) -> bool:
    """The legacy tiled kernel (M > 8) rounds W to x's 16-bit dtype before the tensor cores."""
    return m > 8 and x_dtype != torch.float32 and (impl_name == "legacy" or not TILED_V2)


def tight_ref(x: "torch.Tensor", w32: np.ndarray, round_w: bool):
    """Reference and a tight tolerance: x @ W.T in float64 (W rounded to x's dtype if the path
    does), allowing one output rounding plus 16 sigma of a float32 random-walk sum. One wrong
    code moves an output by |x_k| |s| ~ 2**-bits |x_k|: > 10x this for |x_k| >~ 0.5."""
    x64 = x.double().cpu()
    w = torch.from_numpy(w32)
    if round_w:
        w = w.to(x.dtype).float()
    w64 = w.double().to(x64.device)
    ref = (x64 @ w64.T).numpy()
    absref = (x64.abs() @ w64.abs().T).numpy()
    k = x.shape[1]
    u = UNIT_ROUNDOFF[x.dtype]
    tol = u * np.abs(ref) + 16 * np.sqrt(k) * 2.0**-24 * absref + 1e-30
    return ref, tol


V2_CASES = list(itertools.product(BITS, GROUPS, [1, 2, 3, 4, 5, 8]))


@pytest.mark.parametrize(
    "bits,group_size,m", V2_CASES, ids=[f"b{b}-g{g}-m{m}" for b, g, m in V2_CASES]
)
@pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_gemv_several_steps_per_lane(impl, bits, group_size, m, x_dtype):
    """Every bit width, M bucket and group size with many blocks per warp / lane (K = 4096:
    chunks of 8+ blocks, several pipeline steps, scales and zero points of many groups), odd N,
    asymmetric, every scale dtype across the matrix."""
    n, k = (83, 4000) if group_size == -1 else (83, 4096)
    seed = seed_for("v2steps", bits, group_size, m, x_dtype)
    prob = Problem(n, k, bits, group_size, False, XDTYPES[seed % 3], seed)
    x = random_x(m, k, x_dtype, seed)
    y = run_gemm(x, prob, DEV)
    ref, tol = tight_ref(x, prob.w32, False)
    assert_close(y, ref, tol, f"{impl} GEMV b{bits} g{group_size} m{m}")


@functools.lru_cache(maxsize=1)
def _cap_problem(bits):
    return Problem(4096, 11008, bits, 128, False, torch.float16, seed_for("cap", bits))


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("m", [5, 8])
def test_gemv_shared_memory_cap(impl, m, bits):
    """4096 x 11008 at M = 5..8: the legacy GEMV's x staging hits its 48 KB cap (40 blocks per
    split); v2 covers the same shape with its own plan."""
    prob = _cap_problem(bits)
    x = random_x(m, 11008, torch.float16, 21)
    y = run_gemm(x, prob, DEV)
    ref, tol = tight_ref(x, prob.w32, False)
    assert_close(y, ref, tol, f"{impl} GEMV 4096x11008 m{m}")


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_gemm_m300_every_bit_width(impl, bits, x_dtype):
    """M = 300 (five 64-row tiles, the last partial) and N = 200 (four 64-column tiles, the last
    partial): tensor-core tiles beyond the first for every bit width."""
    m, n, k = 300, 200, 640
    seed = seed_for("m300", bits, x_dtype)
    prob = Problem(n, k, bits, 64, bits % 2 == 0, torch.float16, seed)
    x = random_x(m, k, x_dtype, seed)
    y = run_gemm(x, prob, DEV)
    ref, tol = tight_ref(x, prob.w32, rounds_w(impl, m, x_dtype))
    assert_close(y, ref, tol, f"{impl} gemm M=300 b{bits}")


@pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("bits", [3, 4])
def test_gemm_batch_invariance_m8_m9(impl, x_dtype, bits):
    """The same rows of x at M = 8 (GEMV) and M = 9 (tiled) agree within the contract's bound
    (twice the tight tolerance), and within the GEMV a row is bit-identical for M = 1..8 (v2)."""
    n, k = 1000, 2048
    prob = Problem(n, k, bits, 128, False, torch.float16, seed_for("inv", bits, x_dtype))
    x9 = random_x(9, k, x_dtype, 31)
    y8 = run_gemm(x9[:8].contiguous(), prob, DEV).double().cpu().numpy()
    y9 = run_gemm(x9, prob, DEV).double().cpu().numpy()[:8]
    ref, tol = tight_ref(x9[:8], prob.w32, False)
    if rounds_w(impl, 9, x_dtype):  # legacy tiled: W rounded to x's dtype (format.md's exception)
        ref9, tol9 = tight_ref(x9[:8], prob.w32, True)
        bad = ~(np.abs(y9 - ref9) <= tol9)
        assert not bad.any(), "legacy tiled M=9 is off its own (W-rounded) reference"
    else:
        bad = ~(np.abs(y8 - y9) <= 2 * tol)
        assert not bad.any(), f"{int(bad.sum())} outputs differ between M=8 and M=9 beyond the contract"
    if impl == "v2":
        for m in range(1, 8):
            ym = run_gemm(x9[:m].contiguous(), prob, DEV).double().cpu().numpy()
            assert np.array_equal(ym, y8[:m]), f"v2 GEMV: rows differ between M={m} and M=8"


@pytest.mark.parametrize("m", [1, 4, 8, 9, 64])
def test_gemm_fp16_weights_beyond_65504_stay_finite(impl, m):
    """Finite weights above float16's range (scale 2**13, |q - z| up to 15) with float16 x: the
    true result is finite, so must be ours (W is never rounded to float16)."""
    if rounds_w(impl, m, torch.float16):
        pytest.skip("the legacy tiled kernel rounds W to float16 (format.md: the one exception)")
    n, k, bits = 64, 256, 4
    prob = Problem(n, k, bits, 128, False, torch.float32, seed_for("ovf", m))
    big = torch.full_like(prob.scales_t, 8192.0)
    prob.scales_t, prob.scales_f32 = big, big.numpy()
    prob.w32 = ref_dequant(prob.codes, prob.scales_f32, prob.zero_codes, 128, bits)
    assert np.abs(prob.w32).max() > 65504
    x = (random_x(m, k, torch.float32, 41) * 2.0**-12).to(torch.float16)
    y = run_gemm(x, prob, DEV)
    ref, tol = tight_ref(x, prob.w32, False)
    assert np.isfinite(ref).all() and np.abs(ref).max() < 60000
    assert torch.isfinite(y).all(), "a finite result came back inf/NaN"
    assert_close(y, ref, tol, f"{impl} gemm with weights > 65504, m={m}")


@pytest.mark.parametrize("m", [1, 3, 8])
@pytest.mark.parametrize("x_dtype", XDTYPES, ids=lambda d: DTYPE_NAME[d])
def test_gemm_odd_shapes_split_k(impl, m, x_dtype):
    """Odd N and K, few tiles (in-kernel split-K with uneven chunks), whole-row groups with a
    virtual last block; float32 x takes the legacy GEMV in both modes. Run under
    compute-sanitizer memcheck by tools/gpu_check.sh."""
    for n, k, g in [(20, 4160, 64), (33, 3001, -1), (7, 96, 32), (50, 5088, 96)]:
        seed = seed_for("odd", m, x_dtype, n, k)
        prob = Problem(n, k, 3 if n % 2 else 4, g, n % 3 == 0, torch.bfloat16, seed)
        x = random_x(m, k, x_dtype, seed)
        y = run_gemm(x, prob, DEV)
        ref, tol = tight_ref(x, prob.w32, False)
        assert_close(y, ref, tol, f"{impl} gemm {m}x{n}x{k} g{g}")
        y2 = run_gemm(x, prob, DEV)
        assert torch.equal(y, y2), "split-K result not deterministic"


def test_cuda_impl_switch_changes_kernels_not_results():
    prob = Problem(256, 1024, 4, 128, False, torch.float16, 77)
    x = random_x(4, 1024, torch.float16, 77)
    ck.set_cuda_impl("legacy")
    try:
        y_legacy = run_gemm(x, prob, DEV)
    finally:
        ck.set_cuda_impl(None)
    y_v2 = run_gemm(x, prob, DEV)
    ref, tol = tight_ref(x, prob.w32, False)
    assert_close(y_legacy, ref, tol, "legacy")
    assert_close(y_v2, ref, tol, "v2")
