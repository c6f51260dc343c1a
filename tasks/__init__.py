"""Thin Luigi tasks wiring the pipeline stages.

``luigi --module tasks Nightly --local-scheduler`` (the scheduled run),
``luigi --module tasks Similarities --local-scheduler`` (the result alone) or
``luigi --module tasks LoadSimilarities --local-scheduler`` (the result, loaded into the CMS);
``python -m tasks.query FILE ...``, ``python -m tasks.compare`` and ``python -m tasks.serve`` (the
web app; see their modules).
"""

from .atlas import Map, MapLayout
from .checks import SelfCheck
from .config import cms, codebook, collection, ids, neighbours, paths, reduction, resnet, verdicts
from .copies import Copies
from .evaluation import Evaluate
from .extraction import Calibration, Features, FeatureShard
from .fitting import Codebook, Reducer
from .histograms import Histograms, HistogramShard
from .inputs import CmsDatabase, CmsImages, ContentFolder, IdMapping, LabelsFile
from .inventory import Inventory
from .load import LoadCopies, LoadSimilarities
from .neighbours import NeighbourShard, Similarities
from .nightly import Nightly, Report
from .thumbnails import Thumbnails
from .verdicts import Verdicts

__all__ = [
    "Calibration",
    "CmsDatabase",
    "CmsImages",
    "Codebook",
    "Copies",
    "ContentFolder",
    "Evaluate",
    "FeatureShard",
    "Features",
    "HistogramShard",
    "Histograms",
    "IdMapping",
    "LabelsFile",
    "Inventory",
    "LoadCopies",
    "LoadSimilarities",
    "Map",
    "MapLayout",
    "NeighbourShard",
    "Nightly",
    "Reducer",
    "Report",
    "SelfCheck",
    "Similarities",
    "Thumbnails",
    "Verdicts",
    "cms",
    "codebook",
    "collection",
    "ids",
    "neighbours",
    "paths",
    "reduction",
    "resnet",
    "verdicts",
]
