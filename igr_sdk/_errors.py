"""Exceptions the runtime raises for things a caller can fix."""


class InputError(ValueError):
    """An input image, mask, category or option is not what the runtime expects."""


class EngineError(RuntimeError):
    """An engine directory, manifest or engine file is missing, foreign or tampered with."""


class NonFiniteError(EngineError):
    """A stage produced NaN or infinite values: an engine overflowed, or an option drove it out of range."""
