"""One luigi.Config class per luigi.cfg section."""

import functools
import logging
import os

import luigi
import luigi.cmdline_parser

from pipeline.backends import ModelSpec
from pipeline.cms import BATCH_ROWS, MARKER_TABLE, TABLE, Destination
from pipeline.codebook import DEFAULT_SAMPLE_SIZE
from pipeline.histograms import DEFAULT_ASSIGN, MAX_ASSIGN
from pipeline.images import COLOURS, DECODE_TIMEOUT, DEFAULT_COLOUR, DEFAULT_TRIM, MAX_PIXELS
from pipeline.int8 import CALIBRATION_IMAGES
from pipeline.model import DEFAULT_LAYER
from pipeline.neighbours import METHODS
from pipeline.precision import PRECISIONS, chosen_precision
from pipeline.records import SameRecord
from pipeline.reduction import (
    DEFAULT_DESCRIPTORS,
    DEFAULT_REDUCED,
    DEFAULT_SAMPLE_IMAGES,
    DEFAULT_VARIANCE,
    DESCRIPTOR_NORMS,
    REDUCED_NORMS,
)
from pipeline.runlock import HEARTBEAT, STALE_AFTER
from pipeline.search import NeighbourSettings
from pipeline.thumbnails import Inbox, ViewStore
from pipeline.verdicts import TABLE as VERDICT_TABLE
from pipeline.weighting import DEFAULT_METRIC, DEFAULT_POWER, DEFAULT_WEIGHTING, METRICS, WEIGHTINGS, Distance

from .parameters import Choice, CopyThreshold, Flag, Number, Processes, SameRecordParameter, count, seconds


class paths(luigi.Config):
    content = luigi.Parameter(
        default="content", significant=False, description="Folder of the collection: content/PPN<id>/<file>."
    )
    artifacts = luigi.Parameter(default="artifacts", significant=False, description="Folder of every output.")


class ids(luigi.Config):
    source = Choice(
        ["csv", "cms"],
        default="csv",
        significant=False,
        description="Where the ID mapping comes from: csv ([ids] csv) or cms (the database at [cms] url).",
    )
    csv = luigi.Parameter(
        default="content/image_ids.csv",
        significant=False,
        description="The ID mapping as a CSV file with the header id,ppn,filename; ppn with or without the PPN prefix.",
    )


class cms(luigi.Config):
    url = luigi.Parameter(
        default="",
        significant=False,
        description="SQLAlchemy URL of the CMS database, or env:NAME / file:PATH naming where it is written "
        "(the only places for a password); empty: no CMS, similarities.hdf5 only.",
    )
    mode = Choice(
        ["table", "siblings"],
        default="table",
        significant=False,
        description="table: rows (image_id, rank, similar_image_id, distance, run_id) in [cms] table; siblings: "
        "each image's neighbour IDs as a JSON array in [cms] siblings_column of images_table (the original CMS's shape).",
    )
    table = luigi.Parameter(default=TABLE, significant=False, description="Table the neighbour lists are loaded into.")
    siblings_column = luigi.Parameter(
        default="siblings",
        significant=False,
        description="Column of images_table the siblings mode writes (it must exist).",
    )
    marker_table = luigi.Parameter(
        default=MARKER_TABLE,
        significant=False,
        description="Table recording each load (run_id, date, rows, time).",
    )
    batch_rows = count(BATCH_ROWS, significant=False, description="Rows per write of a load.")
    images_table = luigi.Parameter(
        default="images",
        significant=False,
        description="Table of the CMS's images: the ID mapping ([ids] source = cms) and siblings.",
    )
    id_column = luigi.Parameter(default="id", significant=False, description="Its column of database IDs.")
    ppn_column = luigi.Parameter(
        default="ppn", significant=False, description="Its column of PPNs (with or without the PPN prefix)."
    )
    filename_column = luigi.Parameter(default="filename", significant=False, description="Its column of file names.")
    copies_table = luigi.Parameter(
        default="",
        significant=False,
        description="Table the groups of copies are loaded into (copy_group, image_id, first_seen, run_id), "
        "replaced whole each night; empty: copies.csv only.",
    )
    record_column = luigi.Parameter(
        default="",
        significant=False,
        description="Its column of each image's catalogue record, for [neighbours] same_record; empty: the PPN "
        "(a CSV mapping may carry a column record instead).",
    )
    ids_query = luigi.Parameter(
        default="",
        significant=False,
        description="A SELECT returning id, ppn, filename, used instead of images_table when set.",
    )


