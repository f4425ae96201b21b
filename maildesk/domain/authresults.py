"""Authentication-Results headers (RFC 8601): what our own MTA found about a sender.

Anyone can write such a header into a mail; only one carrying the authserv-id
of our own receiving MTA (configured as ``agent_mail.trusted_authserv_ids``)
is believed, and only the topmost such one, since our MTA adds its header on
top of what the mail brought.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_RESULT = re.compile(r"\b(dkim|spf|dmarc)\s*=\s*([a-z]+)([^;]*)", re.IGNORECASE)
_PROP = re.compile(
    r"\b(header\.d|header\.i|header\.from|smtp\.mailfrom|smtp\.from)\s*=\s*([^\s;]+)"
)


def _strip_comments(value: str) -> str:
    out, depth = [], 0
    for ch in value:
        if ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif not depth:
            out.append(ch)
    return "".join(out)


def trusted_results(
    headers: Sequence[str], trusted_ids: Iterable[str]
) -> list[tuple[str, str, str]]:
    """(method, result, domain) from the topmost header by a trusted authserv-id.

    Headers are in message order (newest first); our MTA adds its header on
    top, so anything below it with our id was written by someone else.
    """
    trusted = {t.lower() for t in trusted_ids}
    for header in headers:
        value = _strip_comments(" ".join(header.split()))
        authserv = value.split(";", 1)[0].strip().split()[0].lower() if value.strip() else ""
        if authserv not in trusted:
            continue
        found = []
        for method, result, props in (m.groups() for m in _RESULT.finditer(value)):
            domain = ""
            for key, val in _PROP.findall(props):
                domain = val.strip("\"'").rpartition("@")[2].lower().rstrip(".")
                if key in ("header.d", "header.from", "header.i"):
                    break
            found.append((method.lower(), result.lower(), domain))
        return found
    return []


def failed_dmarc(headers: Sequence[str], trusted_ids: Iterable[str]) -> str | None:
    """``dmarc=fail (domain)`` when our own MTA found DMARC failing, else None.

    A DMARC failure means the sender's domain says this mail is not its own:
    the From address is most likely forged. Only our MTA's header counts.
    """
    for method, result, domain in trusted_results(headers, trusted_ids):
        if method == "dmarc" and result == "fail":
            return "dmarc=fail" + (f" ({domain})" if domain else "")
    return None


def no_backscatter(failed: str) -> str:
    """Why no automatic mail goes to a From our MTA found failing DMARC (``failed``)."""
    return f"{failed}: the sender is likely forged (no backscatter)"


def passed_dmarc(headers: Sequence[str], trusted_ids: Iterable[str]) -> str | None:
    """``dmarc=pass (domain)`` when our own MTA found the From's domain vouching for it."""
    for method, result, domain in trusted_results(headers, trusted_ids):
        if method == "dmarc" and result == "pass":
            return "dmarc=pass" + (f" ({domain})" if domain else "")
    return None
