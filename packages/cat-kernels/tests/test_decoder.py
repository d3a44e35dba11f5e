"""cat_kernels.Decoder against a float64 numpy decoder written from the transformers Llama/Qwen
equations, on odd sizes, with and without biases and q/k norms, 3 and 4 bits, in chunks."""

from __future__ import annotations

import numpy as np
import pytest

import cat_kernels as ck
from _reference import dequantize_ref, quantize_rtn


def _linear(rng, n, k, bits, group_size):
    w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
    codes, scales, zeros = quantize_rtn(w, bits, group_size, False, "float32")
    pw = ck.PackedWeight(ck.pack(codes, bits), scales, ck.pack_zeros(zeros, bits), group_size, k=k)
    return pw, dequantize_ref(codes, scales, zeros, bits, group_size).astype(np.float64)


class _Model:
    """Random weights for a small decoder and the float64 reference forward."""

    def __init__(self, rng, *, hidden=72, heads=6, kv_heads=2, head_dim=14, inter=100, layers=3, bits=4,
                 group_size=-1, bias=False, qk_norm=False):
        self.hidden, self.heads, self.kv_heads, self.head_dim, self.inter = hidden, heads, kv_heads, head_dim, inter
        self.eps, self.attn_scale, self.rope_scale = 1e-5, head_dim**-0.5, 1.25
        self.inv_freq = (1.0 / 500.0 ** (np.arange(0, head_dim, 2) / head_dim)).astype(np.float32)
        self.final_norm = (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)
        self.dec = ck.Decoder(hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim, intermediate=inter,
                              eps=self.eps, attn_scale=self.attn_scale, inv_freq=self.inv_freq,
                              final_norm=self.final_norm, rope_scale=self.rope_scale)
        shapes = dict(q=(heads * head_dim, hidden), k=(kv_heads * head_dim, hidden), v=(kv_heads * head_dim, hidden),
                      o=(hidden, heads * head_dim), gate=(inter, hidden), up=(inter, hidden), down=(hidden, inter))
        self.layers = []
        for _ in range(layers):
            packed, dense = {}, {}
            for name, (n, k) in shapes.items():
                gs = group_size if group_size == -1 or k % group_size == 0 else -1
                packed[name], dense[name] = _linear(rng, n, k, bits, gs)
            norms = {n: (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32) for n in ("in_norm", "post_norm")}
            if qk_norm:
                norms.update({n: (1 + 0.1 * rng.standard_normal(head_dim)).astype(np.float32)
                              for n in ("q_norm", "k_norm")})
            biases = ({n: (0.1 * rng.standard_normal(shapes[n][0])).astype(np.float32) for n in shapes}
                      if bias else {})
            self.dec.add_layer(**norms, **packed, biases=biases)
            self.layers.append((dense, norms, biases))

    def _norm(self, x, w):
        return w * (x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps))

    def _rope(self, x, pos):  # x [T, heads, hd]
        f = pos[:, None] * self.inv_freq.astype(np.float64)[None]
        c, s = np.cos(f)[:, None] * self.rope_scale, np.sin(f)[:, None] * self.rope_scale
        half = self.head_dim // 2
        x1, x2 = x[..., :half], x[..., half:]
        return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)

    def forward(self, emb):
        """Reference over the whole sequence emb [T, hidden]: (final-normed last hidden, keys,
        values [layers, kv_heads, T, hd])."""
        T, hd = emb.shape[0], self.head_dim
        h = emb.astype(np.float64)
        pos = np.arange(T, dtype=np.float64)
        keys, values = [], []
        for dense, norms, biases in self.layers:
            lin = lambda name, x: x @ dense[name].T + biases.get(name, 0.0)  # noqa: E731
            a = self._norm(h, norms["in_norm"])
            q = lin("q", a).reshape(T, self.heads, hd)
            k = lin("k", a).reshape(T, self.kv_heads, hd)
            v = lin("v", a).reshape(T, self.kv_heads, hd)
            if "q_norm" in norms:
                q, k = self._norm(q, norms["q_norm"]), self._norm(k, norms["k_norm"])
            q, k = self._rope(q, pos), self._rope(k, pos)
            keys.append(k.transpose(1, 0, 2))
            values.append(v.transpose(1, 0, 2))
            rep = self.heads // self.kv_heads
            kk, vv = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
            s = np.einsum("thd,uhd->htu", q, kk) * self.attn_scale
            s = np.where(np.tril(np.ones((T, T), bool))[None], s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            att = np.einsum("htu,uhd->thd", p, vv).reshape(T, -1)
            h = h + lin("o", att)
            a = self._norm(h, norms["post_norm"])
            g, u = lin("gate", a), lin("up", a)
            h = h + lin("down", g / (1 + np.exp(-g)) * u)
        return self._norm(h[-1], self.final_norm), np.stack(keys), np.stack(values)


# float32 rounding through 3 layers (q/k norms divide by small per-head norms, which amplifies it):
# at most 2.8e-5 of (1 + |value|) over 60 seeds x these 4 cases (benchmarks/probes/decoder_rounding.py,
# log in benchmarks/results/decode_2026-12-07/session18/); a wrong code, rotation or mask
# moves values by 1e-2 or more.
REL = 1e-4


def _close(got, ref, what):
    err = np.abs(got.astype(np.float64) - ref)
    bound = REL * (1 + np.abs(ref))
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (f"{what}: error {err[worst]:.3g} at {worst} above the bound {bound[worst]:.3g} "
                                  f"(reference {ref[worst]:.4g})")


@pytest.mark.parametrize("bits,group_size,bias,qk_norm", [(4, 32, False, False), (3, -1, True, False),
                                                          (4, -1, True, True), (8, 32, False, True)])
def test_steps_match_the_reference(rng, bits, group_size, bias, qk_norm):
    model = _Model(rng, bits=bits, group_size=group_size, bias=bias, qk_norm=qk_norm)
    total, cap, batch = 13, 17, 3 if bias else 1
    emb = rng.standard_normal((batch, total, model.hidden)).astype(np.float32)
    kv = np.full(model.dec.kv_shape(cap, batch), np.nan, np.float32)  # unwritten positions must not be read
    out = np.empty((batch, model.hidden), np.float32)
    # left padding: sequence b's tokens start at cache index starts[b] (what precedes is ignored)
    starts = np.array([0, 3, 1][:batch], np.int64) if batch > 1 else None
    first = [0] * batch if starts is None else list(starts)
    pos = 0
    for m in (5, 1, 1, 3, 1, 2):  # a prompt, single tokens, and chunks
        model.dec.step(np.ascontiguousarray(emb[:, pos:pos + m]), pos, kv, out, starts)
        pos += m
        for b in range(batch):  # each sequence sees its own cache only
            ref, keys, values = model.forward(emb[b, first[b]:pos])
            _close(out[b], ref, f"sequence {b}: hidden after {pos} tokens")
            _close(kv[:, 0, b, :, first[b]:pos], keys, f"sequence {b}: keys after {pos} tokens")
            _close(kv[:, 1, b, :, first[b]:pos], values, f"sequence {b}: values after {pos} tokens")
    assert pos == total


def test_thread_count_does_not_change_results(rng):
    model = _Model(rng, hidden=320, heads=5, kv_heads=5, head_dim=64, inter=900, layers=2)
    emb = rng.standard_normal((40, model.hidden)).astype(np.float32)
    results = []
    for threads in (1, 2, 3):
        ck._C._set_num_threads(threads)
        kv = np.zeros(model.dec.kv_shape(48), np.float32)
        out = np.empty((1, model.hidden), np.float32)
        model.dec.step(emb[None, :39], 0, kv, out)
        model.dec.step(emb[None, 39:], 39, kv, out)
        results.append((out.copy(), kv.copy()))
    for out, kv in results[1:]:
        assert np.array_equal(out, results[0][0]) and np.array_equal(kv, results[0][1])


def test_bad_arguments_name_what_is_wrong(rng):
    model = _Model(rng, layers=1)
    kv = np.zeros(model.dec.kv_shape(4), np.float32)
    out = np.empty((1, model.hidden), np.float32)
    x = np.zeros((1, 3, model.hidden), np.float32)
    with pytest.raises(ValueError, match="kv: capacity 4 is too small"):
        model.dec.step(x, 2, kv, out)
    with pytest.raises(ValueError, match="x: expected dtype float32"):
        model.dec.step(x.astype(np.float64), 0, kv, out)
    with pytest.raises(ValueError, match=r"x: expected shape \(1, 3, 72\)"):
        model.dec.step(np.zeros((1, 3, 71), np.float32), 0, kv, out)
    with pytest.raises(ValueError, match="x: expected a 3-D array"):
        model.dec.step(np.zeros((3, 72), np.float32), 0, kv, out)
    with pytest.raises(ValueError, match="out: expected shape"):
        model.dec.step(x, 0, kv, np.empty(5, np.float32))
    with pytest.raises(ValueError, match="kv: expected shape"):
        model.dec.step(x, 0, np.zeros((2, 2, 1, 2, 4, 14), np.float32), out)
    with pytest.raises(ValueError, match=r"starts: sequence 0 starts at 5, expected 0 \.\. 4"):
        model.dec.step(x, 2, np.zeros(model.dec.kv_shape(8), np.float32), out, np.array([5], np.int64))
    with pytest.raises(ValueError, match="starts: expected dtype int64"):
        model.dec.step(x, 2, np.zeros(model.dec.kv_shape(8), np.float32), out, np.array([1], np.int32))
    with pytest.raises(ValueError, match="kv: expected shape"):  # a cache for another batch size
        model.dec.step(x, 0, np.zeros(model.dec.kv_shape(4, 2), np.float32), out)
    w, _ = _linear(rng, 10, 72, 4, -1)
    good = {n: w for n in ("q", "k", "v", "o", "gate", "up", "down")}
    norms = dict(in_norm=np.ones(72, np.float32), post_norm=np.ones(72, np.float32))
    with pytest.raises(ValueError, match=r"layer 1 q: expected a weight of shape \[84, 72\], got \[10, 72\]"):
        model.dec.add_layer(**norms, **good)
    with pytest.raises(TypeError, match="gate: expected a cat_kernels.PackedWeight"):
        model.dec.add_layer(**norms, **{**good, "gate": np.zeros((100, 72), np.float32)})
    with pytest.raises(ValueError, match="biases: unknown"):
        model.dec.add_layer(**norms, **good, biases={"lm_head": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="heads must be a multiple of kv_heads"):
        ck.Decoder(hidden=8, heads=3, kv_heads=2, head_dim=4, intermediate=8, eps=1e-5, attn_scale=0.5,
                   inv_freq=np.ones(2, np.float32), final_norm=np.ones(8, np.float32))
    empty = ck.Decoder(hidden=8, heads=2, kv_heads=1, head_dim=4, intermediate=8, eps=1e-5, attn_scale=0.5,
                       inv_freq=np.ones(2, np.float32), final_norm=np.ones(8, np.float32))
    with pytest.raises(ValueError, match="no layers"):
        empty.step(np.zeros((1, 1, 8), np.float32), 0, np.zeros((0, 2, 1, 1, 4, 4), np.float32),
                   np.empty((1, 8), np.float32))
