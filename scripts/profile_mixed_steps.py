"""What a vLLM engine step costs when it holds a prompt beside running decodes ("mixed"), against
the same prompt alone and the decodes alone, with the GPU kernels of each.

In a serving run most prompts enter a step that also decodes the running sequences. The offline
measurements never build such a step (an offline batch prefills, then decodes), so this script
builds them one at a time on a synchronous engine (``LLMEngine``, asynchronous scheduling off, so
that ``step()`` returns when the step's tokens are on the host and its wall time is the step's):

1. D sequences of ``--context`` prompt tokens are admitted and prefilled, then decode (EOS ignored);
2. ``--reps`` times: the wall time of a decode-only step of the D, then one request of
   ``--prompt`` tokens and one output token is added, and the step that holds it is timed;
3. one decode-only step and one mixed step are each run again under torch.profiler (CUDA activity
   only): their kernels by category (:mod:`perfmodel.measuring.vllm_kernels`), the GPU's busy
   time and the wall time;
4. the D sequences are aborted, and the next D follows on the same engine (D = 0 first: the
   prompt's step alone).

The engine is built as ``perfmodel measure --backend vllm`` builds one (``VLLMBackend.prepare``:
dummy weights from the model's config.json, prefix caching off, the engine's process as the
environment says), at a serving run's max_num_seqs (256) and CUDA-graph sizes, with vLLM's
routing simulator where ``--routing uniform_random``. The host's speed is probed before and after each D
(:func:`perfmodel.host_speed.probe_ms`). Steps whose prompt needed a kernel compiled for its
token count show as outliers in the first repetitions; ``--warmup`` mixed steps per D are run
untimed first.

Usage (on a CUDA machine with the vLLM bundle; ``source scripts/vllm_setup.sh`` first)::

    python3 scripts/profile_mixed_steps.py --model deepseek-v2-lite --routing uniform_random \\
        --decodes 0,16,64 --out OUT/mixed-steps.jsonl [--set KEY=VALUE ...] [--quantization fp8-block]

Appends one JSON row per (model, D) to ``--out``: step wall times (ms), their medians, the two
profiles, the host probes, the engine's settings and provenance.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: its perfmodel
from perfmodel.host_speed import probe_ms  # noqa: E402
from perfmodel.measuring import env  # noqa: E402
from perfmodel.measuring import vllm_backend as vb  # noqa: E402
from perfmodel.measuring.points import build_points  # noqa: E402
from perfmodel.measuring.vllm_kernels import profile_run, summary  # noqa: E402

#: Sequences the engine may run at once (as ``perfmodel measure --serving`` sets it).
MAX_NUM_SEQS = 256


def build_engine(args):
    """A synchronous vLLM engine for the model, built as the measured rows' engines are
    (:meth:`perfmodel.measuring.vllm_backend.VLLMBackend.prepare`), and its sweep point."""
    settings = vb.point_settings(quantization=args.quantization, routing=args.routing, sampling="random")
    point = build_points([args.model], [MAX_NUM_SEQS], [[args.prompt]], [args.steps], backend="vllm",
                         overrides=args.set or [], settings=settings)[0]
    backend = vb.VLLMBackend(engine_args={"async_scheduling": False,
                                          "max_model_len": max(args.prompt, args.context) + args.steps + 16})
    return backend, backend.prepare([point]), point


class Stepper:
    """Requests in and timed steps out of one synchronous engine."""

    def __init__(self, llm, vocab: int, seed: int = 0) -> None:
        from vllm import SamplingParams

        self.engine = llm.llm_engine
        self.vocab = vocab
        self.seed = seed
        self.next_id = 0
        self.params = SamplingParams

    def add(self, prompt_len: int, output_len: int) -> str:
        rid = f"r{self.next_id}"
        self.next_id += 1
        prompt = vb.make_prompts([prompt_len], self.vocab, seed=self.seed + self.next_id)[0]
        params = self.params(**vb.sampling_kwargs(output_len, "random"))
        self.engine.add_request(rid, prompt, params)
        return rid

    def step_ms(self) -> float:
        t0 = time.perf_counter()
        self.engine.step()
        return (time.perf_counter() - t0) * 1e3

    def drain(self) -> None:
        while self.engine.has_unfinished_requests():
            self.engine.step()


def one_count(stepper: Stepper, decodes: int, args) -> dict:
    """Steps for ``decodes`` running sequences: decode-only and mixed wall times, and profiles."""
    probe_before = probe_ms()
    running = [stepper.add(args.context, args.steps) for _ in range(decodes)]
    for _ in range(4):  # their prefills (one step of D x context tokens at most, in chunks)
        stepper.step_ms()
    for _ in range(args.warmup):
        stepper.add(args.prompt, 1)
        stepper.step_ms()
        stepper.step_ms()
    decode_ms, mixed_ms = [], []
    for _ in range(args.reps):
        if decodes:
            decode_ms.append(stepper.step_ms())
        stepper.add(args.prompt, 1)
        mixed_ms.append(stepper.step_ms())
    profiles = {}
    if decodes:
        profiles["decode"] = summary(profile_run(stepper.engine.step))
    stepper.add(args.prompt, 1)
    profiles["mixed"] = summary(profile_run(stepper.engine.step))
    if running:
        stepper.engine.abort_request(running)
    stepper.drain()
    med = (lambda xs: round(statistics.median(xs), 3) if xs else None)
    return {"decodes": decodes, "prompt": args.prompt, "context": args.context,
            "decode_ms": [round(x, 3) for x in decode_ms], "mixed_ms": [round(x, 3) for x in mixed_ms],
            "decode_median_ms": med(decode_ms), "mixed_median_ms": med(mixed_ms),
            "profiles": profiles, "host_probe_ms": [round(probe_before, 3), round(probe_ms(), 3)]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--set", action="append", help="config override KEY=VALUE (repeatable)")
    ap.add_argument("--quantization", default=None)
    ap.add_argument("--routing", default="model", choices=("model", "uniform_random"))
    ap.add_argument("--decodes", default="0,16,64", help="running sequences D, comma-separated")
    ap.add_argument("--prompt", type=int, default=1024, help="tokens of the prompt added to a step")
    ap.add_argument("--context", type=int, default=128, help="prompt tokens of each running sequence")
    ap.add_argument("--steps", type=int, default=400, help="output tokens each running sequence may take")
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.decodes.split(",")]
    if max(counts) >= MAX_NUM_SEQS:
        ap.error(f"--decodes must stay below {MAX_NUM_SEQS}")
    backend, handle, point = build_engine(args)
    kwargs, settings = handle["kwargs"], handle["settings"]
    stepper = Stepper(handle["llm"], handle["vocab"])
    provenance = env.provenance()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for d in counts:
        row = {"model": args.model, "overrides": args.set or [], "quantization": args.quantization or "none",
               "routing": args.routing, "point_id": point.point_id, **one_count(stepper, d, args),
               "engine": {k: v for k, v in kwargs.items() if k != "model"}, "settings": settings,
               "provenance": provenance}
        with args.out.open("a") as f:
            f.write(json.dumps(row, default=str) + "\n")
        print(f"{args.model} D={d}: decode {row['decode_median_ms']} ms, mixed {row['mixed_median_ms']} ms, "
              f"mixed busy {row['profiles']['mixed']['busy_ms']:.2f} ms", flush=True)
    backend.release(handle)


if __name__ == "__main__":
    main()
