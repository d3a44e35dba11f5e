"""Runs one checkpoint through vLLM (as a user would, the plugin found through its entry point)
and writes what it generated as JSON. A script, run by tests/engines/test_vllm_engine.py in a
fresh process per engine: vLLM's distributed state lives for the whole process.

    python vllm_run.py CHECKPOINT_DIR OUT.json --prompt-ids 1,2,3 [--tp 2] [--max-tokens 20] [--dtype float16] [--quantization caterpillar]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("out")
    ap.add_argument("--prompt-ids", required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=20)
    ap.add_argument("--logprobs", type=int, default=5)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--quantization", default=None, help="vLLM's --quantization (default: from config.json)")
    a = ap.parse_args()
    result: dict = {"tp": a.tp}
    t0 = time.perf_counter()
    try:
        from vllm import LLM, SamplingParams

        llm = LLM(a.path, dtype=a.dtype, enforce_eager=True, max_model_len=128, max_num_seqs=4,
                  skip_tokenizer_init=True, seed=0, tensor_parallel_size=a.tp,
                  distributed_executor_backend="uni" if a.tp == 1 else "mp", quantization=a.quantization)
        result["load_s"] = round(time.perf_counter() - t0, 1)
        prompt = [int(t) for t in a.prompt_ids.split(",")]
        t1 = time.perf_counter()
        sp = SamplingParams(max_tokens=a.max_tokens, min_tokens=a.max_tokens, temperature=0.0,
                            logprobs=a.logprobs, detokenize=False)
        out = llm.generate([{"prompt_token_ids": prompt}], sp)[0].outputs[0]
        result["generate_s"] = round(time.perf_counter() - t1, 1)
        result["token_ids"] = list(out.token_ids)
        result["logprobs"] = [{str(t): lp.logprob for t, lp in step.items()} for step in out.logprobs]
        qc = llm.llm_engine.vllm_config.quant_config
        result["quant_config"] = repr(qc)
    except Exception as e:  # noqa: BLE001 - the test reads and judges the error
        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()
    with open(a.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    main()
