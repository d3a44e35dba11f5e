"""Runs inside the engine venv (tools/setup_engines_hf.sh), never imports cat-core: loads each
checkpoint directory the way a user of transformers + GPTQModel would, and writes its logits on the
prompt and its greedy tokens to ``<out>/<name>.safetensors``.

    python _run_hf_engine.py SPEC.json      SPEC: {"ids": [...], "new_tokens": 20, "out": DIR,
                                                   "dirs": {name: path}}
"""

from __future__ import annotations

import json
import sys
import time
import traceback

import torch
from safetensors.torch import save_file


def _load(path: str):
    """(model, how): AWQ through transformers' from_pretrained (its AWQ integration runs on
    GPTQModel) in float32; GPTQ through GPTQModel.load, which reads v1 and v2 (transformers' own
    GPTQ route wants optimum as well), in float16: GPTQModel's CPU kernel (TorchLinear) takes
    float16/bfloat16 only."""
    cfg = json.load(open(f"{path}/config.json"))
    if cfg.get("quantization_config", {}).get("quant_method") == "gptq":
        from gptqmodel import GPTQModel

        return GPTQModel.load(path, device="cpu", dtype=torch.float16).model, "GPTQModel.load fp16"
    from transformers import AutoModelForCausalLM

    return (AutoModelForCausalLM.from_pretrained(path, device_map="cpu", dtype=torch.float32),
            "from_pretrained fp32")


def main() -> int:
    spec = json.load(open(sys.argv[1]))
    ids = torch.tensor([spec["ids"]])
    report = {}
    for name, path in spec["dirs"].items():
        t0 = time.perf_counter()
        try:
            model, how = _load(path)
            model.eval()
            kinds = sorted({type(m).__name__ for m in model.modules() if "Quant" in type(m).__name__})
            with torch.no_grad():
                logits = model(ids).logits[0].float()
                out = model.generate(ids, max_new_tokens=spec["new_tokens"], do_sample=False,
                                     pad_token_id=spec.get("pad_token_id", 0))[0]
            save_file({"logits": logits.contiguous(), "tokens": out.contiguous()}, f"{spec['out']}/{name}.safetensors")
            report[name] = {"ok": True, "how": how, "modules": kinds, "seconds": round(time.perf_counter() - t0, 1)}
        except Exception as e:  # one export failing must not hide the others' results
            report[name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
