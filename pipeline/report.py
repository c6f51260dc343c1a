"""The run report: what one nightly run did, as JSON."""

import datetime
import json
import os

from .h5io import atomic_path
from .verdicts import bad_reasons

#: The stages whose work is done by shards, and their shards' task.
SHARDED = {"Features": "FeatureShard", "Histograms": "HistogramShard", "Similarities": "NeighbourShard"}


def stage_summary(attrs, date):
    """(seconds, ran) of a stage from its artifact's attributes: 0 s for an artifact of an earlier run."""
    ran = attrs.get("run_date") == date
    return (float(attrs.get("seconds", 0.0)) if ran else 0.0), ran


def now():
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def run_report(
    date,
    artifacts,
    inventory,
    index,
    similarities,
    load=None,
    evaluation=None,
    selfcheck=None,
    bad_verdicts=None,
    copies=None,
    views=None,
):
    """The report of a finished run.

    Parameters
    ----------
    date : str
        The run's date, ISO.
    artifacts : dict of str to dict
        The attributes of each stage's artifact (Inventory, Features, Reducer, Codebook,
        Histograms, Verdicts, Similarities): what they record of the run that made them.
    inventory : pipeline.collection.Inventory
    index : pipeline.store.FeatureIndex
    similarities : str
        Where similarities.hdf5 is.
    load : dict, optional
        The CMS load's url (shown without password), mode and target, when the run loads one.
    evaluation, selfcheck : dict, optional
        evaluation.json and selfcheck.json, when the run made them.
    bad_verdicts : list of pipeline.verdicts.BadRow, optional
        The verdict rows left out and why, when the run reads verdicts.
    copies : dict, optional
        The attributes of copies.h5, when the run groups copies.
    views : dict, optional
        What bringing the thumbnails up to date did (:class:`pipeline.thumbnails.ViewsDone`), when the run makes them.
    """
    seconds = {name: stage_summary(attrs, date)[0] for name, attrs in artifacts.items()}
    # the work of the shards of a stage, summed over those this run made (in parallel, they overlap)
    for stage, shard in SHARDED.items():
        seconds[shard] = artifacts[stage].get("shard_seconds", 0.0) if seconds[stage] else 0.0
    extracted = artifacts["Features"]["extracted"] if stage_summary(artifacts["Features"], date)[1] else 0
    report = {
        "date": date,
        "status": "ok",
        "started": artifacts["Inventory"]["started"],
        "finished": now(),
        "images_total": len(inventory),
        "extracted": extracted,
        "reused": len(inventory) - extracted,
        "decoded_by": json.loads(artifacts["Features"].get("decoded_by", "{}")) if extracted else {},
        # what the model computes in, why, and what auto measured (images/s of each candidate)
        "precision": {
            "precision": artifacts["Features"].get("precision"),
            "reason": artifacts["Features"].get("precision_reason"),
            "measured": json.loads(artifacts["Features"].get("precision_rates", "null")),
        },
        "removed": artifacts["Inventory"]["removed"],
        "rejected": [{"path": path, "reason": reason} for path, reason in index.rejected],
        "unmapped": inventory.unmapped,
        "missing": inventory.missing,
        "refit": stage_summary(artifacts["Reducer"], date)[1],
        # damaged artifacts made again by this run, and what that did
        "repaired": [
            attrs["repaired"]
            for attrs in [*artifacts.values(), copies or {}]
            if attrs.get("repaired") and stage_summary(attrs, date)[1]
        ],
        "stage_seconds": seconds,
        "similarities": similarities,
        "images_with_neighbours": len(index),
        "neighbours": {
            **{
                key: artifacts["Similarities"].get(key)
                for key in ("search", "queried", "same_record", "own_record_share")
            },
            **{  # re-ranked lists only
                key: artifacts["Similarities"][key]
                for key in ("rerank_threshold", "verified_pairs", "reranked_lists", "pairs_verified_tonight")
                if key in artifacts["Similarities"]
            },
        },
    }
    if load is not None:
        report["cms"] = {**load, "run_id": artifacts["Similarities"]["digest"], "images": len(index)}
    if evaluation is not None and "queries" in evaluation:
        keys = ("queries", "precision_at_1", "precision_at_5", "recall_at_5", "map")
        report["evaluation"] = {key: evaluation[key] for key in keys}
    if bad_verdicts is not None:
        found, lists = artifacts["Verdicts"], artifacts["Similarities"]
        report["verdicts"] = {
            "source": found["where"],
            **{key: found[key] for key in ("rows", "honoured", "wrong", "right", "superseded")},
            "bad": [{"row": b.row, "reason": b.reason} for b in bad_verdicts],
            "bad_reasons": bad_reasons(bad_verdicts),
            "judged_images": lists.get("judged", 0),
            "lists_changed": lists.get("changed_by_verdicts", 0),
            "judged_searched": lists.get("judged_queried", 0),
        }
        if evaluation is not None and "verdicts" in evaluation:
            report["verdicts"]["scores"] = evaluation["verdicts"]
    if copies is not None:
        keys = (
            "threshold",
            "threshold_source",
            "measure",
            "groups",
            "images",
            "spanning_records",
            "new",
            "crowded",
            "left_out",
            "sets",
            "regrouped",
        )
        report["copies"] = {key: copies[key] for key in keys if key in copies}
    if views is not None:
        report["thumbnails"] = {key: value for key, value in views.items() if key != "run_date"}
        if views.get("repaired") and views.get("run_date") == date:
            report["repaired"].append(views["repaired"])
    if selfcheck is not None:
        keys = ("images", "queries", "top1", "top5", "chance_top1", "chance_top5", "per_alteration", "failed")
        keys += ("verification", "reranked", "by_distance")  # the verification's threshold, the other order's counts
        report["selfcheck"] = {key: selfcheck[key] for key in keys if key in selfcheck}
    return report


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


def summary_line(report, html):
    """The run report ``report`` in one line for the log, naming the visual report ``html``."""
    check = report.get("selfcheck")
    selfcheck = f"; self-check: original first for {100 * check['top1']:.1f}% of altered copies" if check else ""
    return (
        f"run of {report['date']} done: {report['images_total']} images, {report['extracted']} extracted, "
        f"{report['reused']} reused, {len(report['rejected'])} rejected, {report['images_with_neighbours']} with "
        f"neighbours{selfcheck}; similarities: {report['similarities']}; report: {html}"
    )
