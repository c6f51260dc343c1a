"""Every stage's settings: one frozen dataclass per section of luigi.cfg.

A class is the one place of its section. Each field is a key: its default is the shipped value,
its metadata its description and whether it changes results. One table per class,
``_parameter_constraints`` (scikit-learn's), gives each key's parsing of luigi.cfg's text, its
validation and its message, which names the key: ``[neighbours] k=0 must be a whole number >= 1``.
A value that breaks its constraint cannot be made, whoever makes it: luigi.cfg, the command
line, a test or a benchmark. The library's defaults are these classes' defaults.
"""

import dataclasses
import math
from typing import ClassVar

from .errors import ConfigError
from .records import SameRecord


class Constraint:
    """What a setting's value must be: ``parse`` reads luigi.cfg's text (ValueError when it cannot),
    ``holds`` checks a value, ``must`` says it for the messages."""

    must = ""

    def parse(self, text):
        return text

    def holds(self, value):
        return True


class Text(Constraint):
    must = "text"

    def parse(self, text):
        return str(text)

    def holds(self, value):
        return isinstance(value, str)


class Options(Constraint):
    """One of a fixed list of words, in their order."""

    def __init__(self, *values):
        self.values = values
        self.must = "one of " + ", ".join(values)

    def parse(self, text):
        return str(text).strip()

    def holds(self, value):
        return value in self.values


class Boolean(Constraint):
    must = "true or false"

    def parse(self, text):
        if isinstance(text, bool):
            return text
        word = str(text).strip().lower()
        if word not in ("true", "false"):
            raise ValueError(text)
        return word == "true"

    def holds(self, value):
        return isinstance(value, bool)


class Number(Constraint):
    """A whole number (``int``) or a number (``float``) in a range."""

    def __init__(self, kind, low=None, high=None, low_open=False, high_open=False, must=None):
        self.kind, self.low, self.high, self.low_open, self.high_open = kind, low, high, low_open, high_open
        self.must = must or (
            "a whole number" + (f" >= {low}" if low is not None else "")
            if kind is int
            else f"a number {'>' if low_open else '>='} {low:g}"
        )

    def parse(self, text):
        return self.kind(str(text).strip())

    def holds(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float) if self.kind is float else int):
            return False
        if isinstance(value, float) and math.isnan(value):
            return False
        low = self.low if self.low is not None else -math.inf
        high = self.high if self.high is not None else math.inf
        above = value > low if self.low_open else value >= low
        below = value < high if self.high_open else value <= high
        return above and below


def whole(low=1, high=None):
    """A whole number >= ``low`` (and <= ``high``)."""
    if high is None:
        return Number(int, low)
    return Number(int, low, high, must=f"a whole number from {low} to {high}")


def seconds(low=0.0, low_open=True):
    """A number of seconds > ``low`` (>= with ``low_open=False``)."""
    return Number(float, low, low_open=low_open, must=f"a number of seconds {'>' if low_open else '>='} {low:g}")


class Processes(Number):
    """A number of processes, or ``auto`` (read as 0): one per core the run may use."""

    def __init__(self):
        super().__init__(int, 1, must="auto or a whole number >= 1")

    def parse(self, text):
        return 0 if str(text).strip().lower() == "auto" else super().parse(text)

    def holds(self, value):
        return value == 0 and not isinstance(value, bool) or super().holds(value)


class CodebookSize(Constraint):
    """``auto`` or a number of visual words >= 2."""

    must = "auto or a whole number >= 2"

    def parse(self, text):
        word = str(text).strip().lower()
        return "auto" if word == "auto" else int(word)

    def holds(self, value):
        return value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 2)


class CopyThreshold(Constraint):
    """``auto``, ``off`` or a distance >= 0."""

    must = "auto, off or a distance >= 0"

    def parse(self, text):
        word = str(text).strip().lower()
        return word if word in ("auto", "off") else float(word)

    def holds(self, value):
        return value in ("auto", "off") or Number(float, 0.0).holds(value)


