"""`cdrpipe aggregates worker`: k-anonymous windowed aggregates of cdr.analytics; faust is imported only when it runs."""
from __future__ import annotations

import argparse

from pipeline.aggregates.offline import DEFAULT_K, DEFAULT_WINDOW, MIN_K
from pipeline.aggregates.watermark import DEFAULT_GRACE, DEFAULT_IDLE_TIMEOUT
from pipeline.commands.common import add_app_arguments
from pipeline.topics import AGGREGATES, ANALYTICS

DEFAULT_APP_ID = "cdrpipe-aggregates"
DEFAULT_WEB_PORT = 6068


def _cmd_worker(args: argparse.Namespace) -> int:
    from pipeline.aggregates.worker import run_worker_command

    return run_worker_command(args)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``cdrpipe aggregates worker``."""
    p = subparsers.add_parser("aggregates", help="k-anonymous windowed aggregates of cdr.analytics",
                              description="Windowed call counts per area that never describe fewer than k subscribers.")
    sub = p.add_subparsers(dest="aggregates_command", metavar="ACTION", required=True)
    w = sub.add_parser(
        "worker", help="run the aggregates app (faust): cdr.analytics -> cdr.aggregates",
        description=("Read cdr.analytics (committed records only), group calls by area (cell_id) and tumbling "
                     "window of their start time, and publish a group's call count, total duration and "
                     "distinct callers to cdr.aggregates only when at least k distinct callers made its calls. "
                     "Smaller groups are counted in the metrics and never published. A window closes when "
                     "event time passes its end plus the grace period. Serves /health and /metrics."))
    add_app_arguments(w, app_id=DEFAULT_APP_ID, web_port=DEFAULT_WEB_PORT)
    w.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                   help=f"window length in seconds, dividing a day (default {DEFAULT_WINDOW})")
    w.add_argument("--k", type=int, default=DEFAULT_K,
                   help=f"minimum distinct callers for a group to be published (default {DEFAULT_K}, at least {MIN_K})")
    w.add_argument("--grace", type=int, default=DEFAULT_GRACE,
                   help=(f"seconds after a window's end during which late records still count (default "
                         f"{DEFAULT_GRACE}; analytics start times are whole hours, so 1-3600 all close a 1 h "
                         "window at the first record two hours on)"))
    w.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT,
                   help=(f"seconds without records after which an input partition stops holding the "
                         f"watermark back (default {DEFAULT_IDLE_TIMEOUT:g})"))
    w.add_argument("--analytics-topic", default=None, help=f"default {ANALYTICS} (after --topic-prefix)")
    w.add_argument("--aggregates-topic", default=None, help=f"default {AGGREGATES}")
    w.set_defaults(func=_cmd_worker)