class resnet(luigi.Config):
    weights = luigi.Parameter(
        default="imagenet",
        description="imagenet (Keras download and cache), random (seeded, tests and smoke runs only) "
        "or the path of a Keras ResNet50 weights file without the top.",
    )
    layer = luigi.Parameter(
        default=DEFAULT_LAYER,
        description="Keras layer whose output gives the local descriptors (the original's res5c_branch2c; "
        "e.g. conv5_block3_out, or conv4_block6_out: 14 x 14 x 1024).",
    )
    seed = luigi.IntParameter(default=0, description="Seed of the random initialisation when weights = random.")
    precision = Choice(
        PRECISIONS,
        default="auto",
        description="What the model computes in: auto (float16 on an NVIDIA GPU with tensor cores, bfloat16 on a "
        "CPU with avx512_bf16 or amx_bf16, float32 elsewhere), float32, bfloat16, float16, or int8 (quantized, "
        "calibrated on the collection, run by OpenVINO on the CPU; never chosen by auto). The precision used "
        "is part of the feature store's identity: a change re-extracts every image.",
    )
    calibration_images = count(
        CALIBRATION_IMAGES,
        low=16,
        description="At precision = int8: images of the collection (a seeded sample) the int8 trunk is calibrated "
        "on, once per feature store.",
    )
    batch_size = count(16, significant=False, description="Images per forward pass.")


class evaluate(luigi.Config):
    labels = luigi.Parameter(
        default="",
        significant=False,
        description="CSV file id,label: images with the same label are relevant to each other; when set, every "
        "run evaluates its neighbours against it (evaluation.json, report.html).",
    )


class selfcheck(luigi.Config):
    sample = count(
        50,
        low=0,
        description="Collection images whose altered copies (crop, rescale, rotation, greyscale, JPEG, border) "
        "each run queries against the collection (a seeded sample; 0: no self-check).",
    )
    seed = luigi.IntParameter(default=0, description="Seed of the sample and of the alterations.")


class copies(luigi.Config):
    threshold = CopyThreshold(
        default="auto",
        description="Distance within which images count as copies of one picture (copies.csv): auto (a quantile "
        "of the distances at which the self-check's altered copies find their original), a distance, or off.",
    )


class report(luigi.Config):
    sample = count(
        12,
        low=0,
        significant=False,
        description="Images shown with their neighbours in report.html (a seeded sample).",
    )


class progress(luigi.Config):
    interval = seconds(
        30.0,
        low_open=False,
        significant=False,
        description="Seconds between progress lines of a long task in the log (0: after every batch); the "
        "central scheduler's page shows progress continuously.",
    )


class lock(luigi.Config):
    heartbeat = seconds(
        HEARTBEAT,
        significant=False,
        description="Seconds between the heartbeats of each process of a run on the artifacts folder's run lock.",
    )
    stale_after = seconds(
        STALE_AFTER,
        significant=False,
        description="Seconds without a heartbeat after which a run on another host counts as ended and its "
        "claim on the artifacts folder is taken over (on the same host: as soon as its process has ended).",
    )


class features(luigi.Config):
    shards = count(
        1,
        significant=False,  # an image's descriptors do not depend on its shard
        description="Shards the extraction is split into: one FeatureShard task each, run in parallel by "
        "the workers of one or several machines (an image's shard is a stable hash of its path).",
    )


