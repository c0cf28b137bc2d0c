"""Benchmark: the Spark-free encoder core (``udfs.encoder``) alone, on CPU or a CUDA GPU.

SPEC's GPU figure is about the bare encoder (>= 50,000 sequences/s for MiniLM at <= 64 tokens on
an H100/H200), so this script needs neither Spark nor Java at run time: a GPU box with torch
and transformers is enough.  Three steps, each a sub-command:

``render`` (needs Spark; run where the project is installed)
    renders user (or session) sequences of generated data with the pipeline's own transforms
    (``benchmarks/embed.py``'s ``rendered_sequences``) and writes them as JSON lines, so every
    machine times the same rows::

        python benchmarks/encoder_core.py render --rows 20000 --max-length 64 --out texts.jsonl

``export-model``
    copies a Hugging Face encoder directory (default: the packaged all-MiniLM-L6-v2) with its
    weights stored in another dtype, for carrying a model to an offline machine under a size
    limit (float16 halves MiniLM's 91 MB).  ``run --reference-model`` measures what the
    rounding costs; ``run`` always upcasts the weights to float32 after loading, so its fp32
    path really is fp32 arithmetic::

        python benchmarks/encoder_core.py export-model --dtype float16 --out /tmp/minilm-fp16

``run`` (Spark-free)
    times, per batch size, on the same rows: tokenisation; the encoder with every row encoded
    in fp32 and under bf16 autocast (``Encoder.encode_texts``: on CUDA a thread tokenises the
    next chunk while the GPU encodes this one; the path SPEC's figure is about); the model alone
    on pre-tokenised rows; and ``Encoder.encode`` (each distinct text once, the pipeline's
    path).  Each timing is the median of ``--repeats`` turns taken in rotation, after a warm-up
    pass.  Prints sequences/s and tokens/s, the cosine of bf16's vectors to fp32's (min / mean
    over every row), and on CUDA the pipelined vectors against one pass, and, on a sample, the
    fp32 and bf16 CUDA vectors against the same model's
    fp32 CPU vectors::

        python benchmarks/encoder_core.py run --texts texts.jsonl --device cuda \\
            --model-path /tmp/minilm-fp16 --batch-sizes 256 1024 4096
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jobs.core.config import EncoderConfig  # noqa: E402  (Spark-free)
from jobs.core.config.sections import Precision  # noqa: E402

#: Rows of the CPU-vs-CUDA agreement check (CPU fp32 is the slow side).
AGREEMENT_ROWS = 1024


def render(args: argparse.Namespace) -> int:
    """Write ``--rows`` rendered sequences to ``--out`` (JSON lines of strings)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from embed import rendered_sequences  # Spark from here on

    config = EncoderConfig(max_length=args.max_length)
    texts = rendered_sequences(
        args.rows, config, Path(tempfile.mkdtemp(prefix="bench-render-")), args.unit
    )
    out = Path(args.out)
    out.write_text("".join(json.dumps(t) + "\n" for t in texts), encoding="utf-8")
    print(f"wrote {len(texts):,} {args.unit} sequences ({len(set(texts)):,} distinct) to {out}")
    return 0


def export_model(args: argparse.Namespace) -> int:
    """Save ``--model-path`` (default: packaged MiniLM) with weights cast to ``--dtype``."""
    import shutil

    import torch
    from transformers import AutoModel

    from udfs.encoder import resolve_model_path

    source = resolve_model_path(EncoderConfig(model_path=args.model_path))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = AutoModel.from_pretrained(source, local_files_only=True, dtype=torch.float32)
    model.to(getattr(torch, args.dtype)).save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    size = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    print(f"wrote {source.name} as {args.dtype} to {out} ({size:.1f} MB)")
    return 0


def _read_texts(path: Path) -> list[str]:
    """JSON lines of strings, plain or gzip-compressed (``.gz``)."""
    import gzip

    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


def _load(
    model_path: str | None, batch_size: int, max_length: int, device: str, precision: Precision
) -> tuple[Any, Any]:
    """The encoder on ``device`` with fp32 weights, and the dtype its weights were stored in."""
    import torch

    from udfs.encoder import load_encoder

    config = EncoderConfig(
        model_path=model_path, max_length=max_length, batch_size=batch_size, precision=precision
    )
    encoder = load_encoder(config, device=device)
    stored = next(encoder.model.parameters()).dtype
    encoder.model.to(torch.float32)  # fp32 weights whatever dtype they were stored in
    return encoder, stored


