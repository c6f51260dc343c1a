"""The kinds of setting of luigi.cfg: each parses its value and says in ``must`` what a value must be, for the messages."""

import math
import operator
import sys

import luigi
import luigi.cmdline_parser

from pipeline.errors import ConfigError
from pipeline.records import SameRecord


class Choice(luigi.ChoiceParameter):
    """A setting with a fixed set of values, listed in their order (Luigi keeps them as a set)."""

    def __init__(self, choices, **kwargs):
        super().__init__(choices=list(choices), **kwargs)
        self.description = kwargs.get("description", "")
        self.must = "one of " + ", ".join(choices)


class Number(luigi.NumericalParameter):
    """A whole number (``int``) or a number (``float``) in a range; ``must`` says which, for the messages."""

    def __init__(self, var_type, low, high=None, low_open=False, high_open=False, *, must, **kwargs):
        top = (sys.maxsize if var_type is int else math.inf) if high is None else high
        super().__init__(
            var_type=var_type,
            min_value=low,
            max_value=top,
            left_op=operator.lt if low_open else operator.le,
            right_op=operator.lt if high_open else operator.le,
            **kwargs,
        )
        self.description = kwargs.get("description", "")
        self.must = must


class Processes(Number):
    """A number of processes, or ``auto``: one per core the run may use (read as 0)."""

    def __init__(self, **kwargs):
        super().__init__(int, 1, default=0, must="auto or a whole number >= 1", **kwargs)

    def parse(self, s):
        return 0 if str(s).strip().lower() == "auto" else super().parse(s)

    def serialize(self, x):
        return "auto" if x == 0 else str(x)


class Flag(luigi.BoolParameter):
    """A setting that is true or false (in any case; nothing else)."""

    def __init__(self, **kwargs):
        super().__init__(parsing=luigi.BoolParameter.EXPLICIT_PARSING, **kwargs)
        self.description = kwargs.get("description", "")
        self.must = "true or false"


class SameRecordParameter(luigi.Parameter):
    """``keep``, ``exclude`` or ``at_most N``, read as a :class:`pipeline.records.SameRecord`."""

    must = "keep, exclude or at_most N (N a whole number >= 0)"

    def parse(self, s):
        if isinstance(s, SameRecord):
            return s
        try:
            return SameRecord.parse(s)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    def serialize(self, x):
        return str(x)

    def normalize(self, x):
        return self.parse(x)


def count(default, low=1, **kwargs):
    """A whole number >= ``low``."""
    return Number(int, low, default=default, must=f"a whole number >= {low}", **kwargs)


def seconds(default, low=0.0, low_open=True, **kwargs):
    """A number of seconds > ``low`` (>= with ``low_open=False``)."""
    must = f"a number of seconds {'>' if low_open else '>='} {low:g}"
    return Number(float, low, low_open=low_open, default=default, must=must, **kwargs)


class CopyThreshold(luigi.Parameter):
    """``auto``, ``off`` or a distance >= 0."""

    must = "auto, off or a distance >= 0"

    def parse(self, s):
        text = str(s).strip().lower()
        if text in ("auto", "off"):
            return text
        value = float(text)  # ValueError: named by settings_problem
        if not value >= 0:
            raise ValueError(f"{value} < 0")
        return value
