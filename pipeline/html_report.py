"""The visual report: one self-contained HTML page a curator reads to check a night's results."""

import base64
import html
import io

import numpy as np
from PIL import Image

from .copies import spanning as copies_spanning
from .decoders import DecoderPool
from .errors import ConfigError, ImageError
from .h5io import atomic_path
from .images import DECODE_ERRORS, DECODE_TIMEOUT, MAX_PIXELS, Decoded, reason_of, reduced_copy

#: Side of the thumbnails beside each sampled image, and of those on the map, in pixels.
THUMBNAIL, MAP_THUMBNAIL = 112, 40
#: Side of a cell of the map's grid: a thumbnail and a margin.
MAP_CELL = MAP_THUMBNAIL + 4


def thumbnail_pixels(path, size=THUMBNAIL, max_pixels=MAX_PIXELS):
    """The image at ``path`` fitted into size x size, decoded as for the model (the reduced copy
    of :func:`pipeline.images.reduced_copy`): a Decoded of pixels of shape (h, w, 3), uint8.
    Run by the decoder processes, so that a thumbnail is as time-bounded as the extraction."""
    try:
        image, decoder = reduced_copy(path, size, max_pixels)
    except DECODE_ERRORS as exc:
        raise ImageError(reason_of(exc, path)) from None
    image.thumbnail((size, size))
    return Decoded(np.asarray(image, dtype=np.uint8), decoder)


def make_thumbnails(paths, rows_by_side, processes=None, timeout=DECODE_TIMEOUT, max_pixels=MAX_PIXELS):
    """JPEG data URIs of the images at ``rows_by_side[side]`` of ``paths``, decoded in a
    :class:`~pipeline.decoders.DecoderPool`: dict of (row, side) to str, or None for a file that
    cannot be shown (changed, unreadable, or past the time limit since its extraction)."""
    found = {}
    for side, rows in rows_by_side.items():
        rows = sorted(set(int(r) for r in rows))
        with DecoderPool(processes, timeout, max_pixels, decode=thumbnail_pixels, size=side) as pool:
            for row, pixels in zip(rows, pool.imap([paths[r] for r in rows])):
                found[row, side] = None if isinstance(pixels, ImageError) else _data_uri(pixels.pixels)
    return found


