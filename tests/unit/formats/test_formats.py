"""The format registry: written out in one place, every adapter imported eagerly, nothing swallowed."""
from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from pipeline.formats import FORMAT_NAMES, FORMATS, get_format

ADAPTER_MODULES = {"asterisk-csv": "pipeline.formats.asterisk", "freeswitch-json": "pipeline.formats.freeswitch",
                   "acc": "pipeline.formats.acc", "csv": "pipeline.formats.csv_mapped",
                   "jsonl": "pipeline.core.parse"}


def test_the_registry_lists_exactly_the_known_formats() -> None:
    assert set(FORMATS) == set(ADAPTER_MODULES) == {"jsonl", *FORMAT_NAMES}


@pytest.mark.parametrize("name", sorted(ADAPTER_MODULES))
def test_each_adapter_module_imports_and_provides_its_format(name: str) -> None:
    module = importlib.import_module(ADAPTER_MODULES[name])
    assert FORMATS[name].__module__ == module.__name__
    assert get_format(name) is FORMATS[name]


def test_an_unknown_format_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown input format 'nope'; known: acc, asterisk-csv, csv"):
        get_format("nope")


@pytest.mark.parametrize("broken", ["pipeline.formats.acc", "pipeline.formats.freeswitch"])
def test_an_adapter_that_fails_to_import_fails_the_router_import(broken: str) -> None:
    """A broken adapter is an ImportError where the router is imported, not an 'unknown input format' later."""
    code = (f"import sys; sys.modules[{broken!r}] = None\n"  # None in sys.modules: importing it raises ImportError
            "try:\n"
            "    import pipeline.core.router\n"
            "except ImportError as exc:\n"
            "    print('ImportError', exc)\n"
            "    sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert broken in proc.stdout
