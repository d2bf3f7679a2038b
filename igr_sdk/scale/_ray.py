"""Ray is an optional dependency: it is imported here, only when a scale-out feature is used."""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'igr-sdk[ray]'"


def require(module: str = "ray", feature: str = "igr_sdk.scale") -> ModuleType:
    """Import ``module`` (``ray``, ``ray.data`` or ``ray.serve``) or say what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{feature} needs {module}, which is not installed ({e}); install it with {INSTALL_HINT}"
        ) from e


def connect(address: str | None, num_cpus: int | None = None, num_gpus: int | None = None) -> bool:
    """Join the cluster at ``address`` or start a local Ray; returns True when this call started it.

    A Ray that is already initialised in this process is used as it is.
    """
    ray = require("ray")
    if ray.is_initialized():
        return False
    if address:
        if num_cpus is not None or num_gpus is not None:
            raise ValueError("num_cpus and num_gpus describe a local Ray; a cluster at an address has its own")
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address)
    else:
        log.info("starting a local Ray (num_cpus=%s, num_gpus=%s)", num_cpus, num_gpus)
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False)
    return True


def cluster_gpus() -> float:
    """GPUs the connected cluster has in all (0 without any)."""
    return float(require("ray").cluster_resources().get("GPU", 0.0))
