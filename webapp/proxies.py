"""The client's address behind a proxy: X-Forwarded-For is believed only from the peers SLUICE_FORWARDED_ALLOW_IPS
names (gunicorn.conf.py gives gunicorn's forwarded_allow_ips the same list), never by default.

Anyone can send X-Forwarded-For; believed from anyone, it would let a client pick the address its rate limits
count against. From a listed proxy, the last entry (the one that proxy appended) becomes REMOTE_ADDR.
"""

import ipaddress

from werkzeug.middleware.proxy_fix import ProxyFix


class TrustedProxies:
    """WSGI middleware: werkzeug's ProxyFix (one hop) for requests whose peer is a listed proxy, none for others."""

    def __init__(self, wsgi_app, allowed: tuple):
        self.direct = wsgi_app
        self.forwarded = ProxyFix(wsgi_app, x_for=1)
        self.allowed = allowed  # ip_network objects, or ("*",): config.check parsed SLUICE_FORWARDED_ALLOW_IPS

    def _trusted(self, peer: str | None) -> bool:
        if self.allowed == ("*",):
            return True
        try:
            address = ipaddress.ip_address(peer or "")
        except ValueError:
            return False  # a Unix socket's peer has no address: list "*" for a proxy in front of one
        address = getattr(address, "ipv4_mapped", None) or address  # a dual-stack socket's IPv4 peer
        return any(address in network for network in self.allowed)

    def __call__(self, environ, start_response):
        app = self.forwarded if self._trusted(environ.get("REMOTE_ADDR")) else self.direct
        return app(environ, start_response)


def init_app(app) -> None:
    if app.config["FORWARDED_ALLOW_IPS"]:
        app.wsgi_app = TrustedProxies(app.wsgi_app, app.config["FORWARDED_ALLOW_IPS"])
