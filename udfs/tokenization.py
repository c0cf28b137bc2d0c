"""Tokenising rendered sequences for the encoder core: only the last ``max_length`` tokens of a
text are kept (left truncation), so a long text need not be tokenised in full.  No Spark here."""

from __future__ import annotations

from typing import Any

#: Characters kept per token when a long text is cut to its tail before tokenising: rendered
#: sequences average ~4.7 characters per MiniLM token (a tail that comes out short is cut again,
#: longer: 0.5% of generated user histories at max_length 64).
TAIL_CHARS_PER_TOKEN = 6


def tail(text: str, limit: int) -> str:
    """``text`` itself when at most ``limit`` characters, else its suffix that starts just after
    the first space at or after ``len(text) - limit`` (the text itself when there is none)."""
    if len(text) <= limit:
        return text
    cut = text.find(" ", len(text) - limit)
    return text if cut < 0 else text[cut + 1 :]


def truncating_backend(tokenizer: Any, max_length: int) -> Any:
    """A copy of ``tokenizer``'s Rust tokenizer that truncates from the left at ``max_length``
    (special tokens included) and never pads, as ``tokenizer(texts, truncation=True,
    max_length=max_length)`` does with ``truncation_side='left'``, and splits special tokens
    written in the text when the tokenizer does (``split_special_tokens``, which the serialised
    form does not carry); None for a slow tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.enable_truncation(max_length, strategy="longest_first", direction="left")
    copy.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
    return copy


def splits_at_spaces(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` (a fast Hugging Face tokenizer) tokenises each space-separated
    word on its own, so that a text cut at a space yields exactly the full text's last tokens:
    BERT's normaliser (character-local) or none, and a pre-tokenizer that splits at every space
    (``BertPreTokenizer``, ``Whitespace``, ``WhitespaceSplit``).  Byte-level BPE and
    SentencePiece fold the space into the next token, so they are never cut; nor is a
    tokenizer with an added token that holds whitespace (``add_tokens(["new york"])``), which a
    cut could split."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    normalizer, pre = backend.normalizer, backend.pre_tokenizer
    if any(
        any(c.isspace() for c in added.content)
        for added in backend.get_added_tokens_decoder().values()
    ):
        return False
    return (normalizer is None or type(normalizer).__name__ == "BertNormalizer") and type(
        pre
    ).__name__ in {"BertPreTokenizer", "Whitespace", "WhitespaceSplit"}
