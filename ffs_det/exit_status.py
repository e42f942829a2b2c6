"""The exit statuses of every command in ``tools/``, and how an error becomes one line.

* ``0`` — done.
* ``2`` (:data:`BAD_INPUT`, argparse's status for a wrong command line) — the command cannot run as given:
  a wrong argument, config file or key, dataset, checkpoint, records or output folder. One ``error:`` line
  names the problem; nothing was written.
* ``1`` (:data:`FAILED`) — the run started and failed: training diverged, the disk filled up, a scorer or
  a demo job failed (their results and logs say which), or an unexpected error (with its traceback).
* ``143`` (:data:`INTERRUPTED`, ``128 + SIGTERM``) — training was stopped by SIGTERM after saving a
  checkpoint; rerun the command with ``--resume``.
"""
import signal
import sys

__all__ = ["OK", "FAILED", "BAD_INPUT", "INTERRUPTED", "INPUT_ERRORS", "one_line", "error"]

OK, FAILED, BAD_INPUT = 0, 1, 2
INTERRUPTED = 128 + signal.SIGTERM
# what a wrong input raises in ffs_det (ConfigError is a ValueError; detectron2's catalogs raise KeyError for
# an unknown dataset name)
INPUT_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line; for an error re-raised from a DataLoader worker, whose message
    carries the worker's traceback, the original error's last line."""
    text = str(e.args[0]) if len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    if "Original Traceback" in text:
        last = lines[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return "; ".join(lines) if len(lines) <= 3 else lines[0]


def error(e: BaseException, prefix: str = "") -> int:
    """Print ``error: <prefix><message>`` on stderr; return :data:`BAD_INPUT` for an input error, else
    :data:`FAILED`."""
    print(f"error: {prefix}{one_line(e)}", file=sys.stderr)
    return BAD_INPUT if isinstance(e, INPUT_ERRORS) else FAILED
