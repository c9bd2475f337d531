#!/usr/bin/env python3
"""bench/cache.py -- the messages of bench/run's `retry` and `campaign` modes (issue 22).

    cache.py retry DIR N          N different ~4 KiB messages, each with a small PDF attachment
                                  (the retry mode sends each twice: Postfix re-sending after a 4xx)
    cache.py campaign DIR N       N different messages carrying the same ~200 KB PDF (campaign/)
                                  and N carrying a PDF of their own each (cold/): the first set
                                  costs clamd the PDF once, the second every time

Deterministic (a fixed seed): the same bytes every run. Prints "name<TAB>size" per file written.
"""
import base64
import random
import sys
import zlib
from pathlib import Path


def pdf(rng, size):
    """A PDF of about `size` bytes: pages whose content streams are deflated text."""
    objs, out = [], bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    words = [b"invoice", b"total", b"amount", b"due", b"customer", b"item", b"qty", b"price",
             b"tax", b"net", b"order", b"ship", b"date", b"ref", b"account"]
    n = 1
    while len(out) < size:
        text = b" ".join(rng.choice(words) + str(rng.randrange(10**6)).encode()
                         for _ in range(min(6000, size // 8)))
        stream = zlib.compress(b"BT /F1 10 Tf 72 720 Td (" + text + b") Tj ET", 6)
        objs.append(len(out))
        out += b"%d 0 obj\n<< /Length %d /Filter /FlateDecode >>\nstream\n" % (n, len(stream))
        out += stream + b"\nendstream\nendobj\n"
        n += 1
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % n
    for o in objs:
        out += b"%010d 00000 n \n" % o
    out += b"trailer\n<< /Size %d >>\nstartxref\n%d\n%%%%EOF\n" % (n, xref)
    return bytes(out)


def message(i, tag, text, attachment):
    b64 = base64.encodebytes(attachment).decode().replace("\n", "\r\n")
    return (
        f"From: billing@shop.example\r\nTo: customer{i}@example.com\r\n"
        f"Subject: Your invoice {tag}-{i}\r\nMessage-ID: <{tag}-{i}@shop.example>\r\n"
        f"Date: Fri, 04 Dec 2026 12:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: multipart/mixed; boundary=\"=b{i}\"\r\n\r\n"
        f"--=b{i}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{text}\r\n"
        f"--=b{i}\r\nContent-Type: application/pdf; name=\"invoice-{i}.pdf\"\r\n"
        f"Content-Disposition: attachment; filename=\"invoice-{i}.pdf\"\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{b64}--=b{i}--\r\n"
    ).encode()


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    print(f"{path.name}\t{len(data)}")


def main():
    kind, out, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(22)
    if kind == "retry":
        for i in range(n):
            text = f"Dear customer {i},\r\n\r\nplease find your invoice attached.\r\n" * 8
            write(out / "retry" / f"r{i:05d}.eml", message(i, "retry", text, pdf(rng, 1500)))
    elif kind == "campaign":
        same = pdf(rng, 200_000)
        for i in range(n):
            text = f"Dear customer {i},\r\n\r\nyour invoice {rng.randrange(10**9)} is attached.\r\n"
            write(out / "campaign" / f"c{i:05d}.eml", message(i, "campaign", text, same))
            write(out / "cold" / f"k{i:05d}.eml", message(i, "cold", text, pdf(rng, 200_000)))
    else:
        sys.exit(f"unknown kind {kind}")


if __name__ == "__main__":
    main()
