"""Tokenizers: load, train, extend, compare (a thin layer over Hugging Face `tokenizers`)."""

from encoderforge.tokenization.load import (
    BERT_SPECIALS,
    expand_paths,
    load_tokenizer,
    read_corpus,
    read_text,
)

__all__ = ["BERT_SPECIALS", "expand_paths", "load_tokenizer", "read_corpus", "read_text"]
