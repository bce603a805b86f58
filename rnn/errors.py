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
