"""How the ``rnn`` command ends: one line on stderr and a documented exit status for every
failure, never a bare traceback.

Exit statuses (docs/reference/errors.md):

- 0: done.
- 2: a problem the user can fix: usage, parameters, data, disk, memory, the remote. One line,
  ``error: <problem>; fix: <what to do>``.
- 3: a sweep's trial stopped by its pruner (rnn/search/trial.py): not a failure, and nothing of
  the run was published.
- 70: a bug in this project (an unexpected exception; EX_SOFTWARE in sysexits.h). One line naming
  a file that holds the full traceback; ``rnn --verbose ...`` prints it instead.
- 130: interrupted (Ctrl-C, SIGINT): what was saved stays, and the same command resumes.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from typing import NoReturn

# typer >= 0.2x carries its own copy of click; the lock pins the typer that has this module, and
# tests/unit/test_cli.py fails if it moves.
from typer._click import exceptions as click_exceptions

from rnn.errors import PipelineError, from_os_error

OK = 0
USER_ERROR = 2
PRUNED = 3
BUG = 70
INTERRUPTED = 130
PROG = "rnn"  # what the one-line fixes name, whichever way the command was started


def user_error_line(err: BaseException) -> str | None:
    """The one line for a failure the user can fix, or None when ``err`` is not one."""
    if isinstance(err, PipelineError):
        return err.one_line()
    if isinstance(err, MemoryError):
        return PipelineError(
            "out of memory",
            "use a smaller model or minibatch (models.<name>.num_hiddens, partition.batch_size, "
            "partition.num_steps), or free memory",
        ).one_line()
    if isinstance(err, OSError):
        return from_os_error(err).one_line()
    return None


def interrupted_line() -> str:
    return (
        "error: interrupted; fix: rerun the same command: training resumes from its last "
        "checkpoint, and finished outputs are kept"
    )


def usage_line(err: click_exceptions.ClickException) -> str:
    """click's usage errors (a bad option value, an unknown option) as one line, naming the
    ``rnn`` command's help whichever way it was started."""
    ctx = getattr(err, "ctx", None)
    command = ctx.command_path if ctx is not None else PROG
    message = " ".join(err.format_message().split()).rstrip(".")
    return f"error: {message}; fix: see `{command} --help`"


def bug_report(err: BaseException, verbose: bool) -> str:
    """The one line for an unexpected exception; its traceback goes to a file (or to stderr
    with ``--verbose``), so a user sees what happened and where the details are."""
    trace = "".join(traceback.format_exception(err))
    summary = " ".join(f"{type(err).__name__}: {err}".split())[:300]
    if verbose:
        print(trace, file=sys.stderr, end="")
        return f"error: unexpected {summary} (a bug in rnn-pipeline); fix: report it with the traceback above"
    fd, path = tempfile.mkstemp(
        prefix=f"rnn-error-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".txt"
    )
    with os.fdopen(fd, "w") as handle:
        handle.write(f"rnn {' '.join(sys.argv[1:])}\n\n{trace}")
    return (
        f"error: unexpected {summary} (a bug in rnn-pipeline); fix: report it with the "
        f"traceback in {path} (or rerun with `rnn --verbose ...`)"
    )


def finish(code: object) -> NoReturn:
    sys.exit(code if isinstance(code, int) else OK)


def fail(line: str, status: int) -> NoReturn:
    print(line, file=sys.stderr)
    sys.exit(status)
