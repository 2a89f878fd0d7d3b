"""Switch CDR formats (Asterisk, FreeSWITCH, Kamailio/OpenSIPS acc, mapped CSV), registered for ``--format``.

Importing this package registers every adapter in :data:`pipeline.core.formats.FORMATS`.
"""
from __future__ import annotations

from pipeline.formats import acc, asterisk, csv_mapped, freeswitch  # noqa: F401  (each registers its format)
from pipeline.formats.common import FORMAT_REASON_DETAIL
from pipeline.formats.csv_mapped import MappingError, MappingSpec, load_mapping

#: Formats this package adds, with whether they need ``--mapping``.
FORMAT_NAMES = {"asterisk-csv": False, "freeswitch-json": False, "acc": False, "csv": True}


def check_format_options(fmt: str, options: tuple[tuple[str, object], ...]) -> None:
    """Fail fast at start-up (not per batch) when a format's options are missing or invalid."""
    opts = dict(options)
    unknown = set(opts) - {"mapping"}
    if fmt in FORMAT_NAMES and unknown:
        raise MappingError(f"format {fmt}: unknown option(s) {', '.join(sorted(unknown))}")
    mapping = opts.get("mapping")
    if fmt == "csv" and mapping is None:
        raise MappingError("--format csv needs --mapping FILE (which column is cli, dialled, start, duration)")
    if mapping is not None:
        default = {"asterisk-csv": asterisk.DEFAULT, "acc": acc.DEFAULT}.get(fmt)
        if fmt in ("csv", "asterisk-csv", "acc"):
            csv_mapped.resolve(default, mapping)
        elif fmt != "freeswitch-json":
            raise MappingError(f"format {fmt} takes no --mapping")


__all__ = ["FORMAT_REASON_DETAIL", "FORMAT_NAMES", "MappingError", "MappingSpec", "check_format_options",
           "load_mapping"]
