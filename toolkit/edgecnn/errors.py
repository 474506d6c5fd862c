"""The one exception type that means "the user gave us something wrong", and text from elsewhere made fit to
show on one terminal line."""


class EdgeCNNError(Exception):
    """A problem with the user's input or environment.

    The CLI prints its message as a single line and exits non-zero; the message should say what was wrong
    and, where it helps, how to fix it.
    """


def closest(name: str, choices) -> str:
    """' (did you mean 'x'?)' for the nearest valid name, or '' when nothing is close."""
    import difflib

    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def shorten(text: str, limit: int = 300) -> str:
    """The first line of `text`, cut at a word boundary with '…' when longer than `limit` (a third-party
    message can be a whole tensor dump)."""
    lines = text.strip().splitlines()
    line = lines[0] if lines else ""
    if len(line) <= limit:
        return line
    cut = line[:limit]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(",;: ") + " …"


def first_line(e: BaseException) -> str:
    """'Type: first line of the message' — a third-party exception, cut down to one readable line."""
    text = shorten(str(e))
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def printable(text: object) -> str:
    """`text` from a file or a device (a label, a card field, a layer name, a remote message) made safe for a
    terminal: control and format characters (escape sequences, bidi overrides, newlines) are shown as escapes
    instead of acting on the screen."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))