def _data_uri(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def map_rows(n, map_sample=400, seed=0):
    """The rows placed on the map: a seeded sample of at most ``map_sample`` of n, increasing."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(map_sample, n), replace=False))


def map_layout(data, rows, seed=0):
    """Grid cells for the images at ``rows``, where images close in the run's own distances lie
    close, one image per cell so that no thumbnail hides another.

    t-SNE (scikit-learn) on the distances the neighbours were found with, then each image moved
    to a cell of a near-square grid by an optimal assignment of images to cells (the least total
    squared displacement), as PixPlot snaps its layouts to a grid.

    Parameters
    ----------
    data : pipeline.weighting.WeightedHistograms
        The weighted histograms and metric the run's neighbours were found with.
    rows : ndarray of int
        Positions of the images placed.

    Returns
    -------
    cells : ndarray of shape (len(rows), 2), int
        Column and row of each image's cell.
    shape : (int, int)
        Columns and rows of the grid.
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.manifold import TSNE

    rows = np.asarray(rows)
    n = len(rows)
    columns = max(1, int(np.ceil(np.sqrt(n))))
    shape = (columns, max(1, int(np.ceil(n / columns))))
    if n < 5:  # too few for t-SNE: in their order
        return np.stack([np.arange(n) % columns, np.arange(n) // columns], axis=1), shape
    dots = (data.vectors[rows] @ data.vectors[rows].T).toarray()
    distances = data.distances(data.keys(dots, data.norms[rows][:, None], rows))
    np.fill_diagonal(distances, 0.0)
    xy = TSNE(
        n_components=2, metric="precomputed", init="random", perplexity=min(30.0, (n - 1) / 3), random_state=seed
    ).fit_transform(distances)
    low, high = xy.min(axis=0), xy.max(axis=0)
    xy = (xy - low) / np.where(high > low, high - low, 1.0) * (np.array(shape) - 1)
    grid = np.stack(np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij"), axis=-1).reshape(-1, 2)
    cost = ((xy[:, None, :] - grid[None, :, :]) ** 2).sum(axis=-1)
    placed, cell = linear_sum_assignment(cost)
    cells = np.empty((n, 2), dtype=np.int64)
    cells[placed] = grid[cell]
    return cells, shape


def neighbours_beside(cells, rows, neighbour_rows):
    """Share of the placed images with one of their neighbours next to them on the map (in one of
    the four cells at distance one: an image's nearest on the map), among those with at least one
    neighbour placed.

    Parameters
    ----------
    cells : ndarray of shape (m, 2)
        :func:`map_layout` of ``rows``.
    rows : ndarray of shape (m,)
    neighbour_rows : ndarray of shape (m, k)
        The neighbours of the images at ``rows``, as positions.
    """
    at = {tuple(c): int(r) for c, r in zip(cells.tolist(), np.asarray(rows).tolist())}
    placed = set(at.values())
    beside, counted = 0, 0
    for (x, y), theirs in zip(cells.tolist(), np.asarray(neighbour_rows).tolist()):
        wanted = set(theirs) & placed
        if not wanted:
            continue
        counted += 1
        around = {at.get(c) for c in ((x - 1, y), (x + 1, y), (x, y - 1), (x, y + 1))}
        beside += bool(around & wanted)
    return beside / counted if counted else 0.0


def _bars(title, labels, values, unit="", width=560, bar=18):
    """An inline SVG horizontal bar chart."""
    values = [float(v) for v in values]
    top = max(values) if values and max(values) > 0 else 1.0
    rows = []
    for i, (label, value) in enumerate(zip(labels, values)):
        y = 24 + i * (bar + 4)
        length = (width - 220) * value / top
        rows.append(
            f'<text x="150" y="{y + bar - 5}" text-anchor="end">{html.escape(str(label))}</text>'
            f'<rect x="156" y="{y}" width="{length:.1f}" height="{bar}" fill="#4a78a8"></rect>'
            f'<text x="{160 + length:.1f}" y="{y + bar - 5}">{value:,.4g}{unit}</text>'
        )
    height = 30 + len(values) * (bar + 4)
    return (
        f'<figure class="plot"><svg role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f'<text x="4" y="14" class="title">{html.escape(title)}</text>{"".join(rows)}</svg></figure>'
    )


def _histogram_bars(title, values, bins=12, unit=""):
    """Bars of how many values fall in each of ``bins`` equal ranges."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return _bars(title, [], [])
    counts, edges = np.histogram(values, bins=bins)
    labels = [f"{edges[i]:.3g} - {edges[i + 1]:.3g}{unit}" for i in range(len(counts))]
    return _bars(title, labels, counts)


def _figure(image, caption):
    if image is None:
        return (
            f'<figure class="missing"><div class="nothumb">no preview</div><figcaption>{caption}</figcaption></figure>'
        )
    return f'<figure><img src="{image}" alt=""><figcaption>{caption}</figcaption></figure>'


#: Groups of copies spanning several records the report shows (new ones first, then the largest).
SHOWN_GROUPS = 20


def shown_groups(rows, new_groups, row_of, shown=SHOWN_GROUPS):
    """The groups of copies (copies.csv's rows) the report shows: those spanning several records,
    the new ones first, then the largest; as (number, new, positions)."""
    spanning = copies_spanning(rows)
    new = set(new_groups)
    order = sorted(spanning, key=lambda g: (g not in new, -len(spanning[g]), g))[:shown]
    return [(g, g in new, [row_of[str(i)] for i in spanning[g]["image_id"]]) for g in order]


def _copies_section(copies, thumb, name):
    if copies is None:
        return ""
    groups, attrs = copies
    intro = (
        f"<p>{attrs['groups']:,} groups of copies ({attrs['images']:,} images) within distance "
        f"{attrs['threshold']:.4g} ({html.escape(str(attrs['threshold_source']))}): {attrs['spanning_records']:,} "
        f"span several records, {attrs['new']:,} are new tonight. The list: <code>copies.csv</code>.</p>"
    )
    blocks = []
    for number, new, members in groups:
        label = f"<b>group {number}</b>" + (' <span class="right">new</span>' if new else "")
        cells = [f'<div class="nothumb" style="height:auto">{label}</div>']
        cells += [_figure(thumb(m), name(m)) for m in members]
        blocks.append(f'<div class="query copies" data-group="{number}">{"".join(cells)}</div>')
    return '<h2 id="copies">Copies across records</h2>' + intro + "".join(blocks)


def render(
    run, result, counts, data, chosen, thumbnails, map_sample=400, seed=0, evaluation=None, recent=(), copies=None
):
    """The report page as a string.

    Parameters
    ----------
    run : dict
        The run report (``run_report.json``).
    result : dict
        ``similarities.hdf5`` as read by :func:`pipeline.output.read_similarities`.
    counts : csr_matrix of shape (n_images, K)
        The histograms, in the order of ``result["ids"]``.
    data : pipeline.weighting.WeightedHistograms
        The same, weighted as the run's neighbours were found (:func:`pipeline.query.run_counts`):
        the map places images by those distances, and the similarities are shown beside them.
    chosen : sequence of int
        Rows shown with their neighbours.
    thumbnails : dict of (int, int) to str or None
        :func:`make_thumbnails` of the chosen rows and their neighbours (side THUMBNAIL) and
        of the :func:`map_rows` (side MAP_THUMBNAIL).
    map_sample : int
        Most images placed on the map (a seeded sample of a larger collection).
    evaluation : dict, optional
        evaluation.json: the scores of :func:`pipeline.evaluation.evaluate`, shown as a table.
    recent : sequence of dict
        The latest verdicts (:func:`recent_verdicts`), shown with their thumbnails.
    copies : (list, dict), optional
        The groups of copies shown (:func:`shown_groups`) and copies.h5's attributes.
    """
    ids, neighbours, distances = result["ids"], result["neighbours"], result["distances"]
    row_of = {str(i): r for r, i in enumerate(ids)}

    def thumb(row, side=THUMBNAIL):
        return thumbnails.get((row, side))

    def name(row):
        return f"{html.escape(str(ids[row]))}<br><small>{html.escape(result['ppn'][row])}/{html.escape(result['filename'][row])}</small>"

    similarity = data.similarity(distances)
    honoured = result.get("verdicts")
    judged_right = set()
    if honoured is not None:
        judged_right = {
            frozenset((str(a), str(b)))
            for a, b in zip(
                honoured.image_id[honoured.right].tolist(), honoured.similar_image_id[honoured.right].tolist()
            )
        }
    sections = []
    for row in chosen:
        cells = [_figure(thumb(row), f"<b>{name(row)}</b>")]
        for rank, other in enumerate(neighbours[row]):
            o = row_of[str(other)]
            caption = f"{rank + 1}. {name(o)}<br>distance {distances[row][rank]:.4f}, similarity {similarity[row][rank]:.1f} %"
            if frozenset((str(ids[row]), str(other))) in judged_right:
                caption += '<br><span class="right">judged right</span>'
            cells.append(_figure(thumb(o), caption))
        sections.append(f'<div class="query" data-id="{html.escape(str(ids[row]))}">{"".join(cells)}</div>')

    on_map = map_rows(len(ids), map_sample, seed)
    cells, (columns, lines) = map_layout(data, on_map, seed)
    beside = neighbours_beside(cells, on_map, [[row_of[str(o)] for o in neighbours[r]] for r in on_map])
    placed = []
    for (x, y), row in zip(cells.tolist(), on_map):
        image = thumb(int(row), MAP_THUMBNAIL)
        title = html.escape(f"{ids[row]} {result['ppn'][row]}/{result['filename'][row]}")
        style = f"left:{x * MAP_CELL}px;top:{y * MAP_CELL}px"
        body = f'<img src="{image}" alt="">' if image else ""
        placed.append(
            f'<div class="dot" style="{style}" title="{title}" data-id="{html.escape(str(ids[row]))}">{body}</div>'
        )

    words = np.sort(np.bincount(counts.indices, weights=counts.data, minlength=counts.shape[1]))[::-1]
    share = words / max(words.sum(), 1)
    ranks = [r for r in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if r <= len(share)]
    per_ppn = np.unique(np.asarray(result["ppn"]), return_counts=True)[1]
    stage_seconds = run.get("stage_seconds", {})
    plots = [
        _histogram_bars("Distance to the first neighbour (images per range)", distances[:, 0]),
        _histogram_bars(f"Distance to the {neighbours.shape[1]}th neighbour (images per range)", distances[:, -1]),
        _bars(
            "Visual-word usage: share of all descriptors of the r-th most used word",
            [f"r = {r}" for r in ranks],
            [100 * share[r - 1] for r in ranks],
            unit=" %",
        ),
        _histogram_bars("Images per PPN (PPNs per range)", per_ppn, bins=min(10, max(1, len(set(per_ppn))))),
        _bars("Stage timings of this run", list(stage_seconds), list(stage_seconds.values()), unit=" s"),
    ]

    rejected = run.get("rejected", [])
    rejected_rows = "".join(
        f"<tr><td>{html.escape(r['path'])}</td><td>{html.escape(r['reason'])}</td></tr>" for r in rejected
    )
    note = result["attrs"].get("weights_note", "")
    note = f"These results were {note}." if note else ""
    summary = (
        f"<p>Run of {html.escape(str(run.get('date')))}: status <b>{html.escape(str(run.get('status')))}</b>; "
        f"{len(ids):,} images with neighbours, {run.get('extracted', 0):,} extracted this run, "
        f"{len(rejected):,} rejected. Result: <code>{html.escape(str(run.get('similarities', '')))}</code>.</p>"
    )
    share = run.get("neighbours", {}).get("own_record_share")
    if share is not None:
        same_record = html.escape(str(run["neighbours"].get("same_record", "keep")))
        summary += (
            f"<p>{100 * share:.1f} % of the neighbours are of the image's own record "
            f"(<code>same_record = {same_record}</code>).</p>"
        )
    if note:
        summary += f'<p class="warning">{html.escape(note)}</p>'
    quality = ""
    if evaluation and "queries" in evaluation:
        keys = ("queries", "precision_at_1", "precision_at_5", "recall_at_5", "map")
        rows = [("all labels", evaluation), *evaluation["per_label"].items()]
        quality = '<h2 id="quality">Quality against the labels</h2>' + _table(
            "quality",
            ["", *(k.replace("_at_", "@").replace("_", " ") for k in keys)],
            [[name, *(f"{scores[k]:.4g}" for k in keys)] for name, scores in rows],
        )
    check = run.get("selfcheck")
    if check:
        rows = [("all alterations", check), *check["per_alteration"].items()]
        quality += (
            f'<h2 id="selfcheck">Self-check</h2><p>Altered copies of {check["images"]:,} sampled images, queried '
            "against the collection: how often the original is the first neighbour, and within the first five "
            f"(by chance: {100 * check['chance_top1']:.2f} % and {100 * check['chance_top5']:.2f} %).</p>"
        ) + _table(
            "selfcheck",
            ["alteration", "copies", "original first", "within 5"],
            [[name, r["queries"], f"{100 * r['top1']:.1f} %", f"{100 * r['top5']:.1f} %"] for name, r in rows],
        )
    if "verdicts" in run:
        quality += _verdicts_section(run["verdicts"], recent, row_of, thumb, name)
    quality += _copies_section(copies, thumb, name)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Similar images: run of {html.escape(str(run.get("date")))}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
h2 {{ margin-top: 2em; border-bottom: 1px solid #ccc; }}
.query {{ display: flex; gap: 10px; margin: 12px 0; padding: 8px; background: #f6f6f6; }}
figure {{ margin: 0; width: {THUMBNAIL + 8}px; font-size: 11px; }}
figure img, .nothumb {{ width: {THUMBNAIL}px; height: {THUMBNAIL}px; object-fit: contain; background: #ddd; display: block; }}
.plot {{ width: auto; }} .plot text {{ font-size: 11px; }} .plot .title {{ font-size: 13px; font-weight: bold; }}
#map {{ position: relative; background: #fafafa; border: 1px solid #ccc; }}
.dot {{ position: absolute; width: {MAP_THUMBNAIL}px; height: {MAP_THUMBNAIL}px; }}
.dot img {{ width: 100%; height: 100%; object-fit: cover; }}
.warning {{ color: #a33; }} .right {{ color: #275; }} .wrong {{ color: #a33; }} table {{ border-collapse: collapse; }} td {{ border: 1px solid #ccc; padding: 2px 6px; }}
</style></head><body>
<h1>Similar images</h1>
{summary}
{quality}
<h2 id="neighbours">Sampled images and their neighbours</h2>
{"".join(sections)}
<h2 id="plots">Plots</h2>
{"".join(plots)}
<h2 id="map-title">Map of the collection</h2>
<p>{len(on_map):,} images{" (a sample)" if len(on_map) < len(ids) else ""} laid out by t-SNE on the distances their
neighbours were found with, one per cell: similar images lie close together. {100 * beside:.0f} % of them have one of
their {neighbours.shape[1]} neighbours next to them.</p>
<div id="map" style="width:{columns * MAP_CELL}px;height:{lines * MAP_CELL}px">{"".join(placed)}</div>
<h2 id="rejected">Rejected files ({len(rejected):,})</h2>
<table class="rejected"><tr><th>file</th><th>reason</th></tr>{rejected_rows}</table>
</body></html>
"""


def _verdicts_section(found, recent, row_of, thumb, name):
    """The curators' verdicts: what the night honoured, the raw lists' figures by day of judging,
    the latest pairs judged, and the rows left out."""

    def share(value):
        return "" if value is None else f"{100 * value:.1f} %"

    scores = found.get("scores")
    if not found["honoured"] and not found["bad"]:
        return (
            '<h2 id="verdicts">Curators\' verdicts</h2><p>No verdicts yet. A pair judged with '
            "<code>similar-images-verdict ID ID wrong</code> (or <code>right</code>) is honoured from the next night "
            f"on; they are kept in {html.escape(found['source'])}.</p>"
        )
    head = (
        f'<h2 id="verdicts">Curators\' verdicts</h2><p>{found["honoured"]:,} pairs honoured from '
        f"{html.escape(found['source'])} ({found['wrong']:,} judged wrong, {found['right']:,} right): the lists of "
        f"<b>{found['lists_changed']:,}</b> images differ from their raw lists because of them. "
        f"{len(found['bad']):,} rows left out.</p>"
    )
    if scores:
        rows = [("all days", scores), *scores["per_day"].items()]
        head += (
            "<p>The raw lists (the nearest images, before the verdicts) against the verdicts, by day of judging: "
            "the share of the pairs judged right that the raw lists hold, and the share of the raw lists' judged "
            "entries judged right.</p>"
        ) + _table(
            "verdicts",
            ["judged on", "pairs", "wrong", "right", "right pairs found", "judged entries", "judged right"],
            [
                [
                    day,
                    r["pairs"],
                    r["wrong"],
                    r["right"],
                    share(r["right_found"]),
                    r["judged_in_lists"],
                    share(r["judged_right"]),
                ]
                for day, r in rows
            ],
        )
    pairs = []
    for v in recent:
        a, b = row_of.get(str(v["image_id"])), row_of.get(str(v["similar_image_id"]))
        if a is None or b is None:
            continue
        caption = f'<span class="{v["verdict"]}">{v["verdict"]}</span> {html.escape(v["time"][:16])}'
        if v["author"]:
            caption += f"<br>{html.escape(v['author'])}"
        pairs.append(
            f'<div class="query">{_figure(thumb(a), name(a))}{_figure(thumb(b), name(b))}'
            f'<p class="verdict">{caption}</p></div>'
        )
    if pairs:
        head += f"<h3>Recently judged pairs</h3>{''.join(pairs)}"
    if found["bad"]:
        more = f" (the first 100 of {len(found['bad']):,})" if len(found["bad"]) > 100 else ""
        head += f"<h3>Verdict rows left out{more}</h3>" + _table(
            "bad-verdicts", ["row", "reason"], [[b["row"], b["reason"]] for b in found["bad"][:100]]
        )
    return head


def _table(css_class, headings, rows):
    """An HTML table of text cells (escaped here)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headings)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css_class}"><tr>{head}</tr>{body}</table>'


def recent_verdicts(verdicts, n=6):
    """The ``n`` latest of :class:`pipeline.verdicts.Verdicts`, latest first, as dicts."""
    order = np.argsort(verdicts.time, kind="stable")[::-1][:n]
    return [
        {
            "image_id": verdicts.image_id[i].item(),
            "similar_image_id": verdicts.similar_image_id[i].item(),
            "verdict": "right" if verdicts.right[i] else "wrong",
            "time": str(verdicts.time[i]),
            "author": str(verdicts.author[i]),
        }
        for i in order
    ]


def write_report(
    path,
    run,
    result,
    counts,
    data,
    paths,
    sample=12,
    named=(),
    seed=0,
    evaluation=None,
    recent=(),
    copies=None,
    **decoding,
):
    """Write the report page to ``path`` atomically: ``sample`` images chosen at random (seeded)
    after those of the IDs ``named``, each beside its neighbours; see :func:`render`.

    ``paths`` are the image files of the rows of ``result``; ``copies`` the night's groups of
    copies (:class:`pipeline.copies.Numbered`) and copies.h5's attributes, when the run made
    them; ``decoding`` holds the decoder pool's settings (``processes``, ``timeout``,
    ``max_pixels``) for the thumbnails.
    """
    rows = choose_rows(result["ids"], sample, named, seed)
    row_of = {str(i): r for r, i in enumerate(result["ids"])}
    beside = [row_of[str(i)] for r in rows for i in result["neighbours"][r]]
    judged = [row_of[str(v[key])] for v in recent for key in ("image_id", "similar_image_id") if str(v[key]) in row_of]
    groups = None
    if copies is not None:
        numbered, attrs = copies
        groups = (shown_groups(numbered.rows, numbered.new_groups, row_of), attrs)
    grouped = [m for _, _, members in (groups[0] if groups else []) for m in members]
    needed = {THUMBNAIL: [*rows, *beside, *judged, *grouped], MAP_THUMBNAIL: map_rows(len(result["ids"]), seed=seed)}
    thumbnails = make_thumbnails(paths, needed, **decoding)
    page = render(
        run, result, counts, data, rows, thumbnails, seed=seed, evaluation=evaluation, recent=recent, copies=groups
    )
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(page)


def choose_rows(ids, sample, named=(), seed=0):
    """Rows to show: those of the IDs ``named`` (in that order), then a seeded sample of ``sample`` others.

    Raises
    ------
    ConfigError
        Naming an ID that has no neighbours in this run.
    """
    row_of = {str(i): r for r, i in enumerate(ids)}
    unknown = [str(i) for i in named if str(i) not in row_of]
    if unknown:
        raise ConfigError(f"--show: no image of this run has the ID(s) {', '.join(unknown[:10])}")
    rows = [row_of[str(i)] for i in named]
    rest = np.setdiff1d(np.arange(len(ids)), rows)
    rng = np.random.default_rng(seed)
    picked = rng.choice(rest, size=min(sample, len(rest)), replace=False) if len(rest) else []
    return rows + sorted(int(r) for r in picked)
