"""The run's first stages: the settings checked, and the inventory of the images both on disk and in the ID mapping."""

import datetime
import logging
import os

from pipeline import collection
from pipeline.codebook import check_size
from pipeline.model import layer_side
from pipeline.neighbours import check_k
from pipeline.records import check_records

from . import config, inputs
from .base import ArtifactTask, CheckSettings

logger = logging.getLogger("luigi-interface")


class Inventory(ArtifactTask):
    """The images both on disk and in the ID mapping, taken once per run date."""

    filename = "inventory.h5"
    observed = True  # its identity is that of the images it found
    sections = ("ids", "collection", "neighbours", "codebook", "resnet")

    def requires(self):
        # the paths as parameters, so a missing input is named in Luigi's summary
        mapping = (
            inputs.IdMapping(date=self.date, path=config.ids().csv)
            if config.ids().source == "csv"
            else inputs.CmsImages(date=self.date)
        )
        return {
            "settings": CheckSettings(date=self.date),
            "content": inputs.ContentFolder(date=self.date, path=config.paths().content),
            "on_disk": inputs.CollectionOnDisk(date=self.date),
            "mapping": mapping,
            "previous": inputs.LastRun(date=self.date),
        }

    def settings(self):
        settings = {
            "date": self.date.isoformat(),
            "content": os.path.abspath(config.paths().content),
            "fingerprint": config.collection().fingerprint,
            "source": config.ids().source,
        }
        if config.ids().source == "cms":  # read again on every run date
            c = config.cms()
            columns = (c.images_table, c.id_column, c.ppn_column, c.filename_column, c.ids_query, c.record_column)
            return {**settings, "cms": [c.url, *columns]}
        try:
            csv = os.stat(config.ids().csv)
            csv_fingerprint = [csv.st_size, csv.st_mtime_ns]
        except OSError:  # IdMapping reports the missing file
            csv_fingerprint = None
        return {**settings, "csv": os.path.abspath(config.ids().csv), "csv_fingerprint": csv_fingerprint}

    def make(self, tmp):
        mapping, source = inputs.read_id_mapping()
        inventory = collection.take_inventory(config.paths().content, mapping, source, config.collection().fingerprint)
        # the settings that depend on the collection's size, before any image is extracted
        lists = config.neighbour_settings()
        check_k(lists.k, len(inventory))
        check_records(inventory.records, lists.k, lists.own, lists.same_record)
        n_local = layer_side(config.resnet().layer) ** 2
        check_size(config.codebook().size, len(inventory), n_local, config.codebook().sample_size)
        self.found = inventory.fingerprint()
        # the previous run's images: from its inventory, or its features index when that is damaged
        previous = inputs.previous_images([inputs.previous(self, name) for name in inputs.PREVIOUS], self.date)
        c = config.collection()
        removed = []
        if previous is not None:  # the guard, unless a run is told to allow removals
            limit = 1.0 if c.allow_removals else c.max_removed
            removed = collection.check_removal_from_mapping(previous, inventory, source, limit)
        started = datetime.datetime.fromtimestamp(self._started, datetime.UTC).isoformat(timespec="seconds")
        collection.save_inventory(
            tmp, inventory, self.attrs(images_total=len(inventory), removed=len(removed), started=started)
        )
