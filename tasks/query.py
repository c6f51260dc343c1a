"""``python -m tasks.query FILE [FILE ...] [-k 5] [--json]``: the collection's most similar images
of image files, which need not be in the collection, from the last run's artifacts. For a file of
the collection, a neighbour whose pair with it has a curator's verdict is marked.

Exit status: 0 when every file was queried, 1 when some could not be read (each named with
the reason), 2 when nothing could be queried (no finished run, a bad argument).
"""

import argparse
import contextlib
import json
import logging
import sys

from pipeline.errors import PipelineError
from pipeline.features import extract

from . import config
from .checks import query_extractor
from .evaluation import latest_index


class Querier:
    """The last run's index (:func:`~tasks.evaluation.latest_index`) and its model, kept between
    queries: the model is built at the first query of a file and its decoder processes stay up
    until :meth:`close`. The command makes one per call; the web app keeps one."""

    def __init__(self, index=None, batch_size=None):
        self.index = index if index is not None else latest_index()
        self.batch_size = batch_size
        """Images per forward pass (default ``[resnet] batch_size``): 1 for one file at a time."""
        self._extractor = None

    def close(self):
        if self._extractor is not None:
            self._extractor.close()
            self._extractor = None

    def query(self, files, k=5):
        """One dict per file: ``query`` (the path) and ``neighbours`` (see SimilarityIndex.describe),
        or ``query`` and ``error`` (one line) for a file that could not be read."""
        index = self.index
        if not 1 <= k <= len(index.images):
            raise PipelineError(
                f"-k {k} must be between 1 and the number of images in the collection = {len(index.images)}"
            )
        if self._extractor is None:
            self._extractor = query_extractor(index.spec, index.store, self.batch_size)
        descriptors, decoded, errors = extract(self._extractor, files)
        results = [{"query": path, "error": errors.get(i, "")} for i, path in enumerate(files)]
        if decoded:
            selves = index.positions_of([files[i] for i in decoded], config.paths().content)
            described = index.describe(*index.query(descriptors, k=k), selves=selves)
            for position, neighbours in zip(decoded, described):
                results[position] = {"query": files[position], "neighbours": neighbours}
        return results


def query(files, k=5):
    """:meth:`Querier.query` of the last run, its model built for this call."""
    with contextlib.closing(Querier()) as querier:
        return querier.query(files, k)


def as_text(results):
    lines = []
    for result in results:
        lines.append(result["query"])
        if "error" in result:
            lines.append(f"  cannot be read: {result['error']}")
            continue
        lines.append(
            f"  {'rank':>4}  {'id':<12} {'ppn':<16} {'filename':<24} {'distance':>9} {'similarity':>10}  verdict"
        )
        for n in result["neighbours"]:
            lines.append(
                f"  {n['rank']:>4}  {str(n['id']):<12} {n['ppn']:<16} {n['filename']:<24} {n['distance']:>9.4f} "
                f"{n['similarity']:>8.1f} %  {n.get('verdict', '')}".rstrip()
            )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("files", nargs="+", help="image files to query")
    parser.add_argument("-k", type=int, default=5, help="neighbours per file (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        results = query(args.files, k=args.k)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=2) if args.json else as_text(results))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
