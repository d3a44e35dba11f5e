"""Runs inside the engine venv (tools/setup_engines_hf.sh), never imports cat-core: loads each
checkpoint directory the way a user of transformers + GPTQModel would, generates greedily from the
prompt and writes to ``<out>/<name>.safetensors`` those tokens, the logits each greedy step chose
from, and its logits at every position of them in one forward; reports which quantized-linear classes the engine picked and the dtypes
their forwards saw.

    python _run_hf_engine.py SPEC.json   SPEC: {"new_tokens": 20, "out": DIR,
                                                "runs": {name: {"dir": path, "prompt": [...]}}}
"""

from __future__ import annotations

import json
import platform
import sys
import time
import traceback

import torch
from safetensors.torch import save_file


def _load(path: str):
    """(model, how): AWQ through transformers' from_pretrained (its AWQ integration runs on
    GPTQModel) in float32; GPTQ through GPTQModel.load, which reads v1 and v2 (transformers' own
    GPTQ route wants optimum as well), in float16: GPTQModel's CPU kernel takes float16/bfloat16
    only."""
    cfg = json.load(open(f"{path}/config.json"))
    if cfg.get("quantization_config", {}).get("quant_method") == "gptq":
        from gptqmodel import GPTQModel

        return GPTQModel.load(path, device="cpu", dtype=torch.float16).model, "GPTQModel.load fp16"
    from transformers import AutoModelForCausalLM

    return (AutoModelForCausalLM.from_pretrained(path, device_map="cpu", dtype=torch.float32),
            "from_pretrained fp32")


def _quant_modules(model) -> list:
    return [m for m in model.modules() if hasattr(m, "qweight")]


def _watch_dtypes(modules: list) -> tuple[dict, list]:
    """Forward hooks recording (input dtype, output dtype) pairs of the quantized linears."""
    seen: dict[str, int] = {}

    def hook(module, args, out):
        x = args[0] if args else None
        key = f"{getattr(x, 'dtype', None)} -> {getattr(out, 'dtype', None)}".replace("torch.", "")
        seen[key] = seen.get(key, 0) + 1

    return seen, [m.register_forward_hook(hook) for m in modules]


def _kernel_facts(modules: list) -> dict:
    """What the engine says about its kernel: class, backend and any dtype attribute it keeps."""
    facts: dict[str, str] = {}
    for m in modules[:1]:
        for attr in ("backend", "QUANT_TYPE", "kernel", "compute_dtype", "dtype", "pack_dtype"):
            v = getattr(m, attr, None)
            if v is not None and not callable(v):
                facts[attr] = str(v)
        for name, buf in list(m.named_buffers())[:6]:
            facts[f"buffer {name}"] = str(buf.dtype).replace("torch.", "")
    return facts


def _cpu() -> dict:
    flags = ""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags.split()]
    vendor = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("vendor_id")), "?")
    return {"vendor": vendor, "flags": isa, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine()}


def main() -> int:
    spec = json.load(open(sys.argv[1]))
    report: dict = {"cpu": _cpu(), "versions": {}}
    for pkg in ("torch", "transformers", "gptqmodel"):
        try:
            from importlib.metadata import version

            report["versions"][pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - a version we cannot read is reported as unknown
            report["versions"][pkg] = "?"
    for name, run in spec["runs"].items():
        t0 = time.perf_counter()
        try:
            model, how = _load(run["dir"])
            model.eval()
            modules = _quant_modules(model)
            seen, hooks = _watch_dtypes(modules)
            with torch.no_grad():
                gen = model.generate(torch.tensor([run["prompt"]]), max_new_tokens=spec["new_tokens"],
                                     do_sample=False, pad_token_id=spec.get("pad_token_id", 0),
                                     output_logits=True, return_dict_in_generate=True)
                out = gen.sequences[0]
                steps = torch.stack([x[0] for x in gen.logits]).float()
                logits = model(out[None]).logits[0].float()
                for h in hooks:
                    h.remove()
            save_file({"logits": logits.contiguous(), "tokens": out.contiguous(), "step_logits": steps.contiguous()},
                      f"{spec['out']}/{name}.safetensors")
            report[name] = {"ok": True, "how": how, "modules": sorted({type(m).__name__ for m in modules}),
                            "dtypes": seen, "kernel": _kernel_facts(modules),
                            "seconds": round(time.perf_counter() - t0, 1)}
        except Exception as e:  # one export failing must not hide the others' results
            report[name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
