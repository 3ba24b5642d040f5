"""The errors omni_core raises: each names the bad input and how to fix it."""


class OmniGen2Error(Exception):
    """Base class for every error raised on purpose by omni_core."""


class ModelFileError(OmniGen2Error, FileNotFoundError):
    """A weight, config or tokenizer file is missing, unreadable or not safetensors."""


class CheckpointMismatchError(OmniGen2Error, ValueError):
    """A checkpoint's keys or tensor shapes do not fit the architecture it is loaded into."""


class InvalidInputError(OmniGen2Error, ValueError):
    """A generation input (image, size, count, dtype, value) cannot be used."""
