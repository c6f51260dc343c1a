"""Run every benchmark at a size that finishes in a few minutes on 2 cores, then one summary table."""

import json

from . import cms, extract, firstnight, neighbours, nightly, reduce, scale, soak


def main():
    results = []
    for name, bench in (
        ("extract", extract.run),
        ("firstnight", lambda: firstnight.run(images=20_000)),
        ("reduce", reduce.run),
        ("neighbours", neighbours.run),
        ("scale", scale.run),
        ("cms", cms.run),
        ("nightly", lambda: nightly.run(images=20_000, added=200, changed=20, removed=20)),
        ("soak", lambda: soak.run(nights=20, stop_at_first=False)),
    ):
        print(f"\n== {name} ==")
        results.append(bench())
    print("\n== summary ==")
    for figures in results:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
