"""Thin Luigi tasks wiring the pipeline stages.

``luigi --module tasks Nightly --local-scheduler`` (the scheduled run) or
``luigi --module tasks Similarities --local-scheduler`` (the result alone).
"""

from .config import codebook, collection, ids, neighbours, paths, reduction, resnet
from .nightly import Nightly
from .stages import (
    Codebook,
    ContentFolder,
    Features,
    Histograms,
    IdMapping,
    Inventory,
    Reducer,
    Similarities,
)

__all__ = [
    "Codebook",
    "ContentFolder",
    "Features",
    "Histograms",
    "IdMapping",
    "Inventory",
    "Nightly",
    "Reducer",
    "Similarities",
    "codebook",
    "collection",
    "ids",
    "neighbours",
    "paths",
    "reduction",
    "resnet",
]
