"""One module per ``cdrpipe`` command: each parses its flags and calls the domain, holding no business rule.

Every module exposes ``register(subparsers)``: it adds its parser(s) and sets ``func`` to a
callable ``(argparse.Namespace) -> int`` (the exit code). :mod:`pipeline.cli` imports only the
module of the command it runs; :mod:`pipeline.commands.env` gives every flag its environment
variable. The domain never imports this package.
"""
