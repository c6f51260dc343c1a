"""How often each visual word is used, on a codebook fitted to descriptors of real photographs:
the rank-frequency profile the neighbours benchmark draws its synthetic histograms from.

    python -m benchmarks.words [--crops 600] [--words 250 1000]

Random crops (30 to 100 % of the side) of the sample photos that ship with scikit-image and
scikit-learn, ResNet50 descriptors (random weights here: weights = random), the pipeline's
reducer (variance 0.97) and codebook; the exponent s of share ~ rank**-s is fitted by least
squares on log-log over the more frequent half of the words.
"""

import argparse

import numpy as np
from PIL import Image

from pipeline.codebook import Codebook
from pipeline.histograms import word_histograms
from pipeline.model import build_model
from pipeline.reduction import Reducer

from .common import Timer, add_record_option, recording, report
from .proxies import SAMPLE_PHOTOS


def photos():
    import skimage.data
    from sklearn.datasets import load_sample_images

    images = []
    for name in SAMPLE_PHOTOS:  # the photos scikit-image ships (no download)
        a = getattr(skimage.data, name)()
        a = np.asarray(a[0] if isinstance(a, tuple) else a)  # a stereo pair: its left image
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        if a.dtype != np.uint8:
            a = (255 * (a - a.min()) / (np.ptp(a) + 1e-9)).astype(np.uint8)
        images.append(Image.fromarray(a).convert("RGB"))
    return images + [Image.fromarray(a) for a in load_sample_images().images]


def crops(images, n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = images[i % len(images)]
        w, h = image.size
        s = rng.uniform(0.3, 1.0)
        cw, ch = int(w * s), int(h * s)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        out.append(np.asarray(image.crop((x, y, x + cw, y + ch)).resize((224, 224), Image.Resampling.BILINEAR)))
    return np.stack(out).astype(np.float32)


def run(n_crops=600, words=(250, 1000), batch_size=16):
    import keras

    pixels = keras.applications.resnet50.preprocess_input(crops(photos(), n_crops))
    model = build_model(weights="random")
    with Timer() as t:
        maps = np.concatenate(
            [model(pixels[s : s + batch_size], training=False).numpy() for s in range(0, len(pixels), batch_size)]
        )
    descriptors = maps.reshape(-1, maps.shape[-1])
    reducer = Reducer(0.97).fit(descriptors)
    reduced = reducer.transform(maps.reshape(len(maps), -1, maps.shape[-1])).reshape(-1, reducer.n_components_)
    rows, results = (
        [
            (
                "crops, descriptors, components",
                f"{n_crops}, {len(descriptors)}, {reducer.n_components_} ({t.seconds:.0f} s to extract)",
            )
        ],
        [],
    )
    for k in words:
        assigned = Codebook(k, random_state=0).fit(reduced).predict(reduced)
        share = np.sort(np.bincount(assigned, minlength=k))[::-1] / len(assigned)
        top = share[: k // 2]
        exponent = -np.polyfit(np.log(np.arange(1, len(top) + 1)), np.log(np.maximum(top, 1e-12)), 1)[0]
        images_with_top = float(
            (
                word_histograms(assigned.reshape(n_crops, -1), k)[:, np.argmax(np.bincount(assigned, minlength=k))] > 0
            ).mean()
        )
        rows.append(
            (
                f"K = {k}",
                f"exponent {exponent:.2f}; most used word {share[0]:.2%} of descriptors, in {images_with_top:.0%} of images",
            )
        )
        results.append({"words": k, "exponent": round(float(exponent), 3), "top_share": round(float(share[0]), 4)})
    figures = {"bench": "words", "crops": n_crops, "components": int(reducer.n_components_), "runs": results}
    report(rows, figures)
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=600)
    parser.add_argument("--words", type=int, nargs="+", default=[250, 1000])
    add_record_option(parser)
    args = parser.parse_args(argv)
    with recording("words", args, argv):
        run(args.crops, tuple(args.words))


if __name__ == "__main__":
    main()
