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


def check_fits(what: str, workers: int, cpus: float, gpus: float, extra_cpus: float, local: bool) -> None:
    """Refuse a pool that a local Ray can never schedule (it would wait forever); warn on a cluster,
    whose autoscaler may add nodes."""
    have = require("ray").cluster_resources()
    need_cpus, need_gpus = workers * cpus + extra_cpus, workers * gpus
    short = []
    if need_cpus > have.get("CPU", 0.0) + 1e-9:
        short.append(
            f"{need_cpus:g} CPUs ({workers} x {cpus:g}{f' + {extra_cpus:g} for reading' if extra_cpus else ''})"
        )
    if need_gpus > have.get("GPU", 0.0) + 1e-9:
        short.append(f"{need_gpus:g} GPUs ({workers} x {gpus:g})")
    if not short:
        return
    message = (
        f"{what} need {' and '.join(short)} but the Ray cluster has {have.get('CPU', 0.0):g} CPUs and "
        f"{have.get('GPU', 0.0):g} GPUs; use fewer workers or fewer resources each (or a larger local Ray)"
    )
    if local:
        from igr_sdk._errors import InputError

        raise InputError(message)
    log.warning("%s; waiting for the cluster to grow", message)