class images(luigi.Config):
    colour = Choice(
        COLOURS,
        default=DEFAULT_COLOUR,
        description="What the model sees of each image: grey (its luma in all three channels, so a colour "
        "scan and a greyscale copy of the same print look alike) or rgb (its own colours).",
    )
    trim = Flag(
        default=DEFAULT_TRIM,
        description="Cut off the uniform margin around the picture (a scanned page's paper) before the "
        "model sees it, so that a tight crop and a scan with a wide margin look alike.",
    )
    max_pixels = count(
        MAX_PIXELS,
        significant=False,  # applies to files extracted from then on, not to those already stored
        description="Images with more pixels are rejected unread (decompression bombs); a new value applies "
        "to new and changed files.",
    )
    decode_processes = Processes(
        significant=False,
        description="Processes decoding images while the model runs; auto: one per core the run may use.",
    )
    decode_timeout = seconds(
        DECODE_TIMEOUT,
        significant=False,
        description="Seconds one file may take to decode; a decoder that takes longer is stopped and the "
        "file rejected.",
    )


class reduction(luigi.Config):
    variance = Number(
        float,
        0.0,
        1.0,
        low_open=True,
        default=DEFAULT_VARIANCE,
        must="a fraction in (0, 1]",
        description="Fraction of the variance the PCA components keep.",
    )
    sample_images = count(
        DEFAULT_SAMPLE_IMAGES,
        low=0,
        description="Images whose every descriptor the scaler and PCA are fitted on (a seeded uniform "
        "sample); 0 = all images.",
    )
    seed = luigi.IntParameter(default=0, description="Seed of the image sample.")
    descriptors = Choice(
        DESCRIPTOR_NORMS,
        default=DEFAULT_DESCRIPTORS,
        description="Normalisation of each local descriptor before the scaler: raw, l2 (unit length) or root "
        "(square root of the L1-normalised absolute values, signs kept).",
    )
    reduced = Choice(
        REDUCED_NORMS,
        default=DEFAULT_REDUCED,
        description="Normalisation of each descriptor after the PCA: raw or l2 (unit length).",
    )


class histograms(luigi.Config):
    assign = Number(
        int,
        1,
        MAX_ASSIGN,
        must=f"a whole number from 1 to {MAX_ASSIGN}",
        default=DEFAULT_ASSIGN,
        description=f"Visual words each descriptor counts for: 1 (its nearest) to {MAX_ASSIGN} (multiple assignment).",
    )
    shards = count(
        1,
        significant=False,  # an image's histogram does not depend on its shard
        description="Shards the histograms are split into: one HistogramShard task each, run in parallel by the "
        "workers of one or several machines (an image's shard is a stable hash of its path).",
    )


class codebook(luigi.Config):
    size = luigi.Parameter(
        default="auto", description="Number of visual words K, or auto: one per 8 descriptors sampled, 2 to 8,500."
    )
    sample_size = count(
        DEFAULT_SAMPLE_SIZE,
        description="Most descriptors k-means is fitted on: the descriptors of a seeded uniform sample of "
        "sample_size / 49 images.",
    )
    seed = luigi.IntParameter(default=0, description="Seed of the descriptor sample and of k-means.")
    refit_growth = Number(
        float,
        0.0,
        must="a fraction >= 0",
        default=0.25,
        description="Refit the reducer and codebook when the number of images has grown by more than "
        "this fraction since the last fit (they stay frozen otherwise, unless a run asks --refit).",
    )


class neighbours(luigi.Config):
    k = count(5, description="Neighbours per image.")
    shards = count(
        1,
        significant=False,  # an image's neighbours do not depend on which shard finds them
        description="Shards the neighbour search is split into: one NeighbourShard task each (an equal block of "
        "the images, searched against all), run in parallel by the workers of one or several machines.",
    )
    weighting = Choice(
        WEIGHTINGS,
        default=DEFAULT_WEIGHTING,
        description="Word weights of the histograms: raw (each word's share of the image's descriptors) or "
        "tfidf (times the word's smoothed inverse document frequency in the images the codebook was fitted on, kept until the next refit).",
    )
    metric = Choice(
        METRICS,
        default=DEFAULT_METRIC,
        description="Distance of the weighted histograms: euclidean or cosine (1 - cosine similarity).",
    )
    power = Number(
        float,
        0.0,
        1.0,
        low_open=True,
        must="a number in (0, 1]",
        default=DEFAULT_POWER,
        description="Power the word counts are raised to before weighting: 1 keeps them, 0.5 takes "
        "their square root (with cosine: the Hellinger kernel).",
    )
    same_record = SameRecordParameter(
        default=SameRecord(),
        description="Which records an image's list draws from (the record: its PPN folder, or [cms] record_column): keep (any), "
        "exclude (other records only) or at_most N (at most N of the k from the image's own record).",
    )
    method = Choice(
        METHODS,
        default="auto",
        significant=False,  # both methods give the same result
        description="balltree, sparse (exact, inverted file over visual words) or auto (sparse, measured faster).",
    )


