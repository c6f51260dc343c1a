"""The previous run's results as an input of the run that replaces them: before the run writes
any, the files the previous run left are linked (hard links, a copy where the storage takes
none) into a folder of the run's own, so that every stage reads the previous night from there,
whatever it has replaced since."""

import contextlib
import glob
import os
import shutil
import tempfile

from .h5io import read_attrs


def keep_previous(artifacts, folder, names, date):
    """Link each file ``names`` under ``artifacts`` that a run before ``date`` made into ``folder``
    (made whole or not at all), and remove the folders of the same name that earlier runs kept.

    Parameters
    ----------
    artifacts : str
        The artifacts folder.
    folder : str
        Where this run keeps them: ``<artifacts>/runs/<date>/previous``.
    names : sequence of str
        The files of a run that the next one reads.
    date : str
        This run's date (ISO): a file made by this run already is not the previous run's.

    Returns
    -------
    kept : list of str
        The names linked.
    """
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.", suffix=".tmp", dir=parent)
    kept = []
    try:
        for name in names:
            path = os.path.join(artifacts, name)
            if not os.path.isfile(path) or _made_on(path) == date:
                continue
            try:
                os.link(path, os.path.join(tmp, name))
            except OSError:  # a storage without hard links
                shutil.copy2(path, os.path.join(tmp, name))
            kept.append(name)
        shutil.rmtree(folder, ignore_errors=True)  # what a killed run left of it
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    runs = os.path.dirname(parent)
    for earlier in glob.glob(os.path.join(glob.escape(runs), "*", os.path.basename(folder))):
        if os.path.abspath(earlier) != os.path.abspath(folder):
            shutil.rmtree(earlier, ignore_errors=True)
    return kept


def _made_on(path):
    with contextlib.suppress(OSError):
        return read_attrs(path).get("run_date")
    return None  # unreadable: the stage that reads it says so
