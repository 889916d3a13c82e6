"""encoderforge: build small, fast, domain-specialized BERT-style encoders on modest hardware."""

__version__ = "0.1.0"


class EncoderforgeError(Exception):
    """A user-facing error: the message names the file/field and the fix; the CLI prints it without a traceback."""
