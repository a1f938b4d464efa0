"""Credentials in URLs: a base URL may carry ``user:password@`` (a server behind basic auth). They are
replaced by ``***`` wherever a URL is shown or stored: logs, config dumps, checkpoints, manifests."""
from __future__ import annotations

import base64
import re
import urllib.parse
from typing import List

#: What stands in for a secret in messages, dumps and redacted URLs.
REDACTED = "***"
_URL_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")


def redact_url(url: str) -> str:
    """``url`` with its ``user:password@`` part, if any, replaced by ``***@`` (a URL can carry credentials)."""
    return _URL_USERINFO.sub(rf"\g<1>{REDACTED}@", url)


def url_secrets(url: str) -> List[str]:
    """The credentials of ``url`` in every form a message could repeat them: as written, decoded, and as
    the Basic auth token the HTTP client derives from them."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return []
    user, password = parts.username or "", parts.password or ""
    plain_user, plain_password = urllib.parse.unquote(user), urllib.parse.unquote(password)
    basic = basic_token(plain_user, plain_password)
    # Longest first, so a secret that contains another is replaced whole.
    return sorted({s for s in (password, plain_password, basic) if len(s) >= 4}, key=len, reverse=True)


def basic_token(user: str, password: str) -> str:
    """The token of an HTTP ``Authorization: Basic`` header."""
    return base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")
