"""CLI subcommands: one module per `facekd <command>`.

Each module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
Heavy imports (torch, data, models) belong inside `run`, so `facekd --help` stays fast.
"""
