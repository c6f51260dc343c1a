"""The soak simulation (``benchmarks.soak``): nights of a site under random faults, every invariant
checked after each. A seed that found a defect stays here: seed 0's fourth night damaged
codebook.h5 after the collection had grown, and the codebook fitted again had other words under
the old identity, so the histograms of the last night were reused with it."""

import pytest

from benchmarks import soak


def test_ten_nights_of_one_seed_keep_every_invariant():
    figures = soak.run(10, seed=0)  # raises Violation naming the seed and night
    assert figures["violations"] == [] and figures["nights"] == 10
    assert sum(figures["faults"].values()) >= 4 and figures["failed_runs_by_exit"]
    assert figures["runs"] > 10  # the failed runs, and the nights after them


@pytest.mark.slow
def test_fifty_nights_of_another_seed_keep_every_invariant():
    figures = soak.run(50, seed=1)
    assert figures["violations"] == [] and figures["nights"] == 50
    assert set(figures["faults"]) == set(soak.FAULTS)


def test_a_broken_invariant_is_reported_with_its_seed_and_night(monkeypatch):
    def lost(site, runner, date, scratch):
        raise soak.Violation("the CMS's lists differ from similarities.hdf5")

    monkeypatch.setattr(soak, "check_night", lost)
    with pytest.raises(soak.Violation, match=r"seed 3, night 1 \(2027-01-01\): the CMS's lists differ"):
        soak.run(2, seed=3)
    figures = soak.run(2, seed=3, stop_at_first=False)
    assert figures["violations"] == ["seed 3, night 1 (2027-01-01): the CMS's lists differ from similarities.hdf5"]
