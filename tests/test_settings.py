"""Each section's dataclass: one constraint table gives the parsing, the validation and the message."""

import dataclasses

import pytest

from pipeline import settings
from pipeline.backends import ModelSpec
from pipeline.errors import ConfigError
from pipeline.records import SameRecord
from pipeline.search import NeighbourSettings
from pipeline.weighting import WeightedHistograms


@pytest.mark.parametrize("section", settings.SECTIONS, ids=lambda s: s.section)
def test_every_key_has_one_constraint_a_description_and_a_default_that_holds(section):
    names = [f.name for f in dataclasses.fields(section)]
    assert names == list(section._parameter_constraints)  # one constraint per key, in the same order
    assert all(f.metadata["doc"].strip() for f in dataclasses.fields(section))
    made = section()  # the shipped values pass their own table
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, names[0], getattr(made, names[0]))


@pytest.mark.parametrize(
    "section, values, made",
    [
        (
            settings.Neighbours,
            {"k": " 7 ", "same-record": "at_most 2"},
            {"k": 7, "same_record": SameRecord("at_most", 2)},
        ),
        (settings.Images, {"trim": "FALSE", "decode_processes": "auto"}, {"trim": False, "decode_processes": 0}),
        (settings.Codebook, {"size": "Auto"}, {"size": "auto"}),
        (settings.Codebook, {"size": "64"}, {"size": 64}),
        (settings.Copies, {"threshold": "0.25"}, {"threshold": 0.25}),
        (settings.Collection, {"allow_removals": True}, {"allow_removals": True}),
    ],
)
def test_luigi_cfg_text_is_read_into_typed_values(section, values, made):
    read = section.from_text(values)
    assert {name: getattr(read, name) for name in made} == made


@pytest.mark.parametrize(
    "section, values, message",
    [
        (settings.Neighbours, {"k": "0"}, "[neighbours] k=0 must be a whole number >= 1"),
        (settings.Neighbours, {"k": "five"}, "[neighbours] k='five' must be a whole number >= 1"),
        (settings.Neighbours, {"power": "nan"}, "[neighbours] power=nan must be a number in (0, 1]"),
        (settings.Resnet, {"precision": "int4"}, "[resnet] precision='int4' must be one of auto, float32"),
        (settings.Resnet, {"decode_threads": "4"}, "[resnet] decode_threads is not a setting; it is now [images]"),
        (settings.Codebook, {"size": "1"}, "[codebook] size=1 must be auto or a whole number >= 2"),
        (settings.Lock, {"heartbeat": "60"}, "[lock] stale_after=120.0 must be a number of seconds >= 3 x [lock]"),
        (settings.Serve, {"secure_cookies": "yes"}, "[serve] secure_cookies='yes' must be true or false"),
        (settings.Paths, {"contnet": "x"}, "[paths] contnet is not a setting; the settings of [paths] are content,"),
    ],
)
def test_a_bad_value_is_refused_in_one_line_naming_its_key(section, values, message):
    with pytest.raises(ConfigError) as caught:
        section.from_text(values)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_the_library_checks_its_arguments_against_the_same_tables():
    """A value made in code, not read from luigi.cfg, meets the same constraint and message."""
    with pytest.raises(ConfigError, match=r"^\[neighbours\] k=0 must be a whole number >= 1$"):
        NeighbourSettings(k=0)
    with pytest.raises(ConfigError, match=r"^\[resnet\] precision='fp8' must be one of auto"):
        ModelSpec(precision="fp8")
    with pytest.raises(ConfigError, match=r"^\[images\] colour='sepia' must be one of grey, rgb$"):
        ModelSpec(colour="sepia")
    with pytest.raises(ConfigError, match=r"^\[neighbours\] metric='manhattan' must be one of euclidean, cosine$"):
        WeightedHistograms([[1, 0]], 1, [7], metric="manhattan")
    with pytest.raises(ConfigError, match=r"^\[neighbours\] k=True must be a whole number >= 1$"):
        settings.Neighbours(k=True)


def test_a_stages_identity_takes_the_significant_values_only():
    shipped = settings.Neighbours()
    assert shipped.identity() == {
        "k": 5,
        "weighting": "tfidf",
        "metric": "cosine",
        "power": 0.5,
        "same_record": "keep",
        "rerank": settings.Neighbours.rerank,
        "candidates": 50,
    }  # shards and method do not change the lists
    assert settings.Neighbours(shards=4, method="balltree").identity() == shipped.identity()
    assert settings.Lock().identity() == {}


def test_each_section_has_a_reader_of_its_name_giving_its_dataclass():
    from tasks import config

    assert [type(getattr(config, s.section)()) for s in settings.SECTIONS] == list(settings.SECTIONS)
