"""One exception type for every user-facing failure.

Each error names the problem and the fix, so the CLI can print it as one line and exit non-zero.
"""

from __future__ import annotations


class PipelineError(Exception):
    """A problem the user can fix: bad input, bad parameters, a missing device."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; fix: {fix}")
        self.problem = problem
        self.fix = fix

    def one_line(self) -> str:
        return " ".join(f"error: {self.problem}; fix: {self.fix}".split())


class TrialPruned(Exception):
    """A sweep's pruner stopped this training at the end of an epoch (rnn/search/trial.py): not a
    failure, and nothing of the run was published."""

    def __init__(self, study: str, number: int, epoch: int, value: float) -> None:
        self.epoch, self.value = epoch, value
        super().__init__(
            f"trial {number} of study {study!r} pruned after epoch {epoch} "
            f"(validation loss {value:.4f} nats)"
        )


# errno -> what to do about it, for the failures of storage a user can fix
_OS_FIXES = {
    "ENOSPC": "free disk space (or point the workspace at a larger disk), then rerun",
    "EDQUOT": "free space within your disk quota, then rerun",
    "EFBIG": "raise the file-size limit (ulimit -f) or free space, then rerun",
    "EACCES": "make the path writable (or readable) for this user, or use another --workdir",
    "EPERM": "make the path writable (or readable) for this user, or use another --workdir",
    "EROFS": "use a writable --workdir; this file system is read-only",
    "EIO": "check the disk (dmesg) and rerun; the earlier good outputs are kept",
}


def from_os_error(err: OSError) -> PipelineError:
    """A storage failure (full disk, file-size limit, permissions) as one PipelineError; writes go
    to a temporary file that is renamed only on success (rnn/store/atomic.py), so nothing earlier is
    lost and nothing partial is left."""
    import errno

    code = errno.errorcode.get(err.errno or 0, "")
    where = f" {err.filename}" if err.filename else ""
    reason = err.strerror or str(err) or type(err).__name__
    fix = _OS_FIXES.get(code, "fix the cause and rerun; the earlier good outputs are kept")
    return PipelineError(f"could not read or write{where}: {reason}", fix)
