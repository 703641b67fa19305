"""Error messages a user reads: the sentence that names the file, row or flag, without library wrapping."""
from __future__ import annotations


def concise(error: BaseException | str) -> str:
    """The message itself: for a jsonargparse union error the sub-error that is not "Expected a NoneType"; for an
    error re-raised from a DataLoader worker, the original one at its end."""
    if isinstance(error, KeyError) and error.args:
        text = str(error.args[0])
    else:
        text = str(error)
    text = text.strip()
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        kind, sep, message = last.partition(": ")
        text = message if sep and " " not in kind else last
    bullets = [line.strip()[2:] for line in text.splitlines() if line.startswith("  - ")]
    useful = [b for b in bullets if not b.startswith("Expected a <class 'NoneType'>")]
    if useful:
        return useful[0].strip()
    return text
