"""The lab's captive portal, on the NAT box: what a hotel's Wi-Fi does to a laptop.

Until someone logs in, the NAT drops every UDP datagram from the LAN (the forward chain's rule
that `Lab.start_portal` adds) and this HTTP server answers the connectivity probe with a
redirect to its login page. `GET /login?accept=1` logs in: the drop rule goes (the forward
chain is flushed) and the probe gets its expected answer.

    python -m m6t.lab.portal serve --listen 192.168.1.1:80 --expect "m6t lab: online"
    python -m m6t.lab.portal login http://192.168.1.1/login?accept=1
"""

from __future__ import annotations

import argparse
import socketserver
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LOGIN_PAGE = b"""<!doctype html><title>Lab Hotel Wi-Fi</title>
<h1>Welcome to the Lab Hotel</h1><p>Accept the terms to use the Internet.</p>
<p><a href="/login?accept=1">Accept and connect</a></p>"""


def serve(listen: tuple[str, int], expect: str) -> None:
    logged_in = threading.Event()

    class Portal(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/login":
                if parse_qs(url.query).get("accept") == ["1"] and not logged_in.is_set():
                    # Let the LAN's UDP through, as the hotel's firewall would.
                    subprocess.run(["nft", "flush", "chain", "ip", "lab", "forward"], check=True)
                    logged_in.set()
                self._answer(200, "text/html", LOGIN_PAGE)
            elif logged_in.is_set():
                self._answer(200, "text/plain", expect.encode() + b"\n")
            else:
                self.send_response(302)
                self.send_header("Location", f"http://{listen[0]}/login")
                self.send_header("Content-Length", "0")
                self.end_headers()

        def _answer(self, status: int, kind: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            sys.stderr.write(f"portal: {self.address_string()} {format % args}\n")

    class Server(ThreadingHTTPServer):
        def server_bind(self) -> None:
            # HTTPServer's own asks DNS for our name (getfqdn): no DNS in the lab, a long hang.
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = listen

    Server(listen, Portal).serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="m6t-lab-portal")
    commands = parser.add_subparsers(dest="command", required=True)
    serving = commands.add_parser("serve")
    serving.add_argument("--listen", required=True, help="ADDRESS:PORT")
    serving.add_argument("--expect", required=True, help="the probe's answer once logged in")
    login = commands.add_parser("login")
    login.add_argument("url")
    args = parser.parse_args(argv)
    if args.command == "serve":
        host, _, port = args.listen.rpartition(":")
        serve((host, int(port)), args.expect)
        return 0
    with urllib.request.urlopen(args.url, timeout=5) as answer:
        print(answer.status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
