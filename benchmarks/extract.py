"""Extraction throughput at float32 and at the precision ``auto`` chooses here, side by side in
one run: the pipeline's extraction loop, the bare batched forward pass, the commit to the
feature store, and as reference lines the original scripts' one ``predict`` per image and
the bare pass at float32-openvino (a candidate of ``auto``). Then the archival masters of
:mod:`benchmarks.masters`: each format's decoding (the pipeline's, the libvips reference's,
Pillow's whole decode as before, a decoder process's peak memory), and the pipeline on a mixed
batch of masters beside the same pages as small JPEGs, at ``auto`` and at int8.

    python -m benchmarks.extract [--images 96] [--batch-size 16] [--per-image 24]
                                 [--precision P] [--decode-processes N] [--device cpu|gpu]
                                 [--masters 40] [--rounds 3]

``--precision`` compares another precision with float32 (default: what ``[resnet] precision
= auto`` chooses on this machine; int8 is calibrated on the benchmark's images); ``--device gpu`` runs on the first GPU TensorFlow sees and
says whether it was used (exit status 1 when there is none).
"""

import argparse
import contextlib
import os
import sys
import tempfile
import zlib

import numpy as np

from pipeline.backends import ModelSpec, decide_precision
from pipeline.collection import scan_content
from pipeline.decoders import default_processes
from pipeline.extraction import extract_to_store
from pipeline.features import DescriptorExtractor, extract
from pipeline.images import MAX_PIXELS, decode_image, load_image
from pipeline.model import build_model
from pipeline.settings import PRECISIONS
from pipeline.store import FeatureStore, quantize
from pipeline.thumbnails import Inbox

from . import masters as archival
from .common import Timer, add_record_option, recording, report, scan_like_images


def bare_forward(extractor, pixels, batch_size):
    """Images per second of the compiled forward pass alone, on pre-decoded tensors, and the
    device it ran on."""
    forward = extractor._forward()
    maps = forward(pixels[:batch_size])  # warm-up
    device = "CPU (OpenVINO)" if isinstance(maps, np.ndarray) else maps.device
    with Timer() as t:
        for start in range(0, len(pixels), batch_size):
            batch = pixels[start : start + batch_size]
            if len(batch) < batch_size:
                batch = np.concatenate([batch, np.zeros((batch_size - len(batch), *batch.shape[1:]), batch.dtype)])
            np.asarray(forward(batch))
    return len(pixels) / t.seconds, device


def model_at(precision, paths, directory, preparation):
    """The random-weight model at ``precision``, as the pipeline's backend makes it (at int8,
    calibrated on ``paths``, prepared as ``preparation`` says)."""
    backend = ModelSpec(weights="random", precision=precision, **preparation).backend()
    folder = os.path.join(directory, f"model-{precision}")
    backend.calibrate(folder, paths, MAX_PIXELS)
    return backend.model(folder)


def pipeline_extraction(extractor, paths, store):
    """Images per second of the extraction stage's own loop, ``extract_to_store`` (decoding in
    the decoder processes, the forward pass, 8-bit codes committed to the feature store, and,
    where the extractor makes them as the shipped settings do, each image's views left in an
    inbox), and the store's bytes per image."""
    content = os.path.dirname(os.path.dirname(paths[0]))
    files = scan_content(content)
    kept = lambda: contextlib.nullcontext(extractor)  # noqa: E731 (the decoder processes stay up between the runs)
    views = "views" in extractor.options
    warm = FeatureStore(store.root + "-warm-up")  # starts the decoder processes, traces the model
    extract_to_store(
        warm, kept, files[: extractor.batch_size], content, inbox=Inbox(warm.root + "-views") if views else None
    )
    with Timer() as t:
        extract_to_store(store, kept, files, content, inbox=Inbox(store.root + "-views") if views else None)
    size = sum(os.path.getsize(os.path.join(store.chunk_dir, name)) for name in os.listdir(store.chunk_dir))
    return len(paths) / t.seconds, size / len(paths)


