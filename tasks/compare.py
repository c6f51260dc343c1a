"""``python -m tasks.compare [--layers L,...] [--colours ...] [--trims ...] [--sizes K,...] [--descriptors ...]
[--reduced ...] [--assigns ...] [--weightings ...] [--powers ...] [--metrics ...]``: retrieval quality of the
configured collection over a grid of settings, as a table sorted by mAP. Each option defaults to
the configured setting, except weightings and metrics (both of each). With verdicts
(``[verdicts] source``), each setting's raw lists are also scored on the site's own judgements.

The descriptors of each layer and image preparation (colour, trim) are extracted into the
feature store the nightly run uses for them (so what is there already is reused, and a run that
later switches to them finds them); the reducer is fitted once per descriptors and descriptor normalisation, the codebook once per
size, the histograms once per assignment, and the neighbours once per weighting, power and distance. The quality columns are those of the Evaluate
task, against ``--labels`` (default ``[evaluate] labels``), and the self-check's hit rates.
"""

import argparse
import itertools
import json
import logging
import sys
import tempfile

from pipeline import collection, evaluation, extraction, store
from pipeline.blocks import DescriptorBlocks
from pipeline.compare import compare_layer, sort_rows, table
from pipeline.errors import PipelineError
from pipeline.model import layer_side, unknown_layer_message
from pipeline.selfcheck import Copies
from pipeline.settings import COLOURS, DESCRIPTOR_NORMS, MAX_ASSIGN, METRICS, REDUCED_NORMS, WEIGHTINGS
from pipeline.verdicts import night_verdicts

from . import config, settings
from .checks import query_extractor
from .extraction import calibrate, decoding, feature_settings, feature_store
from .inputs import read_id_mapping
from .verdicts import read_rows, where

logger = logging.getLogger("tasks.compare")


def listed(text):
    return [part.strip() for part in text.split(",") if part.strip()]


def parse(argv):
    parser = argparse.ArgumentParser(
        description="Retrieval quality of the configured collection over a grid of settings, best first."
    )
    parser.add_argument(
        "--layers", default=config.resnet().layer, help="ResNet50 layers, comma-separated (default [resnet] layer)"
    )
    parser.add_argument("--colours", default=config.images().colour, help="grey, rgb (default [images] colour)")
    parser.add_argument(
        "--trims", default=str(config.images().trim).lower(), help="true, false (default [images] trim)"
    )
    parser.add_argument(
        "--sizes", default=str(config.codebook().size), help="codebook sizes K, or auto (default [codebook] size)"
    )
    parser.add_argument(
        "--descriptors", default=config.reduction().descriptors, help="raw, l2, root (default [reduction] descriptors)"
    )
    parser.add_argument("--reduced", default=config.reduction().reduced, help="raw, l2 (default [reduction] reduced)")
    parser.add_argument(
        "--assigns", default=str(config.histograms().assign), help="1 to 3 (default [histograms] assign)"
    )
    parser.add_argument("--weightings", default=",".join(WEIGHTINGS), help="raw, tfidf (default both)")
    parser.add_argument(
        "--powers", default=str(config.neighbours().power), help="in (0, 1] (default [neighbours] power)"
    )
    parser.add_argument("--metrics", default=",".join(METRICS), help="euclidean, cosine (default both)")
    parser.add_argument(
        "--rerank",
        default=config.neighbours().rerank,
        help="on, off: lists re-ranked by verification (needs --selfcheck above 0; default [neighbours] rerank)",
    )
    parser.add_argument("--labels", default=config.evaluate().labels, help="CSV id,label (default [evaluate] labels)")
    parser.add_argument(
        "--selfcheck",
        type=int,
        default=config.selfcheck().sample,
        help="images altered for the self-check, 0: none (default [selfcheck] sample)",
    )
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    for name in ("layers", "colours", "trims", "weightings", "metrics", "descriptors", "reduced", "rerank"):
        setattr(args, name, listed(getattr(args, name)))
    try:
        args.sizes = [s if s.lower() == "auto" else int(s) for s in listed(args.sizes)] if args.sizes else []
        args.assigns = [int(a) for a in listed(args.assigns)]
        args.powers = [float(p) for p in listed(args.powers)]
    except ValueError as exc:
        parser.error(f"--sizes, --assigns and --powers take numbers ({exc})")
    for layer in args.layers:
        if layer_side(layer) is None:
            parser.error(unknown_layer_message(layer).replace("[resnet] layer=", "--layers "))
    choices = {
        "colours": COLOURS,
        "trims": ("true", "false"),
        "weightings": WEIGHTINGS,
        "metrics": METRICS,
        "descriptors": DESCRIPTOR_NORMS,
        "reduced": REDUCED_NORMS,
        "rerank": ("on", "off"),
    }
    for name, allowed in choices.items():
        for value in getattr(args, name):
            if value not in allowed:
                parser.error(f"--{name} {value!r} is not one of {', '.join(allowed)}")
    if any(not 1 <= a <= MAX_ASSIGN for a in args.assigns) or any(not 0 < p <= 1 for p in args.powers):
        parser.error(f"--assigns must be whole numbers from 1 to {MAX_ASSIGN}, --powers numbers in (0, 1]")
    if any(s != "auto" and s < 2 for s in args.sizes):
        parser.error("--sizes must be auto or whole numbers >= 2")
    if "on" in args.rerank and args.selfcheck <= 0:
        parser.error("--rerank on needs the self-check's threshold: --selfcheck above 0")
    args.trims = [t == "true" for t in args.trims]
    return args


