"""The run report: what one nightly run did, as JSON."""

import json
import os

from .h5io import atomic_path


def stage_summary(attrs, date):
    """(seconds, ran) of a stage from its artifact's attributes: 0 s for an artifact of an earlier run."""
    ran = attrs.get("run_date") == date
    return (float(attrs.get("seconds", 0.0)) if ran else 0.0), ran


def write_json(path, document):
    """Write a JSON document atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=2, ensure_ascii=False)
            f.write("\n")


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def publish_report(artifacts, date, report):
    """Write ``runs/<date>/run_report.json`` and the latest copy ``run_report.json``."""
    write_json(os.path.join(artifacts, "runs", date, "run_report.json"), report)
    write_json(os.path.join(artifacts, "run_report.json"), report)