def alternated(extractor, pixels, paths, store_root, rounds):
    """The bare forward pass and the pipeline, measured in turn ``rounds`` times (the machine is
    shared: the median of each is the figure): bare and pipeline images per second, the store's
    bytes per image, and the device."""
    bare, pipeline = [], []
    for r in range(rounds):
        rate, ran_on = bare_forward(extractor, pixels, extractor.batch_size)
        bare.append(rate)
        rate, store_bytes = pipeline_extraction(extractor, paths, FeatureStore(f"{store_root}-{r}"))
        pipeline.append(rate)
    return float(np.median(bare)), float(np.median(pipeline)), store_bytes, ran_on


def commit_ms(store, descriptors, repeats=5):
    """Milliseconds per image of committing batches of ``descriptors`` (8-bit codes and the
    chunk file, :meth:`FeatureStore.write_chunk`), and of gzip level 1 on their codes (the
    commit of earlier versions) with its bytes per image."""
    n = len(descriptors)
    store.write_chunk([f"warm-up {i}" for i in range(n)], descriptors, {})
    with Timer() as t:
        for r in range(repeats):
            store.write_chunk([f"commit {r} {i}" for i in range(n)], descriptors, {})
    codes = quantize(descriptors)[0].tobytes()
    with Timer() as g:
        for _ in range(repeats):
            packed = zlib.compress(codes, 1)
    return 1000 * t.seconds / (repeats * n), 1000 * g.seconds / (repeats * n), len(packed) / n


def decode_ms(paths, **preparation):
    """Milliseconds per image of decoding alone, in this process (``views``: the thumbnail and
    preview made too, as the night's decoders make them), and the views' bytes per image."""
    size = 0
    with Timer() as t:
        for path in paths:
            views = decode_image(path, **preparation).views
            size += sum(map(len, views or ()))
    return 1000 * t.seconds / len(paths), size / len(paths)


def per_image_predict(model, paths):
    """Images per second of the original loop: load_img, preprocess, model.predict per image."""
    import keras

    preprocess = keras.applications.resnet50.preprocess_input

    def one(path):
        image = keras.utils.load_img(path, target_size=(224, 224))
        x = preprocess(np.expand_dims(keras.utils.img_to_array(image), 0))
        return model.predict(x, verbose=0)

    one(paths[0])  # warm-up
    with Timer() as t:
        for path in paths:
            one(path)
    return len(paths) / t.seconds


def gpus():
    """The GPUs TensorFlow can use (none with tensorflow-cpu)."""
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def masters_run(
    directory, n, pixels, paths, batch_size, decoders, preparation, rounds, chosen, pages=archival.PAGES, views=None
):
    """The masters' figures: per format decoding, and the pipeline on ``n`` mixed masters (of the
    first page size) beside the same pages as small JPEGs at the precision ``chosen`` and at int8."""
    figures = {
        "masters": n,
        "masters_decode": archival.decoding_figures(
            archival.write_masters(os.path.join(directory, "masters"), pages=pages), **preparation
        ),
    }
    shots = archival.pictures(n, seed=1)
    content = {
        "masters": archival.write_mixed(os.path.join(directory, "content-masters", "PPN1"), shots, page=pages[0]),
        "small": archival.write_mixed(os.path.join(directory, "content-small", "PPN1"), shots, small=True),
    }
    for name in dict.fromkeys([chosen, "int8"]):
        model = model_at(name, paths, directory, preparation)
        with DescriptorExtractor(model, batch_size, decoders, **preparation, **(views or {})) as extractor:
            measured = {
                kind: alternated(extractor, pixels, files, os.path.join(directory, f"{kind}-{name}"), rounds)
                for kind, files in content.items()
            }
            rate = {kind: m[1] for kind, m in measured.items()}
            bare = measured["masters"][0]
        figures[f"masters_ips_{name}"] = round(rate["masters"], 2)
        figures[f"masters_small_ips_{name}"] = round(rate["small"], 2)
        figures[f"masters_time_vs_small_{name}"] = round(rate["small"] / rate["masters"], 3)
        figures[f"masters_ratio_vs_bare_{name}"] = round(rate["masters"] / bare, 3)
    return figures