def run(args):
    problem = settings.settings_problem()
    if problem:
        raise PipelineError(problem)
    labels = evaluation.read_labels(args.labels) if args.labels.strip() else None
    inventory = collection.take_inventory(config.paths().content, *read_id_mapping(), config.collection().fingerprint)
    rows, copies, first_ids, site_verdicts = [], None, None, None
    with tempfile.TemporaryDirectory(prefix="compare-") as scratch:
        for layer, colour, trim in itertools.product(args.layers, args.colours, args.trims):
            made_with = {"layer": layer, "colour": colour, "trim": trim}
            spec = config.model_spec(**made_with)
            layer_store = feature_store(feature_settings(spec))
            calibrate(spec, inventory.files)
            extraction.extract_features(
                layer_store,
                inventory.files,
                config.paths().content,
                spec,
                batch_size=config.resnet().batch_size,
                **decoding(),
            )
            index = store.index_inventory(layer_store, inventory)
            if first_ids is None:
                first_ids = index.ids
                if args.selfcheck > 0:
                    files = inventory.paths(index.ids, config.paths().content)
                    copies = Copies(files, scratch, sample=args.selfcheck, seed=config.selfcheck().seed)
                if config.verdict_source()[0] != "none":
                    k = config.neighbours().k
                    site_verdicts = night_verdicts(read_rows(index.ids), index.ids, set(), k, where()).honoured
                    logger.info("%d verdicts score each setting", len(site_verdicts))
            elif list(index.ids) != list(first_ids):
                raise PipelineError(f"the images with descriptors differ between settings at {made_with}; run again")
            copy_features = None
            if copies is not None:
                with query_extractor(spec, layer_store.root) as extractor:
                    copy_features = copies.extract(extractor)
            rows += compare_layer(
                DescriptorBlocks(layer_store, index),
                index,
                made_with,
                args.sizes,
                args.weightings,
                args.metrics,
                labels=labels,
                verdicts=site_verdicts,
                copies=copies,
                copy_features=copy_features,
                variance=config.reduction().variance,
                sample_images_=config.reduction().sample_images,
                reduction_seed=config.reduction().seed,
                sample_size=config.codebook().sample_size,
                seed=config.codebook().seed,
                k=5,
                descriptors=args.descriptors,
                reduced=args.reduced,
                assigns=args.assigns,
                powers=args.powers,
                reranks=args.rerank,
                candidates=config.neighbours().candidates,
            )
    return sort_rows(rows), len(first_ids)


def main(argv=None):
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        rows, n_images = run(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"images": n_images, "rows": rows}, f, indent=1)
    print(f"{n_images} images, weights {config.resnet().weights}; best first")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
