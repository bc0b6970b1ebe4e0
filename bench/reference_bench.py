"""Reference MusicGen timing with Hugging Face transformers, run the way a user would run it: on the CPU in
float32 by default, or on a CUDA GPU (--device cuda) in float32, float16 or bfloat16 (--dtype).

    /work/pyref/bin/python bench/reference_bench.py --model bench-models/musicgen-small-random \
        [--duration 10] [--guidance 3.0] [--top-k 250] [--threads N] [--prompt TEXT] [--seed 0] [--json] \
        [--device cpu|cuda] [--dtype f32|f16|bf16] [--attn sdpa|eager]

One `model.generate(input_ids, attention_mask, do_sample=True, guidance_scale=g, top_k=k,
max_new_tokens=F+K-1)` call, F = round(duration * 50) frames: the delay pattern makes F frames take F+K-1
decoder steps after the single BOS column (max_length = F + K). Measured inside that one call:

    t5_ms       forward hooks around the text encoder (it runs once, batch 1; the CFG "null" half is zeros)
    step times  a LogitsProcessor appended to generate's list records time.perf_counter() at every step;
                consecutive differences are per-step times (sampling of step t-1 + forward of step t). The
                first call is dropped from the statistics (it follows T5, setup and the prefill forward).
    encodec_s   a wrapper around model.audio_encoder.decode (generate calls it once on the de-delayed codes)
    total_s     wall time of the whole generate call (T5 + all decoder steps + EnCodec); rtf = total_s / audio_s

On a GPU every clock above waits for the device first (torch.cuda.synchronize; generate already waits once a
step for its stopping check), and gpu_peak_mb is torch's peak allocated memory during generate.

load_s is from_pretrained's wall time (and the move to the device). t5_ms_separate is one more text-encoder call on the same input after
generate (warm). peak_rss_mb is the peak RSS during generate (VmHWM, reset just before it, as the engine's
`musicgen bench` does); load_peak_rss_mb the peak during loading, process_peak_rss_mb getrusage's ru_maxrss
for the whole process (all in MiB). With --json the last stdout line is one JSON object; the human summary
goes to stderr.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer
from transformers import LogitsProcessor, LogitsProcessorList, MusicgenForConditionalGeneration
from transformers.utils import logging as hf_logging

DEFAULT_PROMPT = "dusty boom-bap drums, 90 bpm"  # the engine's `musicgen bench` default, and the fixtures' prompt


DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def now(device: str) -> float:
    """time.perf_counter() once the device has finished the work queued so far."""
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


class StepClock(LogitsProcessor):
    """Records the time each time generate asks for processed scores (once per decoder step)."""

    def __init__(self, device: str):
        self.device = device
        self.times = []

    def __call__(self, input_ids, scores):
        self.times.append(now(self.device))
        return scores


def vm_hwm_mb():
    """Peak resident set size (Linux VmHWM) in MiB; getrusage's ru_maxrss if /proc is not there."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def reset_peak_rss() -> bool:
    """Start a new VmHWM measurement (Linux: writing 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def torch_blas() -> str:
    """The BLAS torch's CPU matmuls use, from its build configuration (MKL runs its slower generic
    kernels on AMD CPUs: the table must say so rather than credit the difference to the engine)."""
    config = torch.__config__.show()
    for line in config.splitlines():
        if "BLAS_INFO=" in line:
            return line.split("BLAS_INFO=")[1].split(",")[0].strip()
    return "mkl" if torch.backends.mkl.is_available() else "unknown"


def percentile(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def main() -> None:
    ap = argparse.ArgumentParser(description="transformers MusicGen reference timing")
    ap.add_argument("--model", required=True, type=Path, help="checkpoint folder (config.json, model.safetensors, "
                    "tokenizer.json)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of audio (frames = round(duration*50))")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--top-k", type=int, default=250)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else os.cpu_count(), help="torch threads (default: the CPUs this process may run on)")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32", help="the whole model's dtype")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default=None,
                    help="attention implementation (default: transformers' choice, sdpa where available)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    dev = args.device

    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    # ---- load -----------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    # the decoder's attention (EnCodec has no sdpa path; T5 keeps transformers' choice)
    extra = {"attn_implementation": {"decoder": args.attn}} if args.attn else {}
    model = MusicgenForConditionalGeneration.from_pretrained(args.model, dtype=DTYPES[args.dtype], **extra)
    model.eval().to(dev)
    load_s = now(dev) - t0
    load_peak_mb = vm_hwm_mb()

    tok = Tokenizer.from_file(str(args.model / "tokenizer.json"))
    enc = tok.encode(args.prompt)
    input_ids = torch.tensor([enc.ids], dtype=torch.long, device=dev)
    attention_mask = torch.tensor([enc.attention_mask], dtype=torch.long, device=dev)

    k = model.decoder.num_codebooks
    frame_rate = model.config.audio_encoder.frame_rate
    sampling_rate = model.config.audio_encoder.sampling_rate
    hop = model.config.audio_encoder.hop_length
    frames = round(args.duration * frame_rate)
    assert frames >= 1, "duration too short"
    decoder_steps = frames + k - 1

    # ---- instrumentation ------------------------------------------------------------------------------
    t5_spans = []
    t5_start = []
    pre = model.text_encoder.register_forward_pre_hook(lambda m, a: t5_start.append(now(dev)))
    post = model.text_encoder.register_forward_hook(
        lambda m, a, o: t5_spans.append(now(dev) - t5_start[-1]))
    encodec = {}
    real_decode = model.audio_encoder.decode

    def timed_decode(audio_codes, *a, **kw):
        encodec["codes_shape"] = tuple(audio_codes.shape)
        s = now(dev)
        out = real_decode(audio_codes, *a, **kw)
        encodec["s"] = now(dev) - s
        return out

    model.audio_encoder.decode = timed_decode
    clock = StepClock(dev)

    # ---- generate -------------------------------------------------------------------------------------
    peak_was_reset = reset_peak_rss()
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        g0 = now(dev)
        audio = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=True,
            guidance_scale=args.guidance,
            top_k=args.top_k,
            max_new_tokens=decoder_steps,
            logits_processor=LogitsProcessorList([clock]),
        )
        total_s = now(dev) - g0
        gen_peak_mb = vm_hwm_mb()
        gpu_peak_mb = torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else None
        del model.audio_encoder.decode  # back to the class method
        pre.remove()
        post.remove()
        # one more, separate (warm) text-encoder call on the same input
        s = now(dev)
        model.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        t5_separate_ms = (now(dev) - s) * 1e3

    process_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

    # ---- checks & stats -------------------------------------------------------------------------------
    assert encodec.get("codes_shape") == (1, 1, k, frames), encodec.get("codes_shape")
    assert tuple(audio.shape) == (1, 1, frames * hop), tuple(audio.shape)
    assert len(clock.times) == decoder_steps, (len(clock.times), decoder_steps)
    assert len(t5_spans) == 1, t5_spans
    steps_ms = [(b - a) * 1e3 for a, b in zip(clock.times, clock.times[1:])]
    first_step_ms = (clock.times[0] - t5_start[0] - t5_spans[0]) * 1e3  # prefill forward + setup after T5
    audio_s = frames * hop / sampling_rate
    result = {
        "impl": "transformers",
        "precision": args.dtype,
        "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
        "load_s": round(load_s, 4),
        "t5_ms": round(t5_spans[0] * 1e3, 3),
        "step_ms_median": round(statistics.median(steps_ms), 3),
        "step_ms_mean": round(statistics.fmean(steps_ms), 3),
        "steps": decoder_steps,
        "encodec_s": round(encodec["s"], 4),
        "total_s": round(total_s, 4),
        "rtf": round(total_s / audio_s, 4),
        "peak_rss_mb": round(gen_peak_mb if peak_was_reset else process_peak_mb, 1),
        "threads": torch.get_num_threads(),
        "frames": frames,
        "audio_s": audio_s,
        # extras (not needed by the table)
        "load_peak_rss_mb": round(load_peak_mb, 1),
        "process_peak_rss_mb": round(process_peak_mb, 1),
        "timed_steps": len(steps_ms),
        "step_ms_p10": round(percentile(steps_ms, 0.1), 3),
        "step_ms_p90": round(percentile(steps_ms, 0.9), 3),
        "first_step_ms": round(first_step_ms, 3),
        "t5_ms_separate": round(t5_separate_ms, 3),
        "prompt_tokens": len(enc.ids),
        "guidance": args.guidance,
        "top_k": args.top_k,
        "seed": args.seed,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attn_implementation": model.config.decoder._attn_implementation,
        "blas": torch_blas(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if gpu_peak_mb is not None:
        result["gpu_peak_mb"] = round(gpu_peak_mb, 1)

    log(f"transformers {transformers.__version__}, torch {torch.__version__}, python {platform.python_version()}, "
        f"{torch.get_num_threads()} threads, attention {result['attn_implementation']}, {result['device']} "
        f"{args.dtype}")
    log(f"model {args.model}: load {load_s:.2f} s")
    log(f"prompt {args.prompt!r} -> {len(enc.ids)} tokens; {frames} frames = {audio_s:g} s audio, "
        f"{decoder_steps} decoder steps, guidance {args.guidance:g}, top_k {args.top_k}, seed {args.seed}")
    log(f"T5 {result['t5_ms']:.1f} ms in generate ({t5_separate_ms:.1f} ms separately, warm); "
        f"first step (prefill + setup) {first_step_ms:.1f} ms")
    log(f"decoder step over {len(steps_ms)} steps: median {result['step_ms_median']:.2f} ms, mean "
        f"{result['step_ms_mean']:.2f} ms, p10 {result['step_ms_p10']:.2f}, p90 {result['step_ms_p90']:.2f}")
    log(f"EnCodec decode {encodec['s']:.3f} s; generate total {total_s:.2f} s; RTF {result['rtf']:.3f}; "
        f"peak RSS {result['peak_rss_mb']:.0f} MB during generate "
        f"({load_peak_mb:.0f} MB during load, {process_peak_mb:.0f} MB process lifetime)"
        + (f"; GPU peak {gpu_peak_mb:.0f} MB allocated" if gpu_peak_mb is not None else ""))
    if args.json:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
