"""Which webhook URLs a job spec may carry: the URL's shape (any machine) and the allow-list (at submit).

A spec's `webhook` is an http(s) URL without credentials (`check_url`). At submit (`check_webhook`), and again at
each delivery (`resolve_target`), its host must be allowed by STUDIO_WEBHOOK_ALLOW, a comma list of:

- `loopback` (127.0.0.0/8, ::1), `private` (10/8, 172.16/12, 192.168/16, fc00::/7), an IP or a CIDR: addresses;
- a host name (`hooks.example.com`) or a suffix pattern (`*.example.com`): names;
- `*`: any host name, resolving to public addresses only.

The host name is resolved and EVERY address it resolves to is checked: an address in an allowed range passes; a
name allowed by name passes only with public (global) addresses, so an allowed name that resolves (or is rebound)
to a private, loopback or link-local address is refused unless that range is allowed too. Delivery connects to
the address checked, never resolving again (studio.queue.webhooks).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from studio.errors import InputError, clip

MAX_URL = 2048
NAMED_RANGES = {
    "loopback": ("127.0.0.0/8", "::1/128"),
    "private": ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"),
}
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Target:
    """A checked webhook target: where to connect (an address already checked) and what to send."""

    scheme: str
    host: str  # the URL's host name (the Host header, TLS server name)
    port: int
    path: str  # path and query
    address: str  # the resolved, allowed address to connect to


@dataclass(frozen=True)
class AllowList:
    """STUDIO_WEBHOOK_ALLOW, parsed."""

    networks: tuple[Network, ...]
    names: tuple[str, ...]  # exact names, or ".example.com" for "*.example.com"
    any_name: bool

    @classmethod
    def parse(cls, text: str) -> AllowList:
        networks: list[Network] = []
        names: list[str] = []
        any_name = False
        for raw in str(text or "").split(","):
            item = raw.strip().lower()
            if not item:
                continue
            if item == "*":
                any_name = True
            elif item in NAMED_RANGES:
                networks += [ipaddress.ip_network(n) for n in NAMED_RANGES[item]]
            elif item.startswith("*."):
                names.append(item[1:])
            else:
                try:
                    networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
                except ValueError:
                    names.append(item)
        return cls(tuple(networks), tuple(names), any_name)

    def in_ranges(self, address: Address) -> bool:
        return any(address in n for n in self.networks if n.version == address.version)

    def names_host(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return self.any_name or any(host == n or (n.startswith(".") and host.endswith(n)) for n in self.names)


def check_url(value: str) -> str:
    """`value` if it is an http(s) URL with a host and no credentials, else ValueError (for pydantic)."""
    if len(value) > MAX_URL:
        raise ValueError(f"a webhook URL is at most {MAX_URL} characters")
    if any(c.isspace() or ord(c) < 32 for c in value):
        raise ValueError("a webhook URL has no spaces or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError("not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("a webhook URL starts with http:// or https://")
    if not parts.hostname:
        raise ValueError("a webhook URL needs a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("a webhook URL carries no user name or password")
    if port == 0:
        raise ValueError("a webhook URL's port is 1-65535")
    return value


def _address(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _resolve(host: str, port: int) -> list[str]:
    literal = _address(host)
    if literal is not None:
        return [str(literal)]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise InputError(f"webhook: cannot resolve host {clip(host, 80)!r} ({clip(exc, 80)})") from None
    out: list[str] = []
    for info in infos:
        addr = str(info[4][0])
        if addr not in out:
            out.append(addr)
    if not out:
        raise InputError(f"webhook: host {clip(host, 80)!r} has no address")
    return out


def resolve_target(url: str, allow: str) -> Target:
    """The URL's target, with its host resolved and every address checked against the allow-list `allow`
    (STUDIO_WEBHOOK_ALLOW); InputError (one line) when anything is not allowed."""
    try:
        check_url(url)
    except ValueError as exc:
        raise InputError(f"webhook: {exc}") from None
    parts = urlsplit(url)
    host = str(parts.hostname).lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    rules = AllowList.parse(allow)
    by_name = _address(host) is None and rules.names_host(host)
    addresses = _resolve(host, port)
    for text in addresses:
        address = _address(text)
        ok = address is not None and (rules.in_ranges(address) or (by_name and address.is_global))
        if not ok:
            shown = f"{host} ({text})" if text != host else host
            raise InputError(f"webhook: host {clip(shown, 120)} is not allowed by STUDIO_WEBHOOK_ALLOW="
                             f"{clip(allow, 60)!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.scheme, host, port, path, addresses[0])


def check_webhook(url: str | None, settings: object) -> None:
    """At submit: InputError (one line) unless a job may carry this webhook (a secret is configured, the host is
    allowed). None: nothing to check."""
    if url is None:
        return
    if not str(getattr(settings, "webhook_secret", "") or ""):
        raise InputError("webhook: this studio has no STUDIO_WEBHOOK_SECRET, so it cannot sign deliveries; set one "
                         "to use webhooks")
    resolve_target(url, str(getattr(settings, "webhook_allow", "loopback")))


__all__ = ["AllowList", "Target", "check_url", "check_webhook", "resolve_target"]
