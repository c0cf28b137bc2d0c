"""The Spark-free encoder core (udfs.encoder) on CPU, plus a GPU check where CUDA exists."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import udfs.encoder as encoder_module
from jobs.core.config import EncoderConfig, TrainEncoderConfig
from udfs.encoder import (
    Encoder,
    autocast_dtype,
    cpu_has_native_bf16,
    load_encoder,
    model_version,
    packaged_minilm_path,
)
from udfs.training import train_contrastive, train_mlm

TEXTS = [
    "view electronics smartphone samsung mid",
    "",
    "cart apparel shoes nike low, buy apparel shoes nike low | view kids toys lego cheap",
    "search oled tv",
    "view furniture living room sofa ikea high, " * 3,
]


@pytest.fixture(scope="module")
def text_encoder() -> Encoder:
    # fp32: compared with sentence-transformers' fp32 reference at 1e-5.
    return load_encoder(EncoderConfig(max_length=64, batch_size=64, precision="fp32"), device="cpu")


def test_shape_dtype_and_unit_norm(text_encoder: Encoder) -> None:
    vectors = text_encoder.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert text_encoder.encode([]).shape == (0, 384)


def test_matches_sentence_transformers_reference(text_encoder: Encoder) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(packaged_minilm_path()), device="cpu")
    reference.max_seq_length = 64
    expected = reference.encode(TEXTS, normalize_embeddings=True, batch_size=64)
    np.testing.assert_allclose(text_encoder.encode(TEXTS), expected, atol=1e-5)


def test_order_is_restored_after_length_sorting(text_encoder: Encoder) -> None:
    together = text_encoder.encode(TEXTS)
    one_by_one = np.vstack([text_encoder.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    reversed_order = text_encoder.encode(TEXTS[::-1])[::-1]
    np.testing.assert_allclose(together, reversed_order, atol=1e-5)
    # Distinct inputs really give distinct vectors (the check above is not vacuous).
    assert np.abs(together[0] - together[2]).max() > 0.05


def test_deterministic_and_batch_size_independent(text_encoder: Encoder) -> None:
    many = [f"view category{i % 17} brand{i % 5} {'mid ' * (i % 9)}" for i in range(130)]
    first = text_encoder.encode(many)
    np.testing.assert_array_equal(first, text_encoder.encode(many))
    single = dataclasses.replace(text_encoder, batch_size=1).encode(many)
    np.testing.assert_allclose(first, single, atol=1e-5)


def test_repeated_texts_are_encoded_once_and_fanned_out(text_encoder: Encoder) -> None:
    texts = [TEXTS[i % 3] for i in range(12)] + [TEXTS[4]]
    seen: list[int] = []
    original = text_encoder.encode_ids
    counting = dataclasses.replace(text_encoder)
    counting.encode_ids = lambda ids: seen.append(len(ids)) or original(ids)  # type: ignore[method-assign]
    vectors = counting.encode(texts)
    assert seen == [4]  # four distinct texts reached the model
    np.testing.assert_array_equal(vectors[0], vectors[3])
    np.testing.assert_allclose(vectors, original(text_encoder.tokenize(texts)), atol=1e-5)


def test_precision_choice_by_device_and_cpu() -> None:
    import torch

    assert autocast_dtype("fp32", "cuda:0") is None and autocast_dtype("fp32", "cpu") is None
    assert autocast_dtype("auto", "cuda:0") is torch.bfloat16
    assert autocast_dtype("fp16", "cuda:0") is torch.float16
    assert autocast_dtype("fp16", "cpu") is None
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16
    native = cpu_has_native_bf16()
    assert autocast_dtype("auto", "cpu") is (torch.bfloat16 if native else None)


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16")
def test_cpu_bf16_agrees_with_fp32(text_encoder: Encoder) -> None:
    many = [f"view category{i % 17} brand{i % 5} {'mid ' * (i % 9)}" for i in range(64)] + TEXTS
    bf16 = load_encoder(EncoderConfig(max_length=64, batch_size=64, precision="auto"), device="cpu")
    assert bf16.autocast_dtype is not None
    cosine = (bf16.encode(many) * text_encoder.encode(many)).sum(axis=1)
    assert cosine.min() >= 0.999


def test_long_sequences_keep_their_most_recent_events(text_encoder: Encoder) -> None:
    tail = ", ".join(["buy kids toys lego cheap"] * 30)
    a = text_encoder.encode(["view electronics smartphone, " * 500 + tail])
    b = text_encoder.encode(["view apparel dress zara, " * 800 + tail])
    np.testing.assert_allclose(a, b, atol=1e-5)  # only the last max_length tokens count
    assert len(text_encoder.tokenize(["word " * 5000])[0]) == 64


def test_model_version_tracks_weights_and_rendering(tmp_path: Path) -> None:
    minilm = packaged_minilm_path()
    base = model_version(EncoderConfig(), minilm)
    assert base == model_version(EncoderConfig(), minilm)
    weights, rendering = base.split("-")
    # Everything that shapes the input changes the rendering part only ...
    for changed in (
        EncoderConfig(max_length=64),
        EncoderConfig(include_item_ids=True),
        EncoderConfig(price_band_edges=(5.0, 50.0)),
        EncoderConfig(kind="sequence"),
    ):
        assert model_version(changed, minilm).split("-") != [weights, rendering]
        assert model_version(changed, minilm).split("-")[0] == weights
    # ... and the weights the other part: one byte of a copy's weights, a vocabulary entry.
    copy = tmp_path / "minilm"
    shutil.copytree(minilm, copy)
    assert model_version(EncoderConfig(), copy) == base  # where it lies does not matter
    (copy / "metadata.json").write_text('{"trained_on": "elsewhere"}')
    assert model_version(EncoderConfig(), copy) == base  # a note beside the weights is not them
    with open(copy / "model.safetensors", "r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))
    flipped = model_version(EncoderConfig(), copy)
    assert flipped.split("-") != [weights, rendering] and flipped.endswith(f"-{rendering}")
    shutil.copy(minilm / "model.safetensors", copy / "model.safetensors")
    with open(copy / "vocab.txt", "a") as handle:
        handle.write("[unused-extra]\n")
    assert model_version(EncoderConfig(), copy).split("-")[0] != weights


def test_sequence_encoder_trains_and_encodes(tmp_path: Path) -> None:
    corpus = [
        " ".join(["view:kids.toys", "add_to_cart:kids.toys", "purchase:kids.toys"] * 3),
        " ".join(["view:sport.bicycle", "view:sport.tennis", "add_to_cart:sport.bicycle"] * 3),
    ] * 40
    settings = TrainEncoderConfig(
        hidden_size=32, num_layers=1, num_heads=2, epochs=8, batch_size=16, learning_rate=0.003
    )
    stats = train_mlm(corpus, settings, 32, str(tmp_path))
    losses = stats["losses"]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])  # it learned the patterns
    vocab = json.loads((tmp_path / "event_vocab.json").read_text())
    assert vocab[:5] == ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]

    encoder = load_encoder(
        EncoderConfig(kind="sequence", model_path=str(tmp_path), max_length=32), device="cpu"
    )
    vectors = encoder.encode([*corpus[:2], "never:seen tokens", ""])
    assert vectors.shape == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    ids = encoder.tokenize(["never:seen"])[0]
    assert ids == [vocab.index("[CLS]"), vocab.index("[UNK]")]
    assert len(encoder.tokenize(["view:kids.toys " * 100])[0]) == 32


def test_contrastive_fine_tuning_pulls_views_together(tmp_path: Path) -> None:
    words = [
        "view kids toys lego cheap",
        "cart apparel shoes nike low",
        "buy sport bicycle high",
        "view electronics smartphone samsung mid",
        "search",
        "view kitchen knives tefal low",
    ]
    rng = np.random.default_rng(0)
    texts = [", ".join(rng.choice(words, size=8)) for _ in range(48)]
    settings = TrainEncoderConfig(
        mode="contrastive", epochs=2, batch_size=16, seed=3, contrastive_learning_rate=5e-5
    )
    stats = train_contrastive(texts, settings, EncoderConfig(max_length=48), str(tmp_path))
    assert stats["steps"] == 6
    assert stats["held_out_loss_after"] < stats["held_out_loss_before"]
    tuned = load_encoder(EncoderConfig(model_path=str(tmp_path), max_length=48), device="cpu")
    vectors = tuned.encode(texts[:3])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    original = load_encoder(EncoderConfig(max_length=48), device="cpu").encode(texts[:3])
    assert np.abs(vectors - original).max() > 1e-4  # the weights really changed


def test_long_texts_are_cut_to_their_tail_with_identical_tokens(text_encoder: Encoder) -> None:
    """Cutting a long text at a space before tokenising keeps exactly the full text's last
    max_length tokens, including tails too short to fill them (tokenised again in full)."""
    history = ", ".join(f"view electronics smartphone brand{i} premium" for i in range(120))
    long_words = ("y" * 150 + " ") * 100  # a word over 100 characters is one [UNK]
    texts = [
        history,
        "x" * 5000,  # no space to cut at
        long_words,  # one [UNK] per 151 characters: the cut tail comes out short
        "supercalifragilistic " * 300,
        "é" * 30 + " " + "b " * 400,
        "short text",
        "",
    ]
    assert text_encoder.cut_tails
    full = text_encoder.tokenizer(texts, truncation=True, max_length=64, padding=False)
    assert text_encoder.tokenize(texts) == [list(ids) for ids in full["input_ids"]]
    assert [len(ids) for ids in text_encoder.tokenize([history, long_words])] == [64, 64]


def _with_added_token(source: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.add_tokens(["new york"])
    return tokenizer


def _splitting_special_tokens(source: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, split_special_tokens=True)


@pytest.mark.parametrize(
    ("make", "max_length", "text", "length"),
    [
        # An added token holding a space could be split by a cut: such tokenizers are not cut.
        (
            _with_added_token,
            8,
            "hello " * 20 + "new york electronics electronics electronics x x",
            8,  # [CLS] "new york" electronics x3 x x [SEP]: the added token is kept whole
        ),
        # split_special_tokens is not in the serialised Rust tokenizer: the copy gets it too.
        (_splitting_special_tokens, 16, "hello [MASK] [SEP] world", 10),  # spelled out
    ],
    ids=["added-token-with-a-space", "split-special-tokens"],
)
def test_tokenizer_settings_a_cut_or_the_rust_copy_could_miss(
    tmp_path: Path, make: Any, max_length: int, text: str, length: int
) -> None:
    """A model directory as a user would configure it in ``encoder.model_path``: the packaged
    MiniLM's weights (linked) with a tokenizer saved by ``make``."""
    source = packaged_minilm_path()
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).symlink_to(source / name)
    make(source).save_pretrained(tmp_path)
    encoder = load_encoder(EncoderConfig(model_path=str(tmp_path), max_length=max_length))
    expected = encoder.tokenizer([text], truncation=True, max_length=max_length)["input_ids"]
    assert encoder.tokenize([text]) == [list(ids) for ids in expected]
    assert len(expected[0]) == length


