import numpy as np
import pytest
from PIL import Image

from pipeline.selfcheck import ALTERATIONS, PAPER, Copies, alter, write_altered_copies


def picture(width=200, height=100):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "kind, size",
    [
        ("crop", (150, 75)),
        ("rescale", (80, 40)),
        ("rotation", (200, 100)),
        ("greyscale", (200, 100)),
        ("jpeg", (200, 100)),
        ("border", (200 + 2 * 18, 100 + 2 * 18)),
    ],
)
def test_each_alteration_changes_the_image_as_documented(kind, size):
    original = picture()
    copy = alter(original, kind, np.random.default_rng(1))
    assert copy.size == size and copy.mode == "RGB"
    pixels = np.asarray(copy).astype(int)
    if kind == "greyscale":
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    if kind in ("rotation", "border"):
        assert tuple(pixels[0, 0]) == PAPER  # a corner turned in, or the page's margin
    if kind == "jpeg":
        difference = np.abs(pixels - np.asarray(original).astype(int)).mean()
        assert 0 < difference < 80


def test_copies_of_unreadable_sources_are_listed_not_fatal(tmp_path):
    picture().save(tmp_path / "good.png")
    (tmp_path / "bad.jpg").write_text("not an image")
    copies, failed = write_altered_copies([tmp_path / "good.png", tmp_path / "bad.jpg"], tmp_path, seed=3)
    assert [(s, kind) for s, kind, _ in copies] == [(0, kind) for kind in ALTERATIONS]
    assert all(Image.open(path).format == "JPEG" for _, _, path in copies)
    assert failed == {1: "not a recognised image format"}


def test_the_same_seed_makes_the_same_copies(tmp_path):
    picture().save(tmp_path / "a.png")
    made = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        made.append(write_altered_copies([tmp_path / "a.png"], tmp_path / name, seed=5)[0])
    for (_, _, a), (_, _, b) in zip(*made):
        assert open(a, "rb").read() == open(b, "rb").read()


def test_hit_rates_are_counted_per_copy_and_per_alteration(tmp_path):
    sources = []
    for i in range(4):
        picture(40 + i, 30).save(tmp_path / f"{i}.png")
        sources.append(tmp_path / f"{i}.png")
    (tmp_path / "copies").mkdir()
    copies = Copies(sources, tmp_path / "copies", sample=3, seed=0)
    assert len(copies.chosen) == 3 and len(copies.paths) == 3 * len(ALTERATIONS)
    # every copy decoded but the first; crop copies find their original first, rotation copies
    # second, every other copy not at all (another image, 9, stands in its place)
    decoded = list(range(1, len(copies.paths)))
    found = []
    for c in decoded:
        original = copies.originals[c]
        if copies.kinds[c] == "crop":
            found.append([original, 9, 9])
        elif copies.kinds[c] == "rotation":
            found.append([9, original, 9])
        else:
            found.append([9, 9, 9])
    ids = np.arange(100, 110)
    result = copies.score(np.array(found), decoded, {0: "truncated"}, ids)
    crop_queries = sum(1 for c in decoded if copies.kinds[c] == "crop")
    assert result["images"] == 3 and result["queries"] == len(decoded)
    assert result["top1"] == round(crop_queries / len(decoded), 4)
    assert result["top5"] == round((crop_queries + 3) / len(decoded), 4)
    assert result["per_alteration"]["rotation"] == {"queries": 3, "top1": 0.0, "top5": 1.0}
    assert result["per_alteration"]["crop"] == {"queries": crop_queries, "top1": 1.0, "top5": 1.0}
    assert result["per_alteration"]["greyscale"] == {"queries": 3, "top1": 0.0, "top5": 0.0}
    assert result["chance_top1"] == 0.25 and result["chance_top5"] == 0.75  # k = 3 of 4 images
    assert result["failed"] == {str(ids[copies.originals[0]]): f"{copies.kinds[0]} copy: truncated"}
