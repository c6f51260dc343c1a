"""The run (``GET /run``): today's run report, the evaluation, the verdict figures and the rejected
files, as report.html has them offline; and ``GET /health`` for a site's monitoring."""

from flask import Blueprint, render_template

from .common import json_answer, snapshot, state

blueprint = Blueprint("run", __name__)

#: Rejected files the page lists at most (the run report has them all).
REJECTED_SHOWN = 500


@blueprint.get("/run")
def page():
    served = snapshot()
    run = served.run
    report = run.report or {}
    return render_template(
        "run.html",
        run=run,
        report=report,
        current=report.get("date") == run.date,
        evaluation=run.evaluation,
        selfcheck=run.selfcheck,
        rejected=report.get("rejected", [])[:REJECTED_SHOWN],
        loaded=served.loaded,
        ledger_problem=state().served.ledger.problem,
    )


@blueprint.get("/run.json")
def report():
    run = snapshot().run
    return json_answer(
        {"date": run.date, "report": run.report, "evaluation": run.evaluation, "selfcheck": run.selfcheck}
    )


@blueprint.get("/health")
def health():
    served = state().served
    if served.snapshot is None:
        return json_answer({"status": "unavailable", "reason": served.problem}, 503)
    run = served.snapshot.run
    return json_answer(
        {
            "status": "ok",
            "date": run.date,
            "images": len(run),
            "similarities": run.digest,
            "loaded": served.snapshot.loaded,
            **({"warning": served.problem} if served.problem else {}),
        }
    )
