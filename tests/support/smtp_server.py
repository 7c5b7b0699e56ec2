#!/usr/bin/env python3
"""A real SMTP server for meter's tests, built on aiosmtpd (`pip install aiosmtpd`).

    python3 tests/support/smtp_server.py --port P --maildir DIR
        [--mode plain|starttls|tls] [--cert CERT.pem --key KEY.pem] [--auth USER:PASS]

Serves on 127.0.0.1:P. `plain`: no TLS at all. `starttls`: STARTTLS is offered and required
before any mail command (and before AUTH). `tls`: TLS from the first byte (SMTPS). With
`--auth`, AUTH PLAIN or LOGIN with exactly those credentials is required before MAIL.

Each delivered message becomes one JSON file in DIR, written atomically (a dot-file first,
then renamed), named so that sorting the names gives the order of delivery:

    {"mail_from", "rcpt_tos": [...], "subject", "from", "to", "date", "message_id",
     "content_type", "text", "html", "parts": [{"content_type", "charset"}...],
     "auth_user" (or null), "tls" (bool), "raw"}

Prints `ready` on stdout once listening; exits 0 on SIGTERM or SIGINT.
"""

import argparse
import asyncio
import email
import email.policy
import itertools
import json
import logging
import os
import signal
import ssl
import sys
import time
import warnings

try:
    from aiosmtpd.smtp import SMTP, AuthResult
except ImportError:
    sys.stderr.write("smtp_server.py: the aiosmtpd module is missing: pip install aiosmtpd\n")
    sys.exit(3)


def parse_args(argv):
    parser = argparse.ArgumentParser(description="SMTP server for meter's tests")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--maildir", required=True)
    parser.add_argument("--mode", choices=["plain", "starttls", "tls"], default="plain")
    parser.add_argument("--cert", help="server certificate chain (PEM), for starttls and tls")
    parser.add_argument("--key", help="server private key (PEM), for starttls and tls")
    parser.add_argument("--auth", metavar="USER:PASS", help="require AUTH with these credentials")
    args = parser.parse_args(argv)
    if args.mode != "plain" and not (args.cert and args.key):
        parser.error(f"--mode {args.mode} needs --cert and --key")
    if args.auth is not None and ":" not in args.auth:
        parser.error("--auth must be USER:PASS")
    return args


def part_text(message, subtype):
    """The decoded content of the first text/<subtype> part (line ends as `\n`), or None."""
    part = message.get_body(preferencelist=(subtype,))
    if part is None or part.get_content_type() != f"text/{subtype}":
        return None
    return part.get_content().replace("\r\n", "\n")


def header(message, name):
    value = message.get(name)
    return None if value is None else str(value)


class Handler:
    """Writes every message it accepts into the maildir."""

    def __init__(self, maildir):
        self.maildir = maildir
        self.counter = itertools.count()

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        message = email.message_from_bytes(raw, policy=email.policy.default)
        transport = server.transport
        tls = session.ssl is not None or (
            transport is not None and transport.get_extra_info("ssl_object") is not None
        )
        auth_user = None
        if session.authenticated and session.auth_data is not None:
            login = getattr(session.auth_data, "login", session.auth_data)
            auth_user = login.decode("utf-8", "replace") if isinstance(login, bytes) else str(login)
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "subject": header(message, "Subject"),
            "from": header(message, "From"),
            "to": header(message, "To"),
            "date": header(message, "Date"),
            "message_id": header(message, "Message-ID"),
            "content_type": message.get_content_type(),
            "text": part_text(message, "plain"),
            "html": part_text(message, "html"),
            "parts": [
                {"content_type": part.get_content_type(), "charset": part.get_content_charset()}
                for part in message.walk()
                if not part.is_multipart()
            ],
            "auth_user": auth_user,
            "tls": tls,
            "raw": raw.decode("utf-8", "replace"),
        }
        name = f"{time.time_ns():020d}-{next(self.counter):06d}.json"
        tmp = os.path.join(self.maildir, f".{name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, ensure_ascii=False, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.maildir, name))
        return "250 OK delivered"


def make_authenticator(user, password):
    want = (user.encode("utf-8"), password.encode("utf-8"))

    def authenticate(server, session, envelope, mechanism, auth_data):
        if mechanism in ("PLAIN", "LOGIN") and (auth_data.login, auth_data.password) == want:
            return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)

    return authenticate


async def serve(args):
    os.makedirs(args.maildir, exist_ok=True)
    context = None
    if args.mode != "plain":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    kwargs = {"hostname": "localhost", "timeout": 60}
    if args.auth is not None:
        user, password = args.auth.split(":", 1)
        kwargs.update(
            authenticator=make_authenticator(user, password),
            auth_required=True,
            # starttls: AUTH only once the session is encrypted. tls: it always is, but
            # aiosmtpd only knows about STARTTLS, so it must not insist. plain: a test relay.
            auth_require_tls=args.mode == "starttls",
        )
    if args.mode == "starttls":
        kwargs.update(tls_context=context, require_starttls=True)
    handler = Handler(args.maildir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, loop=loop, **kwargs),
        host="127.0.0.1",
        port=args.port,
        ssl=context if args.mode == "tls" else None,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()
    # Since Python 3.12 wait_closed() also waits for open client connections: bound it.
    try:
        await asyncio.wait_for(server.wait_closed(), 2)
    except asyncio.TimeoutError:
        pass


def main(argv):
    args = parse_args(argv)
    # aiosmtpd warns about AUTH without TLS (wanted here) and logs deprecations per session.
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    try:
        asyncio.run(serve(args))
    except OSError as err:
        sys.stderr.write(f"smtp_server.py: cannot serve on 127.0.0.1:{args.port}: {err}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
