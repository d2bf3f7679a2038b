"""Scale-out with Ray, beside the core runtime: restore a whole catalogue (Ray Data) or serve HTTP
requests (Ray Serve), one ``Restorer`` per actor or replica, fed full engine batches.

    from igr_sdk.scale import restore_catalogue
    summary = restore_catalogue("catalogue.csv", "out/", steps=25, actors=2)

    from igr_sdk.scale import build_app, start_service
    start_service(build_app("engines/", replicas=2), port=8000)

Ray is imported only when one of these runs (``pip install 'igr-sdk[ray]'``); ``import igr_sdk`` and
``import igr_sdk.scale`` never import it. The command-line tools are ``igr-restore-batch`` and ``igr-serve``.
"""

from __future__ import annotations

from typing import Any

from igr_sdk.scale._batch import BatchSummary, restore_catalogue
from igr_sdk.scale._catalogue import CatalogueError

__all__ = [
    "BatchSummary",
    "CatalogueError",
    "Limits",
    "RestoreService",
    "build_app",
    "restore_catalogue",
    "start_service",
]

_SERVICE = ("Limits", "RestoreService", "build_app", "start_service")


def __getattr__(name: str) -> Any:
    if name in _SERVICE:  # these need Ray Serve: imported on first use
        from igr_sdk.scale import _ray

        _ray.require("ray.serve", f"igr_sdk.scale.{name}")
        from igr_sdk.scale import _service

        return getattr(_service, name)
    raise AttributeError(f"module 'igr_sdk.scale' has no attribute {name!r}")
