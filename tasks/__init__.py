"""Thin Luigi tasks wiring the pipeline stages.

``luigi --module tasks Nightly --local-scheduler`` (the scheduled run),
``luigi --module tasks Similarities --local-scheduler`` (the result alone) or
``luigi --module tasks LoadSimilarities --local-scheduler`` (the result, loaded into the CMS);
``python -m tasks.query FILE ...`` and ``python -m tasks.compare`` (see their modules).
"""

from .checks import Evaluate, SelfCheck
from .config import cms, codebook, collection, ids, neighbours, paths, reduction, resnet
from .inputs import CmsImages, ContentFolder, IdMapping, LabelsFile
from .nightly import Nightly, Report
from .stages import (
    Calibration,
    Codebook,
    Features,
    FeatureShard,
    Histograms,
    HistogramShard,
    Inventory,
    LoadSimilarities,
    NeighbourShard,
    Reducer,
    Similarities,
)

__all__ = [
    "Calibration",
    "CmsImages",
    "Codebook",
    "ContentFolder",
    "Evaluate",
    "FeatureShard",
    "Features",
    "HistogramShard",
    "Histograms",
    "IdMapping",
    "LabelsFile",
    "Inventory",
    "LoadSimilarities",
    "NeighbourShard",
    "Nightly",
    "Reducer",
    "Report",
    "SelfCheck",
    "Similarities",
    "cms",
    "codebook",
    "collection",
    "ids",
    "neighbours",
    "paths",
    "reduction",
    "resnet",
]
