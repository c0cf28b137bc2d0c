"""The encoder as a Spark iterator pandas UDF: a thin wrapper over :mod:`udfs.encoder`.

The model is loaded once per Python worker (Spark reuses workers across tasks).  Device
(``encoder.device``): ``auto`` takes the GPU Spark assigned to the task
(``TaskContext.resources()["gpu"]``) and the CPU otherwise; ``cuda`` takes the task's GPU, or,
when Spark assigned none (local mode never does), a GPU the worker sees, and fails on a worker
without one; ``cpu`` is the CPU.  On the CPU ``torch.set_num_threads`` equals the task's cores,
so concurrent tasks do not oversubscribe the machine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
from pyspark.sql import Column
from pyspark.sql import types as T
from pyspark.sql.functions import pandas_udf

from jobs.core.config import EncoderConfig
from udfs.encoder import Encoder, load_encoder

#: One loaded encoder per worker process, keyed by what defines it.
_WORKER_ENCODERS: dict[tuple[EncoderConfig, str, str], Encoder] = {}


def task_device() -> tuple[str, int | None]:
    """The device for this task (``cuda:<n>`` from Spark's GPU resources, else ``cpu``) and,
    on CPU, the number of cores the task was given."""
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None:
        return "cpu", None
    gpus = context.resources().get("gpu")
    if gpus is not None and gpus.addresses:
        return f"cuda:{gpus.addresses[0]}", None
    return "cpu", max(1, int(context.cpus()))


def choose_device(requested: str, assigned: str, partition: int = 0) -> str:
    """The device for an encoder of ``encoder.device`` = ``requested`` in a task that Spark
    gave ``assigned`` (``cuda:<n>`` or ``cpu``).  An explicit ``cuda`` without an assigned GPU
    takes one of the worker's visible GPUs (by ``partition`` id), or raises ``RuntimeError``."""
    if requested == "cpu":
        return "cpu"
    if requested == "auto" or assigned.startswith("cuda"):
        return assigned
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            "encoder.device=cuda but this Spark worker has no usable CUDA device; "
            "set encoder.device=auto or cpu, or run embed on GPU executors"
        )
    return f"cuda:{partition % torch.cuda.device_count()}"


def worker_encoder(config: EncoderConfig, model_dir: str) -> Encoder:
    """The worker's encoder, loaded on first use."""
    from pyspark import TaskContext

    assigned, threads = task_device()
    context = TaskContext.get()
    device = choose_device(config.device, assigned, context.partitionId() if context else 0)
    if device.startswith("cuda"):
        threads = None
    key = (config, model_dir, device)
    encoder = _WORKER_ENCODERS.get(key)
    if encoder is None:
        from pathlib import Path

        encoder = load_encoder(
            config, model_dir=Path(model_dir), device=device, num_threads=threads
        )
        _WORKER_ENCODERS[key] = encoder
    elif threads:
        import torch

        torch.set_num_threads(threads)
    return encoder


def embedding_udf(config: EncoderConfig, model_dir: str) -> Callable[[Column], Column]:
    """A UDF mapping a column of rendered sequences to ``array<float>`` unit vectors."""

    @pandas_udf(T.ArrayType(T.FloatType()))  # type: ignore[call-overload]
    def embed(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        encoder = None  # loaded at the first batch: a task with no rows loads no model
        for texts in batches:
            if encoder is None:
                encoder = worker_encoder(config, model_dir)
            vectors = encoder.encode(texts.fillna("").tolist())
            yield pd.Series(list(vectors))

    wrapped: Any = embed
    return wrapped
