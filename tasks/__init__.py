"""Thin Luigi tasks wiring the pipeline stages: ``luigi --module tasks Similarities --local-scheduler``."""

from .config import codebook, ids, neighbours, paths, reduction, resnet
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
    "Reducer",
    "Similarities",
    "codebook",
    "ids",
    "neighbours",
    "paths",
    "reduction",
    "resnet",
]
