"""k-anonymous windowed aggregates of cdr.analytics (see docs/privacy.md).

``offline`` defines a group and computes the released groups from a list of records (pure);
``worker`` is the faust app (`cdrpipe aggregates worker`, added by :mod:`pipeline.commands.aggregates`). Importing
this package imports nothing heavy.
"""
from pipeline.aggregates.offline import aggregate_offline

__all__ = ["aggregate_offline"]
