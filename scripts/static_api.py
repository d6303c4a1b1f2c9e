"""Serve a directory of JSON pages on loopback, like a third-party API.

    python static_api.py DIR [PORT]     (PORT 0 or absent: any free port)

Prints `port <n>` on stdout once listening, then serves until killed.
HTTP/1.1 with keep-alive and TCP_NODELAY, a thread per connection, files
read from disk per request.
"""

import functools
import http.server
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY,
    # Nagle and the client's delayed ACK stall every response ~40 ms.
    disable_nagle_algorithm = True

    def log_message(self, *args):  # quiet: one line per page is noise
        pass


def main() -> None:
    root = sys.argv[1]
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    handler = functools.partial(Handler, directory=root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