class verdicts(luigi.Config):
    source = Choice(
        ["auto", "cms", "csv", "none"],
        default="auto",
        significant=False,
        description="Where the curators' verdicts on pairs are read from every night: cms (the table [verdicts] "
        "table in the database at [cms] url, created when missing), csv (the file [verdicts] csv), none, or auto "
        "(csv when [verdicts] csv is set, else cms when [cms] url is, else none).",
    )
    table = luigi.Parameter(
        default=VERDICT_TABLE,
        significant=False,
        description="Table of the verdicts in the CMS database: image_id, similar_image_id, verdict (wrong or "
        "right), verdict_time, optionally author.",
    )
    csv = luigi.Parameter(
        default="",
        significant=False,
        description="CSV file of the verdicts, with the table's columns as its header, for a site without a CMS "
        "database.",
    )


class collection(luigi.Config):
    fingerprint = Choice(
        ["stat", "sha256"],
        default="stat",
        description="How a changed image is recognised: stat (size and modification time) or sha256 "
        "(a hash of the content, for storage whose times can't be trusted).",
    )
    max_removed = Number(
        float,
        0.0,
        1.0,
        must="a fraction from 0 to 1",
        default=0.05,
        significant=False,
        description="The largest share of the previous run's images a night may find gone (rounded up to whole "
        "images); a night that finds more gone from disk (an unmounted volume, a failed sync) stops before any "
        "task writes, naming the folders (exit code 20), and one that finds more gone from the ID mapping (a "
        "truncated export) stops before the inventory is written (exit code 30). 1: no limit.",
    )
    allow_removals = luigi.BoolParameter(
        default=False,
        significant=False,
        description="Let this run remove more than max_removed of the images: give it once on the command line "
        "(--collection-allow-removals) to confirm a real deletion.",
    )


class serve(luigi.Config):
    host = luigi.Parameter(
        default="127.0.0.1",
        significant=False,
        description="Address the web app listens on (similar-images-serve): 127.0.0.1 answers this machine only; "
        "behind a reverse proxy on another machine, the address the proxy reaches (docs/operations.md).",
    )
    port = Number(
        int,
        1,
        65535,
        default=8000,
        must="a port number from 1 to 65535",
        significant=False,
        description="Port the web app listens on.",
    )
    public = Flag(
        default=True,
        significant=False,
        description="Browsing and search open to whoever reaches the app (true), or only after a curator's login "
        "(false); writing a verdict always needs a curator's login.",
    )
    users = luigi.Parameter(
        default="curators.txt",
        significant=False,
        description="File of the curators' names and password hashes (argon2), managed with "
        "similar-images-serve --add-user NAME and --remove-user NAME.",
    )
    secret_key = luigi.Parameter(
        default="serve-secret.key",
        significant=False,
        description="File of the key that signs the app's session cookies, made (readable by its owner only) at the "
        "first start; a new key logs every curator out.",
    )
    trusted_proxy = luigi.Parameter(
        default="",
        significant=False,
        description="Address of the reverse proxy (several: comma-separated) whose user_header names the logged-in "
        "curator and whose X-Forwarded-Proto and X-Forwarded-Prefix are honoured; empty: no proxy is trusted.",
    )
    user_header = luigi.Parameter(
        default="X-Remote-User",
        significant=False,
        description="Header in which the trusted proxy names the curator it authenticated.",
    )
    viewer_url = luigi.Parameter(
        default="",
        significant=False,
        description="URL of an image in the site's viewer, with {ppn}, {filename} and {id} (an IIIF viewer, the "
        "catalogue's page view), linked beside every image; empty: no link.",
    )
    image_url = luigi.Parameter(
        default="",
        significant=False,
        description="URL of an image at a size on the site's image server, with {ppn}, {filename}, {id} and {side} "
        "(longest side in pixels; IIIF: .../full/!{side},{side}/0/default.jpg): the app shows those, and the night "
        "makes no thumbnails; empty: the night makes them.",
    )
    max_upload_mb = Number(
        float,
        0.0,
        low_open=True,
        default=20.0,
        must="a number of MB > 0",
        significant=False,
        description="Largest image file a query by upload may send, in MB; a larger one is refused (413).",
    )
    threads = count(8, significant=False, description="Threads serving requests.")
    reload_seconds = seconds(
        5.0,
        significant=False,
        description="Seconds between the app's looks at the artifacts folder for a night's new lists.",
    )
    secure_cookies = Flag(
        default=False,
        significant=False,
        description="Send the session cookie over HTTPS only: true when people reach the app through an HTTPS proxy.",
    )


