"""The soak simulation (``benchmarks.soak``): nights of a site under random faults, every invariant
checked after each. Every seed that found a defect stays here, with the faults it drew from:

- seed 0 of the first five faults, night 4: codebook.h5 damaged after the collection had grown;
  the codebook fitted again had other words under the lost one's identity, and the last night's
  histograms were reused with it (the reducer is now refitted with a lost codebook);
- seed 0 of the first seven faults, night 10: a full disk as inventory.h5 was written; HDF5 crashed the
  process (SIGSEGV) instead of the stage failing with exit 30 (every artifact is now made in
  memory and written out with plain writes, ``pipeline.h5io.create``).
"""

import pytest

from benchmarks import soak


@pytest.mark.parametrize("faults", [soak.FAULTS[:5], soak.FAULTS[:7]], ids=["first five faults", "first seven"])
def test_ten_nights_of_seed_0_keep_every_invariant(faults):
    figures = soak.run(10, seed=0, faults=faults)  # raises Violation naming the seed and night
    assert figures["violations"] == [] and figures["nights"] == 10
    assert sum(figures["faults"].values()) >= 3 and figures["failed_runs_by_exit"]


@pytest.mark.slow
def test_fifty_nights_of_another_seed_keep_every_invariant():
    figures = soak.run(50, seed=1)
    assert figures["violations"] == [] and figures["nights"] == 50
    assert set(figures["faults"]) | set(figures["not_drawn"]) == set(soak.FAULTS)


def test_a_broken_invariant_is_reported_with_its_seed_and_night(monkeypatch):
    def lost(*args):
        raise soak.Violation("the CMS's lists differ from similarities.hdf5")

    monkeypatch.setattr(soak, "check_night", lost)
    with pytest.raises(soak.Violation, match=r"seed 3, night 1 \(2027-01-01\): the CMS's lists differ"):
        soak.run(2, seed=3)
    figures = soak.run(2, seed=3, stop_at_first=False)
    assert figures["violations"] == ["seed 3, night 1 (2027-01-01): the CMS's lists differ from similarities.hdf5"]
