"""A reverse proxy in front of Azurite that notes every request: what a test counts.

fanout's own requests carry a SharedKey ``Authorization`` header; nodes' requests carry a SAS
(``sig=``) instead, so the two can be told apart.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from azurite import Azurite

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    signed_by_key: bool
    """Authorized with the account key (the client), not with a SAS (a node)."""

    @property
    def listing(self) -> bool:
        return self.query.get("comp") == ["list"]


@dataclass
class Counted:
    """Where the proxy answers, as an Azurite, and what it was asked."""

    azurite: Azurite
    requests: list[Seen] = field(default_factory=list)

    def own(self) -> list[Seen]:
        return [seen for seen in self.requests if seen.signed_by_key]


@contextmanager
def counting_proxy(target: Azurite) -> Iterator[Counted]:
    upstream = urlsplit(target.endpoint)
    account_path = upstream.path
    counted: Counted

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            parts = urlsplit(self.path)
            counted.requests.append(
                Seen(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    (self.headers.get("Authorization") or "").startswith("SharedKey"),
                )
            )
            connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            self.send_response_only(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            connection.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _forward

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    proxied = Azurite(
        endpoint=f"http://127.0.0.1:{server.server_address[1]}{account_path}",
        account=target.account,
        key=target.key,
    )
    counted = Counted(proxied)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield counted
    finally:
        server.shutdown()
        server.server_close()