class Records(Constraint):
    """``keep``, ``exclude`` or ``at_most N``, read as a :class:`~pipeline.records.SameRecord`."""

    must = "keep, exclude or at_most N (N a whole number >= 0)"

    def parse(self, text):
        if isinstance(text, SameRecord):
            return text
        try:
            return SameRecord.parse(text)
        except ConfigError:
            raise ValueError(text) from None

    def holds(self, value):
        return isinstance(value, SameRecord)


def setting(default, doc, significant=True, flag=False):
    """A field of a section: its default, its description, whether a new value changes results,
    and whether the command line gives it as a flag (``--collection-allow-removals``)."""
    return dataclasses.field(default=default, metadata={"doc": doc, "significant": significant, "flag": flag})


class Section:
    """The base of every section's dataclass: validation from ``_parameter_constraints`` as it is made."""

    #: The section of luigi.cfg.
    section: ClassVar[str] = ""
    #: {field: Constraint}, one per field.
    _parameter_constraints: ClassVar[dict] = {}
    #: Keys that moved: {old key: where the setting is now}.
    moved: ClassVar[dict] = {}

    def __post_init__(self):
        for name, constraint in self._parameter_constraints.items():
            value = getattr(self, name)
            if not constraint.holds(value):
                raise ConfigError(f"{self.key(name)}={value!r} must be {constraint.must}")
        problem = self.disagreement()
        if problem:
            raise ConfigError(problem)

    def disagreement(self):
        """Why the section's values do not work together (one line), or None."""
        return None

    @classmethod
    def key(cls, name):
        """How the messages name field ``name``: ``[section] name``."""
        return f"[{cls.section}] {name}"

    @classmethod
    def names(cls):
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def unknown(cls, keys):
        """The first of ``keys`` (as luigi.cfg spells them) that is no setting of the section, as a
        one-line message, or None."""
        for key in keys:
            if key.replace("-", "_") not in cls._parameter_constraints:
                fix = cls.moved.get(key, f"the settings of [{cls.section}] are {', '.join(cls.names())}")
                return f"[{cls.section}] {key} is not a setting; {fix}"
        return None

    @classmethod
    def from_text(cls, values):
        """The section of ``values`` ({key: luigi.cfg's text}; a key left out keeps its default);
        ConfigError naming the first key that is not a setting or cannot be read."""
        problem = cls.unknown(values)
        if problem:
            raise ConfigError(problem)
        parsed = {}
        for key, text in values.items():
            name = key.replace("-", "_")
            constraint = cls._parameter_constraints[name]
            try:
                parsed[name] = constraint.parse(text)
            except (ValueError, TypeError):
                raise ConfigError(f"{cls.key(name)}={str(text).strip()!r} must be {constraint.must}") from None
        return cls(**parsed)

    @classmethod
    def check(cls, name, value):
        """Raise ConfigError naming the key unless ``value`` is one field ``name`` may hold."""
        constraint = cls._parameter_constraints[name]
        if not constraint.holds(value):
            raise ConfigError(f"{cls.key(name)}={value!r} must be {constraint.must}")
        return value

    @classmethod
    def described(cls):
        """(key, default, significant, description with what the value must be) of each field."""
        for f in dataclasses.fields(cls):
            constraint = cls._parameter_constraints[f.name]
            must = "" if isinstance(constraint, Text) else f" Must be {constraint.must}."
            yield f.name, f.default, f.metadata["significant"], f.metadata["doc"] + must

    def identity(self):
        """The values that change results (the significant fields), JSON-serialisable: what a
        stage's identity takes of its section."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["significant"]}
        return {name: v if isinstance(v, (str, int, float)) else str(v) for name, v in values.items()}

    @classmethod
    def flags(cls):
        """The fields the command line gives as flags."""
        return [f.name for f in dataclasses.fields(cls) if f.metadata["flag"]]


#: The choices of the settings that take one of a few words.
PRECISIONS = ("auto", "float32", "float32-openvino", "bfloat16", "float16", "int8")
COLOURS = ("grey", "rgb")
DESCRIPTOR_NORMS = ("raw", "l2", "root")
REDUCED_NORMS = ("raw", "l2")
WEIGHTINGS = ("raw", "tfidf")
METRICS = ("euclidean", "cosine")
METHODS = ("auto", "balltree", "sparse")
#: The most visual words a descriptor counts for.
MAX_ASSIGN = 3


@dataclasses.dataclass(frozen=True)
class Paths(Section):
    section = "paths"
    _parameter_constraints = {"content": Text(), "artifacts": Text()}

    content: str = setting("content", "Folder of the collection: content/PPN<id>/<file>.", significant=False)
    artifacts: str = setting("artifacts", "Folder of every output.", significant=False)


@dataclasses.dataclass(frozen=True)
class Ids(Section):
    section = "ids"
    _parameter_constraints = {"source": Options("csv", "cms"), "csv": Text()}

    source: str = setting(
        "csv",
        "Where the ID mapping comes from: csv ([ids] csv) or cms (the database at [cms] url).",
        significant=False,
    )
    csv: str = setting(
        "content/image_ids.csv",
        "The ID mapping as a CSV file with the header id,ppn,filename; ppn with or without the PPN prefix.",
        significant=False,
    )


@dataclasses.dataclass(frozen=True)
class Cms(Section):
    section = "cms"
    _parameter_constraints = {
        "url": Text(),
        "mode": Options("table", "siblings"),
        "table": Text(),
        "siblings_column": Text(),
        "marker_table": Text(),
        "batch_rows": whole(),
        "images_table": Text(),
        "id_column": Text(),
        "ppn_column": Text(),
        "filename_column": Text(),
        "copies_table": Text(),
        "record_column": Text(),
        "ids_query": Text(),
    }

    url: str = setting(
        "",
        "SQLAlchemy URL of the CMS database, or env:NAME / file:PATH naming where it is written "
        "(the only places for a password); empty: no CMS, similarities.hdf5 only.",
        significant=False,
    )
    mode: str = setting(
        "table",
        "table: rows (image_id, rank, similar_image_id, distance, run_id) in [cms] table; siblings: "
        "each image's neighbour IDs as a JSON array in [cms] siblings_column of images_table (the original CMS's shape).",
        significant=False,
    )
    table: str = setting("image_similarity", "Table the neighbour lists are loaded into.", significant=False)
    siblings_column: str = setting(
        "siblings", "Column of images_table the siblings mode writes (it must exist).", significant=False
    )
    marker_table: str = setting(
        "image_similarity_load", "Table recording each load (run_id, date, rows, time).", significant=False
    )
    batch_rows: int = setting(10_000, "Rows per write of a load.", significant=False)
    images_table: str = setting(
        "images",
        "Table of the CMS's images: the ID mapping ([ids] source = cms) and siblings.",
        significant=False,
    )
    id_column: str = setting("id", "Its column of database IDs.", significant=False)
    ppn_column: str = setting("ppn", "Its column of PPNs (with or without the PPN prefix).", significant=False)
    filename_column: str = setting("filename", "Its column of file names.", significant=False)
    copies_table: str = setting(
        "",
        "Table the groups of copies are loaded into (copy_group, image_id, first_seen, run_id), "
        "replaced whole each night; empty: copies.csv only.",
        significant=False,
    )
    record_column: str = setting(
        "",
        "Its column of each image's catalogue record, for [neighbours] same_record; empty: the PPN "
        "(a CSV mapping may carry a column record instead).",
        significant=False,
    )
    ids_query: str = setting(
        "", "A SELECT returning id, ppn, filename, used instead of images_table when set.", significant=False
    )


@dataclasses.dataclass(frozen=True)
class Resnet(Section):
    section = "resnet"
    _parameter_constraints = {
        "weights": Text(),
        "layer": Text(),
        "seed": Number(int),
        "precision": Options(*PRECISIONS),
        "calibration_images": whole(16),
        "batch_size": whole(),
    }
    moved = {"decode_threads": "it is now [images] decode_processes (decoding runs in processes)"}

    weights: str = setting(
        "imagenet",
        "imagenet (Keras download and cache), random (seeded, tests and smoke runs only) "
        "or the path of a Keras ResNet50 weights file without the top.",
    )
    layer: str = setting(
        "conv5_block3_3_conv",
        "Keras layer whose output gives the local descriptors (the original's res5c_branch2c; "
        "e.g. conv5_block3_out, or conv4_block6_out: 14 x 14 x 1024).",
    )
    seed: int = setting(0, "Seed of the random initialisation when weights = random.")
    precision: str = setting(
        "auto",
        "What the model computes in: auto (measured once: float32 against float32-openvino, and "
        "bfloat16 on a CPU with avx512_bf16 or amx_bf16, or float32 against float16 on an NVIDIA GPU with "
        "tensor cores; the fastest is kept, never one slower than float32, in "
        "<artifacts>/features/precision-*.json for every later run and worker), float32 (run by Keras), "
        "float32-openvino (the same model at float32, run by OpenVINO's CPU kernels), bfloat16 (the "
        "CPU's, run by OpenVINO), float16 (a GPU's), or int8 (quantized, "
        "calibrated on the collection, run by OpenVINO on the CPU; never chosen by auto). The precision used "
        "is part of the feature store's identity: a change re-extracts every image.",
    )
    calibration_images: int = setting(
        300,
        "At precision = int8: images of the collection (a seeded sample) the int8 trunk is calibrated "
        "on, once per feature store.",
    )
    batch_size: int = setting(16, "Images per forward pass.", significant=False)


@dataclasses.dataclass(frozen=True)
class Features(Section):
    section = "features"
    _parameter_constraints = {"shards": whole()}

    shards: int = setting(
        1,
        "Shards the extraction is split into: one FeatureShard task each, run in parallel by "
        "the workers of one or several machines (an image's shard is a stable hash of its path).",
        significant=False,  # an image's descriptors do not depend on its shard
    )


@dataclasses.dataclass(frozen=True)
class Images(Section):
    section = "images"
    _parameter_constraints = {
        "colour": Options(*COLOURS),
        "trim": Boolean(),
        "max_pixels": whole(),
        "decode_processes": Processes(),
        "decode_timeout": seconds(),
    }

    colour: str = setting(
        "grey",
        "What the model sees of each image: grey (its luma in all three channels, so a colour "
        "scan and a greyscale copy of the same print look alike) or rgb (its own colours).",
    )
    trim: bool = setting(
        True,
        "Cut off the uniform margin around the picture (a scanned page's paper) before the "
        "model sees it, so that a tight crop and a scan with a wide margin look alike.",
    )
    max_pixels: int = setting(
        400_000_000,
        "Images with more pixels are rejected unread (decompression bombs); a new value applies "
        "to new and changed files.",
        significant=False,  # applies to files extracted from then on, not to those already stored
    )
    decode_processes: int = setting(
        0, "Processes decoding images while the model runs; auto: one per core the run may use.", significant=False
    )
    decode_timeout: float = setting(
        120.0,
        "Seconds one file may take to decode; a decoder that takes longer is stopped and the file rejected.",
        significant=False,
    )


@dataclasses.dataclass(frozen=True)
class Reduction(Section):
    section = "reduction"
    _parameter_constraints = {
        "variance": Number(float, 0.0, 1.0, low_open=True, must="a fraction in (0, 1]"),
        "sample_images": whole(0),
        "seed": Number(int),
        "descriptors": Options(*DESCRIPTOR_NORMS),
        "reduced": Options(*REDUCED_NORMS),
    }

    variance: float = setting(0.97, "Fraction of the variance the PCA components keep.")
    sample_images: int = setting(
        20_000,
        "Images whose every descriptor the scaler and PCA are fitted on (a seeded uniform sample); 0 = all images.",
    )
    seed: int = setting(0, "Seed of the image sample.")
    descriptors: str = setting(
        "l2",
        "Normalisation of each local descriptor before the scaler: raw, l2 (unit length) or root "
        "(square root of the L1-normalised absolute values, signs kept).",
    )
    reduced: str = setting("l2", "Normalisation of each descriptor after the PCA: raw or l2 (unit length).")


@dataclasses.dataclass(frozen=True)
class Codebook(Section):
    section = "codebook"
    _parameter_constraints = {
        "size": CodebookSize(),
        "sample_size": whole(),
        "seed": Number(int),
        "refit_growth": Number(float, 0.0, must="a fraction >= 0"),
    }

    size: object = setting("auto", "Number of visual words K, or auto: one per 8 descriptors sampled, 2 to 8,500.")
    sample_size: int = setting(
        200_000,
        "Most descriptors k-means is fitted on: the descriptors of a seeded uniform sample of sample_size / 49 images.",
    )
    seed: int = setting(0, "Seed of the descriptor sample and of k-means.")
    refit_growth: float = setting(
        0.25,
        "Refit the reducer and codebook when the number of images has grown by more than "
        "this fraction since the last fit (they stay frozen otherwise, unless a run asks --refit).",
        significant=False,  # when to fit, not what a fit makes
    )


@dataclasses.dataclass(frozen=True)
class Histograms(Section):
    section = "histograms"
    _parameter_constraints = {"assign": whole(1, MAX_ASSIGN), "shards": whole()}

    assign: int = setting(
        1, f"Visual words each descriptor counts for: 1 (its nearest) to {MAX_ASSIGN} (multiple assignment)."
    )
    shards: int = setting(
        1,
        "Shards the histograms are split into: one HistogramShard task each, run in parallel by the "
        "workers of one or several machines (an image's shard is a stable hash of its path).",
        significant=False,  # an image's histogram does not depend on its shard
    )


@dataclasses.dataclass(frozen=True)
class Neighbours(Section):
    section = "neighbours"
    _parameter_constraints = {
        "k": whole(),
        "shards": whole(),
        "weighting": Options(*WEIGHTINGS),
        "metric": Options(*METRICS),
        "power": Number(float, 0.0, 1.0, low_open=True, must="a number in (0, 1]"),
        "same_record": Records(),
        "method": Options(*METHODS),
        "rerank": Options("on", "off"),
        "candidates": whole(),
    }

    k: int = setting(5, "Neighbours per image.")
    shards: int = setting(
        1,
        "Shards the neighbour search is split into: one NeighbourShard task each (an equal block of "
        "the images, searched against all), run in parallel by the workers of one or several machines.",
        significant=False,  # an image's neighbours do not depend on which shard finds them
    )
    weighting: str = setting(
        "tfidf",
        "Word weights of the histograms: raw (each word's share of the image's descriptors) or tfidf (times the "
        "word's smoothed inverse document frequency in the images the codebook was fitted on, kept until the next refit).",
    )
    metric: str = setting("cosine", "Distance of the weighted histograms: euclidean or cosine (1 - cosine similarity).")
    power: float = setting(
        0.5,
        "Power the word counts are raised to before weighting: 1 keeps them, 0.5 takes "
        "their square root (with cosine: the Hellinger kernel).",
    )
    same_record: SameRecord = setting(
        SameRecord(),
        "Which records an image's list draws from (the record: its PPN folder, or [cms] record_column): keep (any), "
        "exclude (other records only) or at_most N (at most N of the k from the image's own record).",
    )
    method: str = setting(
        "auto",
        "balltree, sparse (exact, inverted file over visual words) or auto (sparse, measured faster).",
        significant=False,  # both methods give the same result
    )
    rerank: str = setting(
        "off",
        "on: each list is the image's [neighbours] candidates nearest, those verified by geometry first (their "
        "words at places one crop, scale or border explains; the self-check sets the threshold), and copies are "
        "made of verified pairs; off: the k nearest.",
    )
    candidates: int = setting(50, "With rerank = on: the short list of nearest images each list is re-ranked from.")


@dataclasses.dataclass(frozen=True)
class Verdicts(Section):
    section = "verdicts"
    _parameter_constraints = {
        "source": Options("auto", "cms", "csv", "none"),
        "table": Text(),
        "csv": Text(),
        "allow_empty": Boolean(),
    }

    source: str = setting(
        "auto",
        "Where the curators' verdicts on pairs are read from every night: cms (the table [verdicts] "
        "table in the database at [cms] url, created when missing), csv (the file [verdicts] csv), none, or auto "
        "(csv when [verdicts] csv is set, else cms when [cms] url is, else none).",
        significant=False,
    )
    table: str = setting(
        "image_similarity_verdict",
        "Table of the verdicts in the CMS database: image_id, similar_image_id, verdict (wrong or "
        "right), verdict_time, optionally author.",
        significant=False,
    )
    csv: str = setting(
        "",
        "CSV file of the verdicts, with the table's columns as its header, for a site without a CMS database.",
        significant=False,
    )
    allow_empty: bool = setting(
        False,
        "Let this run read no verdicts where the last run read some (a night that finds its verdicts gone "
        "stops with exit code 20, the lists and the CMS as they were): give it once on the command line "
        "(--verdicts-allow-empty) to confirm that every verdict was withdrawn on purpose.",
        significant=False,
        flag=True,
    )


@dataclasses.dataclass(frozen=True)
class Collection(Section):
    section = "collection"
    _parameter_constraints = {
        "fingerprint": Options("stat", "sha256"),
        "max_removed": Number(float, 0.0, 1.0, must="a fraction from 0 to 1"),
        "allow_removals": Boolean(),
    }

    fingerprint: str = setting(
        "stat",
        "How a changed image is recognised: stat (size and modification time) or sha256 "
        "(a hash of the content, for storage whose times can't be trusted).",
    )
    max_removed: float = setting(
        0.05,
        "The largest share of the previous run's images a night may find gone (rounded up to whole "
        "images); a night that finds more gone from disk (an unmounted volume, a failed sync) stops before any "
        "task writes, naming the folders (exit code 20), and one that finds more gone from the ID mapping (a "
        "truncated export) stops before the inventory is written (exit code 30). 1: no limit.",
        significant=False,
    )
    allow_removals: bool = setting(
        False,
        "Let this run remove more than max_removed of the images: give it once on the command line "
        "(--collection-allow-removals) to confirm a real deletion.",
        significant=False,
        flag=True,
    )


@dataclasses.dataclass(frozen=True)
class Evaluate(Section):
    section = "evaluate"
    _parameter_constraints = {"labels": Text()}

    labels: str = setting(
        "",
        "CSV file id,label: images with the same label are relevant to each other; when set, every "
        "run evaluates its neighbours against it (evaluation.json, report.html).",
        significant=False,
    )


@dataclasses.dataclass(frozen=True)
class Selfcheck(Section):
    section = "selfcheck"
    _parameter_constraints = {"sample": whole(0), "seed": Number(int)}

    sample: int = setting(
        50,
        "Collection images whose altered copies (crop, rescale, rotation, greyscale, JPEG, border) "
        "each run queries against the collection (a seeded sample; 0: no self-check).",
    )
    seed: int = setting(0, "Seed of the sample and of the alterations.")


@dataclasses.dataclass(frozen=True)
class Copies(Section):
    section = "copies"
    _parameter_constraints = {"threshold": CopyThreshold()}

    threshold: object = setting(
        "auto",
        "Distance within which images count as copies of one picture (copies.csv): auto (a quantile "
        "of the distances at which the self-check's altered copies find their original), a distance, or off. "
        "With [neighbours] rerank = on, the verification score a pair of copies reaches instead: auto (the "
        "self-check's verification threshold) or a score.",
    )


@dataclasses.dataclass(frozen=True)
class Report(Section):
    section = "report"
    _parameter_constraints = {"sample": whole(0)}

    sample: int = setting(12, "Images shown with their neighbours in report.html (a seeded sample).", significant=False)


@dataclasses.dataclass(frozen=True)
class Progress(Section):
    section = "progress"
    _parameter_constraints = {"interval": seconds(low_open=False)}

    interval: float = setting(
        30.0,
        "Seconds between progress lines of a long task in the log (0: after every batch); the "
        "central scheduler's page shows progress continuously.",
        significant=False,
    )


@dataclasses.dataclass(frozen=True)
class Lock(Section):
    section = "lock"
    _parameter_constraints = {"heartbeat": seconds(), "stale_after": seconds()}

    heartbeat: float = setting(
        10.0,
        "Seconds between the heartbeats of each process of a run on the artifacts folder's run lock.",
        significant=False,
    )
    stale_after: float = setting(
        120.0,
        "Seconds without a heartbeat after which a run on another host counts as ended and its "
        "claim on the artifacts folder is taken over (on the same host: as soon as its process has ended). "
        "At least 3 x heartbeat.",
        significant=False,
    )

    def disagreement(self):
        if self.stale_after < 3 * self.heartbeat:
            return f"{self.key('stale_after')}={self.stale_after!r} must be a number of seconds >= 3 x [lock] heartbeat"
        return None


@dataclasses.dataclass(frozen=True)
class Serve(Section):
    section = "serve"
    _parameter_constraints = {
        "host": Text(),
        "port": Number(int, 1, 65535, must="a port number from 1 to 65535"),
        "public": Boolean(),
        "users": Text(),
        "secret_key": Text(),
        "trusted_proxy": Text(),
        "user_header": Text(),
        "viewer_url": Text(),
        "image_url": Text(),
        "max_upload_mb": Number(float, 0.0, low_open=True, must="a number of MB > 0"),
        "threads": whole(),
        "reload_seconds": seconds(),
        "secure_cookies": Boolean(),
    }

    host: str = setting(
        "127.0.0.1",
        "Address the web app listens on (similar-images-serve): 127.0.0.1 answers this machine only; "
        "behind a reverse proxy on another machine, the address the proxy reaches (docs/operations.md).",
        significant=False,
    )
    port: int = setting(8000, "Port the web app listens on.", significant=False)
    public: bool = setting(
        True,
        "Browsing and search open to whoever reaches the app (true), or only after a curator's login "
        "(false); writing a verdict always needs a curator's login.",
        significant=False,
    )
    users: str = setting(
        "curators.txt",
        "File of the curators' names and password hashes (argon2), managed with "
        "similar-images-serve --add-user NAME and --remove-user NAME.",
        significant=False,
    )
    secret_key: str = setting(
        "serve-secret.key",
        "File of the key that signs the app's session cookies, made (readable by its owner only) at the "
        "first start; a new key logs every curator out.",
        significant=False,
    )
    trusted_proxy: str = setting(
        "",
        "Address of the reverse proxy (several: comma-separated) whose user_header names the logged-in "
        "curator and whose X-Forwarded-Proto and X-Forwarded-Prefix are honoured; empty: no proxy is trusted.",
        significant=False,
    )
    user_header: str = setting(
        "X-Remote-User", "Header in which the trusted proxy names the curator it authenticated.", significant=False
    )
    viewer_url: str = setting(
        "",
        "URL of an image in the site's viewer, with {ppn}, {filename} and {id} (an IIIF viewer, the "
        "catalogue's page view), linked beside every image; empty: no link.",
        significant=False,
    )
    image_url: str = setting(
        "",
        "URL of an image at a size on the site's image server, with {ppn}, {filename}, {id} and {side} "
        "(longest side in pixels; IIIF: .../full/!{side},{side}/0/default.jpg): the app shows those, and the night "
        "makes no thumbnails; empty: the night makes them.",
        significant=False,
    )
    max_upload_mb: float = setting(
        20.0,
        "Largest image file a query by upload may send, in MB; a larger one is refused (413).",
        significant=False,
    )
    threads: int = setting(8, "Threads serving requests.", significant=False)
    reload_seconds: float = setting(
        5.0, "Seconds between the app's looks at the artifacts folder for a night's new lists.", significant=False
    )
    secure_cookies: bool = setting(
        False,
        "Send the session cookie over HTTPS only: true when people reach the app through an HTTPS proxy.",
        significant=False,
    )


#: Every section of luigi.cfg, in the order docs/configuration.md lists them.
SECTIONS = (
    Paths,
    Ids,
    Cms,
    Resnet,
    Features,
    Images,
    Reduction,
    Codebook,
    Histograms,
    Neighbours,
    Verdicts,
    Collection,
    Evaluate,
    Selfcheck,
    Copies,
    Report,
    Progress,
    Lock,
    Serve,
)
