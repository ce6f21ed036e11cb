#!/usr/bin/env python3
"""A programmable SMTP server for the email delivery tests (aiosmtpd, a real SMTP implementation).

It behaves like a working mail server that honours the idempotency key: every message carrying
an `X-Pricefeed-Idempotency-Key` it has already accepted is answered 250 again but recorded as a
duplicate, not delivered twice. What it answers depends on the recipient's local part:

  tempfail…@   first delivery of each idempotency key: 451 at the end of DATA; later ones: 250
  reject…@     550 at RCPT TO (a permanent failure)
  anything     250

A message is recorded (stored) before its 250 goes out, which --reply-delay-ms holds back: a
client killed in that gap has handed the mail over without learning it, the window every SMTP
client has (RFC 1047); the idempotency key is what lets the retry be recognised.

Every message (and every refusal at DATA) is one JSON line in --log, flushed at once:
  {"t": ms, "key", "message_id", "rcpt": [...], "reply": code, "duplicate": bool,
   "subject", "data" (unless --no-body)}
The port it listens on (0 = any free one) is written to --port-file once it accepts connections.
"""
import argparse
import asyncio
import email.parser
import json
import logging
import os
import signal
import time

from aiosmtpd.smtp import SMTP

KEY_HEADER = "X-Pricefeed-Idempotency-Key"


class Handler:
    def __init__(self, args):
        self.args = args
        self.log = open(args.log, "a", encoding="utf-8")
        self.accepted = set()   # idempotency keys delivered
        self.seen = {}          # idempotency key -> deliveries offered (any outcome)

    def record(self, **entry):
        entry["t"] = int(time.time() * 1000)
        self.log.write(json.dumps(entry) + "\n")
        self.log.flush()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.split("@")[0].startswith("reject"):
            return f"550 5.1.1 <{address}>: mailbox unavailable (sink: reject)"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.content if isinstance(envelope.content, bytes) else envelope.content.encode()
        headers = email.parser.BytesHeaderParser().parsebytes(raw)
        key = headers.get(KEY_HEADER, "")
        local = envelope.rcpt_tos[0].split("@")[0] if envelope.rcpt_tos else ""
        n = self.seen.get(key, 0) + 1
        self.seen[key] = n
        entry = dict(
            key=key,
            message_id=headers.get("Message-ID", ""),
            rcpt=list(envelope.rcpt_tos),
            subject=str(headers.get("Subject", "")),
        )
        if not self.args.no_body:
            entry["data"] = raw.decode("utf-8", "replace")
        if local.startswith("tempfail") and n == 1:
            self.record(reply=451, duplicate=False, **entry)
            return "451 4.3.0 Try again later (sink: tempfail)"
        duplicate = key in self.accepted
        self.accepted.add(key)
        # Stored first: from here on the mail is the server's, whatever the client sees.
        self.record(reply=250, duplicate=duplicate, **entry)
        if self.args.reply_delay_ms:
            await asyncio.sleep(self.args.reply_delay_ms / 1000)
        return "250 2.0.0 Ok: queued" + (" (duplicate dropped)" if duplicate else "")


async def main(args):
    handler = Handler(args)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="sink.pricefeed.test", ident="pricefeed test sink"),
        args.host, args.port)
    port = server.sockets[0].getsockname()[1]
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, args.port_file)
    stop = asyncio.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--reply-delay-ms", type=int, default=0)
    p.add_argument("--no-body", action="store_true")
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(p.parse_args()))
