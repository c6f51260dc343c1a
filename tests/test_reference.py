"""The generated pages stay in step with their sources: the settings reference with pipeline/settings.py,
the performance page with the benchmarks' records."""

from benchmarks import performance
from tasks import reference


def test_the_settings_reference_is_up_to_date():
    with open(reference.DOC, encoding="utf-8") as f:
        text = f.read()
    assert reference.updated(text, reference.table()) == text, "run python -m tasks.reference"


def test_the_reference_lists_every_setting_with_its_description():
    rows = reference.table().splitlines()[2:]
    assert len(rows) == sum(len(section.names()) for section in reference.SECTIONS)
    assert all(row.count(" | ") == 5 and not row.endswith("|  |") for row in rows)  # a description each
    weights = next(r for r in rows if "`weights`" in r)
    assert "| `imagenet` | `random` | yes |" in weights  # the code's default and the shipped file's value


def test_the_performance_page_shows_the_latest_recorded_figures():
    assert performance.main(["--check"]) == 0, "run python -m benchmarks.performance"
