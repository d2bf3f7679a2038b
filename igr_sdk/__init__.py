"""igr_sdk: garment restoration (virtual try-off) over exported IGR engines, without torch."""

from igr_sdk._errors import EngineError, InputError

__all__ = ["EngineError", "InputError"]
