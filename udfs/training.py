"""Self-supervised training loops of the encoders, in plain PyTorch (no Spark).

* :func:`train_mlm`: masked-event pre-training of the small sequence BERT over event tokens;
* :func:`train_contrastive`: InfoNCE fine-tuning of the text encoder on two event-dropout views
  of each sequence with in-batch negatives (SimCSE-style augmentation, Gao et al. 2021).

Both take rendered sequences (strings) and write a Hugging Face model directory; the
``train_encoder`` stage samples the sequences with Spark and calls them, in the driver or
through ``TorchDistributor``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from jobs.core.config import EncoderConfig, TrainEncoderConfig

log = logging.getLogger("jobs.train_encoder")


def build_vocab(sequences: Sequence[str]) -> list[str]:
    """Special tokens, then event tokens by descending frequency (ties alphabetical)."""
    from udfs.encoder import SPECIAL_TOKENS

    counts = Counter(token for text in sequences for token in text.split())
    for special in SPECIAL_TOKENS:
        counts.pop(special, None)
    return [*SPECIAL_TOKENS, *sorted(counts, key=lambda t: (-counts[t], t))]


def train_mlm(
    sequences: Sequence[str], settings: TrainEncoderConfig, max_length: int, output_dir: str
) -> dict[str, Any]:
    """Train and save the encoder; pure torch (no Spark), so TorchDistributor can run it."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from jobs.core.logs import quiet_model_loading
    from udfs.encoder import CLS, MASK, PAD, SEP, SEQUENCE_VOCAB_FILE, SPECIAL_TOKENS, UNK

    quiet_model_loading()  # no "Writing model shards" progress bar when saving

    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    vocab = build_vocab(sequences)
    index = {t: i for i, t in enumerate(vocab)}
    encoded = [
        [index[CLS], *[index.get(t, index[UNK]) for t in text.split()][-(max_length - 1) :]]
        for text in sequences
    ]
    encoded = [ids for ids in encoded if len(ids) > 2]  # something to predict from context
    if not encoded:
        raise ValueError("train_encoder: no sequences with at least two events to learn from")
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=settings.hidden_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        intermediate_size=4 * settings.hidden_size,
        max_position_embeddings=max(max_length, 8),
        pad_token_id=index[PAD],
    )
    model = BertForMaskedLM(config)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    special_ids = torch.tensor([index[t] for t in SPECIAL_TOKENS])
    losses: list[float] = []
    started = time.monotonic()
    for epoch in range(settings.epochs):
        order = torch.randperm(len(encoded), generator=generator).tolist()
        for start in range(0, len(order), settings.batch_size):
            batch = [encoded[i] for i in order[start : start + settings.batch_size]]
            width = max(len(ids) for ids in batch)
            ids = torch.full((len(batch), width), index[PAD], dtype=torch.long)
            for row, seq in enumerate(batch):
                ids[row, : len(seq)] = torch.tensor(seq)
            attention = (ids != index[PAD]).long()
            maskable = attention.bool() & ~torch.isin(ids, special_ids)
            chosen = maskable & (
                torch.rand(ids.shape, generator=generator) < settings.mask_probability
            )
            # Every sequence predicts at least one event, so no batch is without a target.
            first_real = maskable.float().argmax(dim=1)
            none = ~chosen.any(dim=1) & maskable.any(dim=1)
            chosen[none, first_real[none]] = True
            labels = torch.where(chosen, ids, torch.full_like(ids, -100))
            inputs = torch.where(chosen, torch.full_like(ids, index[MASK]), ids)
            loss = model(input_ids=inputs, attention_mask=attention, labels=labels).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            if len(losses) % 50 == 0:
                log.info(
                    "train_encoder epoch %d step %d loss %.3f", epoch + 1, len(losses), losses[-1]
                )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.bert.save_pretrained(out)  # the encoder alone, loadable as BertModel
    (out / SEQUENCE_VOCAB_FILE).write_text(json.dumps(vocab))
    assert SEP in index
    return {
        "sequences": len(encoded),
        "vocab_size": len(vocab),
        "steps": len(losses),
        "losses": losses,
        "seconds": time.monotonic() - started,
    }


def _two_views(text: str, dropout: float, generator: Any) -> tuple[str, str]:
    """Two augmented views of one rendered text sequence: each drops events at random."""
    import torch

    events = text.split(", ")
    views = []
    for _ in range(2):
        keep = torch.rand(len(events), generator=generator) >= dropout
        if not keep.any():
            keep[int(torch.randint(len(events), (1,), generator=generator))] = True
        views.append(", ".join(e for e, k in zip(events, keep.tolist(), strict=True) if k))
    return views[0], views[1]


def train_contrastive(
    sequences: Sequence[str],
    settings: TrainEncoderConfig,
    encoder: EncoderConfig,
    output_dir: str,
) -> dict[str, Any]:
    """Fine-tune the text encoder: two views of the same sequence attract, the other sequences
    of the batch repel (InfoNCE with in-batch negatives).  Pure torch + transformers."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from jobs.core.logs import quiet_model_loading
    from udfs.encoder import resolve_model_path

    quiet_model_loading()

    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    base = resolve_model_path(replace(encoder, kind="text"))
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    tokenizer.truncation_side = "left"
    model = AutoModel.from_pretrained(base, local_files_only=True)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.contrastive_learning_rate)

    def embed(texts: list[str]) -> Any:
        batch = tokenizer(
            texts, truncation=True, max_length=encoder.max_length, padding=True, return_tensors="pt"
        )
        hidden = model(**batch).last_hidden_state
        weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=1)

    def info_nce(pairs: list[tuple[str, str]]) -> Any:
        left = embed([a for a, _ in pairs])
        right = embed([b for _, b in pairs])
        logits = left @ right.T / settings.temperature
        target = torch.arange(len(pairs))
        return (
            torch.nn.functional.cross_entropy(logits, target)
            + torch.nn.functional.cross_entropy(logits.T, target)
        ) / 2

    texts = [t for t in sequences if t]
    if len(texts) < 2:
        raise ValueError("train_encoder (contrastive): needs at least two non-empty sequences")
    held_out = [
        _two_views(t, settings.event_dropout, torch.Generator().manual_seed(i))
        for i, t in enumerate(texts[: settings.batch_size])
    ]
    model.eval()
    with torch.no_grad():
        loss_before = float(info_nce(held_out))
    model.train()
    losses: list[float] = []
    started = time.monotonic()
    for epoch in range(settings.epochs):
        order = torch.randperm(len(texts), generator=generator).tolist()
        for start in range(0, len(order) - 1, settings.batch_size):
            chunk = [texts[i] for i in order[start : start + settings.batch_size]]
            if len(chunk) < 2:
                continue
            loss = info_nce([_two_views(t, settings.event_dropout, generator) for t in chunk])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            if len(losses) % 20 == 0:
                log.info(
                    "train_encoder (contrastive) epoch %d step %d loss %.3f",
                    epoch + 1,
                    len(losses),
                    losses[-1],
                )
    model.eval()
    with torch.no_grad():
        loss_after = float(info_nce(held_out))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {
        "sequences": len(texts),
        "vocab_size": int(tokenizer.vocab_size),
        "steps": len(losses),
        "losses": losses,
        "held_out_loss_before": loss_before,
        "held_out_loss_after": loss_after,
        "seconds": time.monotonic() - started,
    }
