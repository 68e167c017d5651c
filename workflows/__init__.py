"""The commands' flows: simulate, load test, calibrate, validate (and the plan and regress flows).

``capacity_cli`` parses arguments and calls one function here per command;
these modules do the work and may import :mod:`models`, :mod:`reports`,
:mod:`locustfiles.launch` and the reference server's process runner
(:mod:`refserver.serve`).  Nothing here prints a traceback for a user's
mistake: bad input raises :class:`BadInput` (exit 2), a run that could not
be made or a failed check raises :class:`RunFailed` (exit 1).
"""

from __future__ import annotations

__all__ = ["WorkflowError", "BadInput", "RunFailed"]


class WorkflowError(Exception):
    """A command stopped for a reason a person can act on; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class BadInput(WorkflowError):
    """An argument, a scenario or a calibration file is wrong (exit 2)."""

    exit_code = 2


class RunFailed(WorkflowError):
    """A run could not be made or measured (exit 1)."""

    exit_code = 1
