"""encoderforge: build small, fast, domain-specialized BERT-style encoders on modest hardware."""

__version__ = "0.1.0"


class EncoderforgeError(Exception):
    """A user-facing error: the message names the file/field and the fix; the CLI prints it without a traceback."""


def require(module: str, extra: str):  # noqa: ANN201 - returns the imported module
    """Import an optional dependency, or fail with one line naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise EncoderforgeError(
            f"this needs {module.split('.')[0]}, from the '{extra}' extra: pip install 'encoderforge[{extra}]'"
        ) from None
