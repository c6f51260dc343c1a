"""Extraction throughput: the pipeline's extractor against the bare batched forward pass and
against the original scripts' one-``predict``-per-image loop, on the same images in one run.

    python -m benchmarks.extract [--images 96] [--batch-size 16] [--per-image 24]
"""

import argparse
import contextlib
import os
import tempfile

import numpy as np

from pipeline.collection import scan_content
from pipeline.extraction import extract_to_store
from pipeline.features import DescriptorExtractor, build_model
from pipeline.images import load_image
from pipeline.store import FeatureStore

from .common import Timer, report, scan_like_images


def bare_forward(extractor, pixels, batch_size):
    """Images per second of the compiled forward pass alone, on pre-decoded tensors."""
    forward = extractor._forward()
    forward(pixels[:batch_size]).numpy()  # warm-up
    with Timer() as t:
        for start in range(0, len(pixels), batch_size):
            batch = pixels[start : start + batch_size]
            if len(batch) < batch_size:
                batch = np.concatenate([batch, np.zeros((batch_size - len(batch), *batch.shape[1:]), batch.dtype)])
            forward(batch).numpy()
    return len(pixels) / t.seconds


def pipeline_extraction(extractor, paths, store):
    """Images per second of the extraction stage's own loop, ``extract_to_store`` (decoding in
    the decoder processes, the forward pass, 8-bit codes and compression committed to the
    feature store), and the store's bytes per image."""
    content = os.path.dirname(os.path.dirname(paths[0]))
    files = scan_content(content)
    kept = lambda: contextlib.nullcontext(extractor)  # noqa: E731 (the decoder processes stay up between the runs)
    warm = FeatureStore(store.root + "-warm-up")  # starts the decoder processes, traces the model
    extract_to_store(warm, kept, files[: extractor.batch_size], content)
    with Timer() as t:
        extract_to_store(store, kept, files, content)
    size = sum(os.path.getsize(os.path.join(store.chunk_dir, name)) for name in os.listdir(store.chunk_dir))
    return len(paths) / t.seconds, size / len(paths)


def decode_ms(paths, **preparation):
    """Milliseconds per image of decoding alone, in this process."""
    with Timer() as t:
        for path in paths:
            load_image(path, **preparation)
    return 1000 * t.seconds / len(paths)


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


def run(images=96, batch_size=16, per_image=24):
    from tasks.config import images as shipped

    preparation = {"colour": shipped().colour, "trim": shipped().trim}
    with tempfile.TemporaryDirectory() as directory:
        paths = scan_like_images(os.path.join(directory, "content", "PPN1"), images)
        model = build_model(weights="random")
        decode_plain, decode_prepared = decode_ms(paths), decode_ms(paths, **preparation)
        pixels = np.stack([load_image(p, **preparation) for p in paths]).astype(np.float32)
        with DescriptorExtractor(model, batch_size=batch_size, **preparation) as extractor:
            bare = bare_forward(extractor, pixels, batch_size)
            pipeline, store_bytes = pipeline_extraction(
                extractor, paths, FeatureStore(os.path.join(directory, "store"))
            )
        single = per_image_predict(model, paths[:per_image])
    figures = {
        "bench": "extract",
        "images": images,
        "batch_size": batch_size,
        "pipeline_ips": round(pipeline, 2),
        "bare_model_ips": round(bare, 2),
        "per_image_predict_ips": round(single, 2),
        "ratio_vs_bare": round(pipeline / bare, 3),
        "speedup_vs_per_image": round(pipeline / single, 2),
        "store_bytes_per_image": round(store_bytes),
        "preparation": preparation,
        "decode_ms": round(decode_prepared, 2),
        "decode_ms_rgb_whole": round(decode_plain, 2),
    }
    report(
        [
            ("images (1140 x 840 JPEG), batch size", f"{images}, {batch_size}"),
            (
                f"decoding, ms per image: colour={preparation['colour']} trim={preparation['trim']}",
                figures["decode_ms"],
            ),
            ("decoding, ms per image: colour=rgb trim=False", figures["decode_ms_rgb_whole"]),
            ("pipeline extraction, images/s", figures["pipeline_ips"]),
            ("bare forward pass on decoded tensors, images/s", figures["bare_model_ips"]),
            (f"one model.predict per image ({per_image} images), images/s", figures["per_image_predict_ips"]),
            ("pipeline / bare", figures["ratio_vs_bare"]),
            ("pipeline / per-image predict", figures["speedup_vs_per_image"]),
            ("feature store, bytes per image", figures["store_bytes_per_image"]),
        ],
        figures,
    )
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--per-image", type=int, default=24, help="images for the per-image predict loop")
    args = parser.parse_args()
    run(args.images, args.batch_size, args.per_image)


if __name__ == "__main__":
    main()
