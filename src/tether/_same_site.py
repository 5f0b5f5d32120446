"""Whether a browser sent a request from this site's own pages (server and UI share it).

Browsers say where a request comes from: ``Sec-Fetch-Site`` (which a page cannot set),
and ``Origin`` on a POST. A write another site's page makes with the user's browser is
refused; clients that are not browsers send neither header and are not affected.

Behind a reverse proxy the ``Host`` the server sees may be its own address
(``127.0.0.1:8080``) while the browser's Origin is the public name: the proxy's
``X-Forwarded-Host`` names it. A page cannot make a browser send that header to
another site without a CORS preflight, which this server never grants, so it is taken
as another name of this site. Default ports are the same origin written two ways.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _netloc(value: str, scheme: str) -> str:
    """``host[:port]`` in lower case, without the scheme's default port."""
    text = value.strip().lower()
    if ":" not in text.rsplit("]", 1)[-1]:  # no port (an IPv6 address keeps its colons)
        return text
    host, _, port = text.rpartition(":")
    return host if port == _DEFAULT_PORTS.get(scheme) else text


def cross_site(headers: Mapping[str, str]) -> bool:
    """Whether a browser sent this request from another site's page (lower-case header
    names). Requests without the browser's headers are not cross-site."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site == "cross-site":
        return True
    if fetch_site in ("same-origin", "none"):
        return False  # the browser says so; a page cannot forge it
    origin = headers.get("origin")
    if origin is None:
        return False
    if origin == "null":
        return True
    parts = urlsplit(origin)
    if not parts.netloc:
        return True
    mine = {_netloc(h, parts.scheme) for h in (
        headers.get("host", ""), *headers.get("x-forwarded-host", "").split(",")) if h.strip()}
    return _netloc(parts.netloc, parts.scheme) not in mine