#: Every section of luigi.cfg that is the pipeline's, in the order docs/configuration.md lists them.
SECTIONS = (
    paths,
    ids,
    cms,
    resnet,
    features,
    images,
    reduction,
    codebook,
    histograms,
    neighbours,
    verdicts,
    collection,
    evaluate,
    selfcheck,
    copies,
    report,
    progress,
    lock,
    serve,
)


def shards(section):
    """``[section] shards``, or 1 while a setting of the section cannot be read: the tasks are
    scheduled, and CheckSettings then stops the run with the setting's name before any work."""
    try:
        return {c.__name__: c for c in SECTIONS}[section]().shards
    except ValueError:
        return 1


@functools.cache
def _precision(setting):
    precision, reason = chosen_precision(setting)
    logging.getLogger("luigi-interface").info("[resnet] precision: %s (%s)", precision, reason)
    return precision, reason


def neighbour_settings():
    """The :class:`~pipeline.search.NeighbourSettings` of ``[neighbours]``."""
    n = neighbours()
    return NeighbourSettings(n.k, Distance(n.weighting, n.metric, n.power), n.same_record, n.method)


def destination():
    """The :class:`~pipeline.cms.Destination` of ``[cms]``: where the lists are loaded."""
    c = cms()
    return Destination(c.mode, c.table, c.marker_table, c.images_table, c.id_column, c.siblings_column, c.batch_rows)


def precision():
    """The precision the model computes in on this machine, and why: ``[resnet] precision``
    with ``auto`` decided (once per process, logged)."""
    return _precision(resnet().precision)


def model_spec(**changes):
    """The :class:`~pipeline.backends.ModelSpec` of ``[resnet]`` and ``[images]`` (the precision
    decided on this machine), with ``changes`` (another ``layer``, ``colour`` or ``trim``)."""
    return ModelSpec(
        **{
            "weights": resnet().weights,
            "layer": resnet().layer,
            "seed": resnet().seed,
            "precision": precision()[0],
            "colour": images().colour,
            "trim": images().trim,
            "calibration_images": resnet().calibration_images,
            **changes,
        }
    )


def view_store():
    """The store of the images' thumbnails and previews, ``<artifacts>/thumbnails/views.sqlite``."""
    return ViewStore(os.path.join(paths().artifacts, "thumbnails", "views.sqlite"))


def inbox():
    """Where the extraction leaves each batch's views, ``<artifacts>/thumbnails/incoming/``."""
    return Inbox(os.path.join(paths().artifacts, "thumbnails", "incoming"))


def views_made():
    """Whether the night makes each image's thumbnail and preview (no ``[serve] image_url``
    serves them; a bad value: yes, CheckSettings names it)."""
    try:
        return not serve().image_url.strip()
    except ValueError:
        return True


def verdict_source():
    """Where the verdicts are: ("cms", table), ("csv", path) or ("none", None), ``auto`` decided
    (none while a setting cannot be read: the tasks are scheduled, and CheckSettings then stops
    the run with the setting's name before any work)."""
    try:
        source = verdicts().source
    except ValueError:
        return "none", None
    if source == "auto":
        source = "csv" if verdicts().csv.strip() else "cms" if cms().url.strip() else "none"
    if source == "cms":
        return "cms", verdicts().table
    if source == "csv":
        return "csv", verdicts().csv
    return "none", None
