#!/usr/bin/python3
"""A real SMTP submission server for the esg-alerts tests (aiosmtpd, Debian's python3-aiosmtpd).

STARTTLS is required before anything else (MAIL is refused in clear), AUTH (PLAIN or LOGIN) is
required and only offered over TLS, and exactly one user/password is accepted. Every message
received is appended to --out as one JSON line: envelope sender and recipients, the AUTH login,
whether the session was under TLS, the decoded Subject, To and plain-text body, and the raw
content.

With --plain it is instead a relay without TLS and without AUTH, as a local MTA would be.

Prints one JSON line {"port": N} on stdout once it listens on 127.0.0.1:N, then serves until its
standard input closes (the test dropped it) or it is killed.

Usage: smtp_server.py --cert leaf.pem --key leaf.key --user U --password P --out messages.jsonl
"""

import argparse
import email
import email.policy
import json
import logging
import socket
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class BoundController(Controller):
    """A Controller serving on a socket bound to a free port of 127.0.0.1 and kept: the port is
    never released between choosing it and listening on it, so no other test can be given it."""

    def __init__(self, handler, **kwargs):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen()
        super().__init__(
            handler, hostname="127.0.0.1", port=self._sock.getsockname()[1], **kwargs
        )

    def _create_server(self):
        return self.loop.create_server(
            self._factory_invoker, sock=self._sock, ssl=self.ssl_context
        )


class Recorder:
    def __init__(self, out_path: str):
        self.out_path = out_path

    async def handle_DATA(self, server, session, envelope):
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8")
        message = email.message_from_bytes(content, policy=email.policy.default)
        body_part = message.get_body(preferencelist=("plain",))
        login = getattr(session.auth_data, "login", None) or b""
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "login": login.decode("utf-8", "replace"),
            "tls": session.ssl is not None,
            "subject": str(message["subject"] or ""),
            "to": str(message["to"] or ""),
            "content_type": message.get_content_type(),
            "body": body_part.get_content() if body_part is not None else "",
            "content": content.decode("utf-8", "replace"),
        }
        with open(self.out_path, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
            out.flush()
        return "250 OK message accepted"


def main() -> None:
    # aiosmtpd itself still sets the deprecated Session.login_data and logs that each time.
    logging.getLogger("mail.log").addFilter(
        lambda record: "login_data is deprecated" not in record.getMessage()
    )
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--plain",
        action="store_true",
        help="a relay without TLS and without AUTH (offers no STARTTLS)",
    )
    args = parser.parse_args()

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(args.cert, args.key)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == args.user.encode()
            and auth_data.password == args.password.encode()
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    if args.plain:
        controller = BoundController(Recorder(args.out))
    else:
        controller = BoundController(
            Recorder(args.out),
            tls_context=tls,
            require_starttls=True,
            authenticator=authenticator,
            auth_required=True,
            auth_require_tls=True,
        )
    controller.start()
    print(json.dumps({"port": controller.port}), flush=True)
    try:
        sys.stdin.read()
    except (ValueError, OSError):
        pass
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
