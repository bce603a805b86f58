"""What the stores' command lines (``python -m stores.recorded``, ``python -m stores.registry``)
share: a failure the user can fix is one line on stderr and exit status 2, as with ``rnn``."""

from __future__ import annotations

import sys

import typer

from rnn.errors import PipelineError


def run(app: typer.Typer, library_errors: tuple[type[Exception], ...] = ()) -> None:
    """``app``, with a PipelineError, or one of ``library_errors`` (a library's refusal that
    names its cause, e.g. GTO's), as one line."""
    try:
        app()
    except PipelineError as err:
        print(err.one_line(), file=sys.stderr)
        sys.exit(2)
    except library_errors as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
