"""``train_encoder`` stage: self-supervised training of an encoder, no labels.

``mode: mlm`` (default) pre-trains the sequence encoder by masked-event prediction, as below;
``mode: contrastive`` fine-tunes the text encoder so that two augmented views of the same
sequence (random event dropout) embed close together and other sequences of the batch apart
(InfoNCE with in-batch negatives), and saves the fine-tuned text model the same way.

Sessions (bots excluded) are rendered as event tokens (``view:electronics.smartphone ...``, the
same rendering ``embed`` uses), a vocabulary is built from them, and a small
``transformers.BertForMaskedLM`` learns to predict masked events from their context.  No labels
are involved.  The encoder part is saved as a Hugging Face directory (``config.json`` +
``model.safetensors``) with ``event_vocab.json`` and ``metadata.json`` (data snapshot, steps,
loss curve), ready for ``encoder.kind=sequence``.

Locally the training runs in the driver process; with ``train_encoder.distributed`` it runs
through ``pyspark.ml.torch.distributor.TorchDistributor`` (one process per GPU on a cluster).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from jobs.core.config import AppConfig, EncoderConfig
from jobs.core.config.sections import EncoderKind
from jobs.core.errors import PipelineError
from jobs.core.lake import Lake
from jobs.core.lake.paths import is_uri
from jobs.core.session import spark_master
from jobs.core.tables import SESSIONS
from jobs.runner import run_stage
from jobs.sequences.encoder_choice import resolve_encoder
from jobs.sequences.rendering import render_sequences, select_units

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    mode: str
    output_dir: str
    sequences: int
    vocab_size: int
    steps: int
    first_loss: float
    last_loss: float
    losses: tuple[float, ...]
    #: Why nothing was trained (``encoder.kind: auto`` chose the text encoder), or None.
    skipped: str | None = None

    def summary(self) -> str:
        if self.skipped:
            return f"nothing to train: {self.skipped}"
        loss = "masked-event" if self.mode == "mlm" else "contrastive"
        return (
            f"{loss} loss {self.first_loss:.3f} -> {self.last_loss:.3f} over {self.steps} steps "
            f"on {self.sequences:,} sequences; model at {self.output_dir}"
        )


def run(spark: SparkSession, lake: Lake, config: AppConfig, *, run_id: str) -> TrainResult:
    """Sample sessions, train, save the model directory and its metadata."""
    from udfs.training import train_contrastive, train_mlm

    settings = config.train_encoder
    if is_uri(settings.output_dir):
        # Every executor loads the encoder from local files (torch / transformers).
        raise PipelineError(
            f"train_encoder.output_dir is {settings.output_dir}: the encoder is saved and "
            "loaded as local files; use a local or /Volumes/... path (on Databricks, "
            "/dbfs/... for DBFS)"
        )
    sessions = lake.read(SESSIONS)
    resolved, reason = resolve_encoder(config.encoder, sessions)
    if config.encoder.kind == "auto":
        log.info("%s", reason)
        if resolved.kind == "text" and settings.mode == "mlm":
            return TrainResult(settings.mode, settings.output_dir, 0, 0, 0, 0.0, 0.0, (), reason)
    kind: EncoderKind = "sequence" if settings.mode == "mlm" else "text"
    encoder = replace(resolved, kind=kind)
    assert isinstance(encoder, EncoderConfig)
    rendered = (
        sessions.transform(select_units, unit="session", include_bots=False)
        .transform(render_sequences, config=encoder)
        .select("rendered")
    )
    total = rendered.count()
    fraction = min(1.0, settings.max_sequences / max(total, 1))
    sample = rendered.sample(fraction=fraction, seed=settings.seed).limit(settings.max_sequences)
    # Sorted so the sample's order, and so training, does not depend on partitioning.
    texts = sorted(r[0] for r in sample.collect())
    log.info("train_encoder: %d of %d sessions sampled", len(texts), total)
    stats: dict[str, Any]
    train_fn: Any = train_mlm
    arguments: tuple[Any, ...] = (texts, settings, encoder.max_length, settings.output_dir)
    if settings.mode == "contrastive":
        train_fn = train_contrastive
        arguments = (texts, settings, encoder, settings.output_dir)
    if settings.distributed:
        import torch
        from pyspark.ml.torch.distributor import TorchDistributor

        distributed_stats = TorchDistributor(
            num_processes=settings.num_processes,
            local_mode=spark_master(spark).startswith("local"),
            use_gpu=torch.cuda.is_available(),
        ).run(train_fn, *arguments)
        if distributed_stats is None:
            raise RuntimeError("TorchDistributor returned no training statistics")
        stats = distributed_stats
    else:
        stats = train_fn(*arguments)
    losses = stats["losses"]
    window = max(1, len(losses) // 10)
    first = sum(losses[:window]) / window
    last = sum(losses[-window:]) / window
    metadata = {
        "run_id": run_id,
        "mode": settings.mode,
        "kind": kind,
        "trained_on": {
            "table": lake.location(SESSIONS).describe(),
            "table_version": lake.version(SESSIONS),
            "sessions_total": total,
            "sequences_used": stats["sequences"],
        },
        "settings": asdict(settings),
        "max_length": encoder.max_length,
        "include_item_ids": encoder.include_item_ids,
        "vocab_size": stats["vocab_size"],
        "steps": stats["steps"],
        "seconds": stats["seconds"],
        "loss_first_10pct_mean": first,
        "loss_last_10pct_mean": last,
        "loss_curve": losses,
        "held_out_loss_before": stats.get("held_out_loss_before"),
        "held_out_loss_after": stats.get("held_out_loss_after"),
    }
    Path(settings.output_dir, "metadata.json").write_text(json.dumps(metadata, indent=1))
    return TrainResult(
        mode=settings.mode,
        output_dir=settings.output_dir,
        sequences=stats["sequences"],
        vocab_size=stats["vocab_size"],
        steps=stats["steps"],
        first_loss=first,
        last_loss=last,
        losses=tuple(losses),
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``spark-submit jobs/train_encoder.py --conf conf/local.yaml``."""
    return run_stage("train_encoder", argv)


if __name__ == "__main__":
    sys.exit(main())