def masters_rows(figures):
    """The report's rows of :func:`masters_run`'s figures."""
    rows = [("archival masters: format", "decode ms: pipeline (its decoder) / libvips / Pillow whole; decoder peak")]
    for name, row in figures["masters_decode"].items():
        vips = "n/a" if row["libvips"] is None else row["libvips"]
        rows.append(
            (
                f"  {name}",
                f"{row['pipeline']} ({row['decoder']}) / {vips} / {row['pillow_whole']}; {row['decoder_peak_mb']} MB",
            )
        )
    for key in [k for k in figures if k.startswith("masters_ips_")]:
        name = key[len("masters_ips_") :]
        rows.append(
            (
                f"{figures['masters']} mixed masters at {name}: images/s; time / same pages as small JPEGs; / bare",
                f"{figures[key]}; {figures[f'masters_time_vs_small_{name}']}; {figures[f'masters_ratio_vs_bare_{name}']}",
            )
        )
    return rows


def run(
    images=96,
    batch_size=16,
    per_image=24,
    precision=None,
    decode_processes=None,
    device="cpu",
    masters=40,
    rounds=3,
    pages=archival.PAGES,
):
    from tasks.config import images as shipped
    from tasks.config import resnet, views_made

    if device == "cpu" and gpus():
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")  # the CPU's figures, on a machine with a GPU too
    preparation = {"colour": shipped().colour, "trim": shipped().trim}
    chosen, reason, rates = decide_precision(
        ModelSpec(weights="random", precision=precision or resnet().precision, **preparation), batch_size=batch_size
    )
    views = {"views": True} if views_made() else {}  # the night's decoders make each image's views
    decoders = decode_processes or shipped().decode_processes or default_processes()
    measured = {}
    with tempfile.TemporaryDirectory() as directory:
        paths = scan_like_images(os.path.join(directory, "content", "PPN1"), images)
        decode_plain, decode_prepared = decode_ms(paths)[0], decode_ms(paths, **preparation)[0]
        decode_untrimmed = decode_ms(paths, **{**preparation, "trim": False})[0]
        decode_views, views_bytes = decode_ms(paths, **preparation, views=True)
        pixels = np.stack([load_image(p, **preparation) for p in paths]).astype(np.float32)
        for name in dict.fromkeys(["float32", chosen]):  # float32 first, then the other precision if any
            model = model_at(name, paths, directory, preparation)
            with DescriptorExtractor(model, batch_size, decoders, **preparation, **views) as extractor:
                bare, pipeline, store_bytes, ran_on = alternated(
                    extractor, pixels, paths, os.path.join(directory, f"store-{name}"), rounds
                )
                descriptors = extract(extractor, paths[:batch_size])[0]
            commit, gzip_ms, gzip_bytes = commit_ms(
                FeatureStore(os.path.join(directory, f"commit-{name}")), descriptors
            )
            measured[name] = dict(bare=bare, pipeline=pipeline, store_bytes=store_bytes, commit=commit, device=ran_on)
        with DescriptorExtractor(model_at("float32-openvino", paths, directory, preparation), batch_size) as extractor:
            openvino_float32 = bare_forward(extractor, pixels, batch_size)[0]
        single = per_image_predict(build_model(weights="random"), paths[:per_image])
        on_masters = (
            masters_run(
                directory, masters, pixels, paths, batch_size, decoders, preparation, rounds, chosen, pages, views
            )
            if masters
            else {}
        )
    auto, full = measured[chosen], measured["float32"]
    figures = {
        "bench": "extract",
        "images": images,
        "batch_size": batch_size,
        "rounds": rounds,
        "decode_processes": decoders,
        "device": auto["device"],
        "gpu_used": "GPU" in auto["device"],
        "precision_auto": chosen,
        "precision_reason": reason,
        "precision_measured": rates,
        "pipeline_ips_float32": round(full["pipeline"], 2),
        "pipeline_ips_auto": round(auto["pipeline"], 2),
        "bare_ips_float32": round(full["bare"], 2),
        "bare_ips_auto": round(auto["bare"], 2),
        "auto_vs_float32": round(auto["pipeline"] / full["pipeline"], 3),
        "ratio_vs_bare": round(auto["pipeline"] / auto["bare"], 3),
        "commit_ms_per_image": round(auto["commit"], 3),
        "store_bytes_per_image": round(auto["store_bytes"]),
        "gzip_ms_per_image": round(gzip_ms, 3),
        "gzip_bytes_per_image": round(gzip_bytes),
        "per_image_predict_ips": round(single, 2),
        "bare_ips_openvino_float32": round(openvino_float32, 2),
        "preparation": preparation,
        "decode_ms": round(decode_prepared, 2),
        "decode_ms_rgb_whole": round(decode_plain, 2),
        "decode_ms_untrimmed": round(decode_untrimmed, 2),
        "decode_ms_with_views": round(decode_views, 2),
        "views_bytes_per_image": round(views_bytes),
        "pipeline_makes_views": bool(views),
        **on_masters,
    }
    report(
        [
            ("images (1140 x 840 JPEG), batch size, decoder processes", f"{images}, {batch_size}, {decoders}"),
            ("device", f"{figures['device']} (GPU used: {figures['gpu_used']})"),
            ("precision auto chooses", f"{chosen} ({reason})"),
            ("pipeline extraction at float32, images/s", figures["pipeline_ips_float32"]),
            (f"pipeline extraction at {chosen}, images/s", figures["pipeline_ips_auto"]),
            ("bare forward pass at float32, images/s", figures["bare_ips_float32"]),
            (f"bare forward pass at {chosen}, images/s", figures["bare_ips_auto"]),
            (f"pipeline at {chosen} / pipeline at float32", figures["auto_vs_float32"]),
            (f"pipeline / bare at {chosen}", figures["ratio_vs_bare"]),
            ("commit (8-bit codes, chunk file), ms per image", figures["commit_ms_per_image"]),
            ("feature store, bytes per image", figures["store_bytes_per_image"]),
            ("gzip level 1 of the codes (not used), ms and bytes per image", f"{gzip_ms:.3f}, {gzip_bytes:.0f}"),
            (
                f"decoding, ms per image: colour={preparation['colour']} trim={preparation['trim']}",
                figures["decode_ms"],
            ),
            (
                "decoding with the thumbnail and preview (the night's decoders), ms per image; their bytes per image",
                f"{figures['decode_ms_with_views']}; {figures['views_bytes_per_image']:,}",
            ),
            ("the pipeline lines make the views (the shipped settings)", "yes" if views else "no ([serve] image_url)"),
            ("decoding, ms per image: colour=rgb trim=False", figures["decode_ms_rgb_whole"]),
            (f"decoding, ms per image: colour={preparation['colour']} trim=False", figures["decode_ms_untrimmed"]),
            (
                f"one model.predict per image at float32 ({per_image} images), images/s",
                figures["per_image_predict_ips"],
            ),
            (
                "bare forward pass at float32-openvino (a candidate of auto), images/s",
                figures["bare_ips_openvino_float32"],
            ),
            *(masters_rows(figures) if masters else []),
        ],
        figures,
    )
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--per-image", type=int, default=24, help="images for the per-image predict loop")
    parser.add_argument("--precision", choices=PRECISIONS, help="compared with float32 (default [resnet] precision)")
    parser.add_argument("--decode-processes", type=int, help="default [images] decode_processes")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--masters", type=int, default=40, help="mixed archival masters (0: none)")
    parser.add_argument("--rounds", type=int, default=3, help="bare and pipeline measured in turn, medians kept")
    add_record_option(parser)
    args = parser.parse_args(argv)
    if args.device == "gpu" and not gpus():
        print(
            "no GPU visible to TensorFlow: install tensorflow[and-cuda] in place of tensorflow-cpu on a machine "
            "with an NVIDIA driver (docs/performance.md)",
            file=sys.stderr,
        )
        return 1
    with recording("extract", args, argv):
        figures = run(
            args.images,
            args.batch_size,
            args.per_image,
            args.precision,
            args.decode_processes,
            args.device,
            args.masters,
            args.rounds,
        )
    return 0 if args.device == "cpu" or figures["gpu_used"] else 1


if __name__ == "__main__":
    sys.exit(main())