def _timed(run: Callable[[], Any], sync: Callable[[], None]) -> tuple[float, Any]:
    sync()
    started = time.perf_counter()
    result = run()
    sync()
    return time.perf_counter() - started, result


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    import transformers

    texts = _read_texts(Path(args.texts))
    if args.rows:
        texts = texts[: args.rows]
    n, distinct = len(texts), len(set(texts))
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    hardware = torch.cuda.get_device_name(0) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"{n:,} rendered sequences ({distinct:,} distinct) from {args.texts}; device {hardware}; "
        f"torch {torch.__version__}, transformers {transformers.__version__}; "
        f"max_length {args.max_length}",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    cosine_line = ""
    for batch_size in args.batch_sizes:
        fp32, stored = _load(args.model_path, batch_size, args.max_length, device, "fp32")
        bf16, _ = _load(args.model_path, batch_size, args.max_length, device, "bf16")
        token_ids = fp32.tokenize(texts)
        tokens = sum(len(ids) for ids in token_ids)
        paths: dict[str, Callable[[], Any]] = {
            "tokenize": partial(fp32.tokenize, texts),
            "fp32 every row": partial(fp32.encode_texts, texts),
            "bf16 every row": partial(bf16.encode_texts, texts),
            "bf16 model only": partial(bf16.encode_ids, token_ids),
            "bf16 + dedup": partial(bf16.encode, texts),
        }
        for path in paths.values():  # warm-up: kernels, allocator, autotuning
            path()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        seconds: dict[str, list[float]] = {name: [] for name in paths}
        vectors: dict[str, Any] = {}
        for _ in range(args.repeats):
            for name, path in paths.items():
                elapsed, vectors[name] = _timed(path, sync)
                seconds[name].append(elapsed)
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        cosine = (vectors["bf16 every row"] * vectors["fp32 every row"]).sum(axis=1)
        exact = float(np.abs(vectors["bf16 + dedup"] - vectors["bf16 every row"]).max())
        print(
            f"\nbatch {batch_size}: {tokens:,} tokens (mean {tokens / n:.1f}), weights stored "
            f"{str(stored).removeprefix('torch.')}, run in fp32; median of {args.repeats}"
            + (f", peak GPU memory {peak:.2f} GiB" if cuda else "")
        )
        for name, times in seconds.items():
            median = statistics.median(times)
            print(
                f"  {name:16s} {n / median:10,.0f} seq/s {tokens / median:13,.0f} tokens/s "
                f"({median * 1000:8.1f} ms; repeats {', '.join(f'{t * 1000:.0f}' for t in times)})"
            )
            results.append(
                {"batch_size": batch_size, "path": name, "seq_per_s": n / median, "s": median}
            )
        cosine_line = (
            f"bf16 vs fp32 cosine on every row: min {cosine.min():.5f} mean {cosine.mean():.5f}"
        )
        print(f"  {cosine_line}; dedup vs every row max abs difference {exact:.1e}")
        if cuda:  # the tokenise/encode pipeline against one pass over all rows
            one_pass = bf16.encode_texts(texts, pipelined=False)
            agree = (one_pass * vectors["bf16 every row"]).sum(axis=1)
            print(
                f"  bf16 pipelined vs one pass: cosine min {agree.min():.6f}, max abs difference "
                f"{np.abs(one_pass - vectors['bf16 every row']).max():.1e}"
            )
        del fp32, bf16
        if cuda:
            torch.cuda.empty_cache()

    if cuda:  # the GPU path agrees with the CPU path of the same weights
        sample = texts[:AGREEMENT_ROWS]
        cpu, _ = _load(args.model_path, 128, args.max_length, "cpu", "fp32")
        reference = cpu.encode(sample)
        for precision in ("fp32", "bf16"):
            gpu, _ = _load(args.model_path, 256, args.max_length, "cuda", precision)
            got = gpu.encode(sample)
            agree = (got * reference).sum(axis=1)
            print(
                f"CUDA {precision} vs CPU fp32, {len(sample):,} rows: cosine min {agree.min():.5f} "
                f"mean {agree.mean():.5f}, max abs difference {np.abs(got - reference).max():.1e}"
            )
    if args.reference_model:  # what storing the weights in another dtype costs
        sample = texts[:AGREEMENT_ROWS]
        ours, stored = _load(args.model_path, 128, args.max_length, device, "fp32")
        ref, _ = _load(args.reference_model, 128, args.max_length, device, "fp32")
        agree = (ours.encode(sample) * ref.encode(sample)).sum(axis=1)
        print(
            f"weights stored {str(stored).removeprefix('torch.')} vs {args.reference_model}, "
            f"both run fp32, {len(sample):,} rows: cosine min {agree.min():.6f} "
            f"mean {agree.mean():.6f}"
        )
    best = max(r["seq_per_s"] for r in results if r["path"] == "bf16 every row")
    print(
        f"\nbest bf16 every-row throughput: {best:,.0f} seq/s at <= {args.max_length} tokens "
        f"(SPEC: >= 50,000 on an H100/H200); {cosine_line}"
    )
    print(json.dumps({"rows": n, "distinct": distinct, "device": hardware, "results": results}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_render = sub.add_parser("render", help="write rendered sequences (needs Spark)")
    p_render.add_argument("--rows", type=int, default=20000)
    p_render.add_argument("--max-length", type=int, default=64)
    p_render.add_argument("--unit", default="user", choices=["user", "session"])
    p_render.add_argument("--out", required=True)
    p_export = sub.add_parser("export-model", help="save a model with weights in another dtype")
    p_export.add_argument("--model-path", default=None, help="default: the packaged MiniLM")
    p_export.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    p_export.add_argument("--out", required=True)
    p_run = sub.add_parser("run", help="time the encoder core (no Spark)")
    p_run.add_argument("--texts", required=True, help="JSON lines written by render (.gz too)")
    p_run.add_argument("--rows", type=int, default=0, help="first N rows only (0: all)")
    p_run.add_argument("--model-path", default=None, help="default: the packaged MiniLM")
    p_run.add_argument("--reference-model", default=None, help="compare fp32 vectors with it")
    p_run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p_run.add_argument("--max-length", type=int, default=64)
    p_run.add_argument("--batch-sizes", type=int, nargs="+", default=[128])
    p_run.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if getattr(args, "repeats", 1) < 1:
        parser.error("--repeats must be at least 1")
    handlers = {"render": render, "export-model": export_model, "run": run}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