def test_pipelined_encoding_matches_one_pass(
    text_encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks tokenised in a thread while the model encodes (the CUDA default) give the same
    vectors, in input order, as tokenising and encoding everything at once."""
    monkeypatch.setattr(encoder_module, "PIPELINE_CHUNK_ROWS", 3)  # chunks of one batch (64)
    texts = TEXTS * 30  # 150 rows: three chunks of 64, 64 and 22 rows
    pipelined = text_encoder.encode_texts(texts, pipelined=True)
    one_pass = text_encoder.encode_ids(text_encoder.tokenize(texts))
    np.testing.assert_allclose(pipelined, one_pass, atol=1e-6)
    np.testing.assert_allclose(pipelined[: len(TEXTS)], text_encoder.encode(TEXTS), atol=1e-6)


def test_missing_model_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json missing"):
        load_encoder(EncoderConfig(model_path=str(tmp_path)))


@pytest.mark.gpu
def test_cuda_bf16_matches_cpu(text_encoder: Encoder) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    gpu = load_encoder(EncoderConfig(max_length=64, batch_size=64), device="cuda")
    cpu_vectors, gpu_vectors = text_encoder.encode(TEXTS), gpu.encode(TEXTS)
    cosine = (cpu_vectors * gpu_vectors).sum(axis=1)
    assert cosine.min() > 0.99
