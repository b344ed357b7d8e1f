"""The ceiling of the Python stack: a bare aiosmtpd server that answers 250.

It does what every aiosmtpd server does before any work of ours (the SMTP
state machine, STARTTLS with the gateway's own TLS settings, AUTH, reading
DATA) and nothing after it: any password is accepted and every message is
counted and dropped. The bench runs it as a child process:

    python -m bench.sink --cert CERT --key KEY   STARTTLS and AUTH required
    python -m bench.sink --plain                 neither: Postfix's next hop

It prints `sink listening on 127.0.0.1:PORT` when ready and, on SIGTERM, one
JSON line with the messages and octets it took, then exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import ssl
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult

from beep_mail.crypto.tls import server_context

# As large as the largest message the bench sends, with room for headers.
DATA_LIMIT = 64 * 1024 * 1024


class Counter:
    def __init__(self) -> None:
        self.messages = 0
        self.octets = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages += 1
        self.octets += len(envelope.original_content or b"")
        return "250 2.0.0 OK"


def accept_any(server: Any, session: Any, envelope: Any, mechanism: str,
               auth_data: Any) -> AuthResult:
    return AuthResult(success=True)


async def serve(tls: ssl.SSLContext | None) -> dict[str, int]:
    counter = Counter()
    secure = tls is not None

    def factory() -> SMTP:
        return SMTP(counter, hostname="localhost", tls_context=tls,
                    require_starttls=secure, auth_required=secure,
                    auth_require_tls=True, authenticator=accept_any if secure else None,
                    decode_data=False, data_size_limit=DATA_LIMIT,
                    enable_SMTPUTF8=False)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"sink listening on 127.0.0.1:{port}", flush=True)

    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()
    return {"messages": counter.messages, "octets": counter.octets}


def main() -> None:
    # aiosmtpd sets a deprecated field itself after every successful AUTH and
    # logs a warning about it, once per session: noise in the bench's output.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(prog="python -m bench.sink")
    parser.add_argument("--cert", type=Path)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--plain", action="store_true")
    args = parser.parse_args()
    if not args.plain and not (args.cert and args.key):
        parser.error("--cert and --key, or --plain")

    tls = None if args.plain else server_context(args.cert, args.key)
    counts = asyncio.run(serve(tls))
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
