"""igr_sdk: garment restoration (virtual try-off) over exported IGR engines, without torch.

from igr_sdk import Restorer
restorer = Restorer.from_dir("engines/")
result = restorer.restore("person.jpg", "mask.png", category="upper", seed=0)
result.image.save("garment.png")
"""

from igr_sdk._errors import EngineError, InputError, NonFiniteError
from igr_sdk._restorer import Restorer, RestoreResult

__all__ = ["EngineError", "InputError", "NonFiniteError", "RestoreResult", "Restorer"]
__version__ = "0.1.0"
