"""What cdrpipe's faust apps (``privacy worker``, ``aggregates worker``) share, side by side.

``options`` (their flags and :class:`~pipeline.apps.options.AppSettings`, importable without
faust), ``runtime`` (the read_committed faust app, its locked-down web server, and running it
in the foreground) and ``process`` (an app as a child process: demo, bench, tests). Importing
this package imports nothing heavy; faust is imported only by ``runtime``.
"""
