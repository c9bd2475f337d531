#!/usr/bin/env python3
"""bench/authmsg.py OUTDIR DOMAIN:TTL|@FILE... -- the mail-authentication benchmark's messages and zone.

For each DOMAIN (with the TTL its records get), writes OUTDIR/DOMAIN.eml: a 4 KiB plain-text
message From sender@DOMAIN, DKIM-signed (rsa-sha256, relaxed/relaxed, d=DOMAIN, s=bench) with
the RSA 2048 key OUTDIR/dkim.key (made with openssl if absent), and appends to OUTDIR/zone.txt
(zone-file lines, as unbound's local-data takes them) what verifying it looks up:

  DOMAIN              TXT "v=spf1 ip4:198.51.100.0/24 include:_spf.DOMAIN -all"  (MAIL FROM)
  _spf.DOMAIN         TXT "v=spf1 ip4:192.0.2.0/24 -all"   (the include: a chain of two lookups)
  mx.DOMAIN           TXT "v=spf1 ip4:192.0.2.10 -all"     (the HELO identity)
  bench._domainkey.DOMAIN TXT "v=DKIM1; k=rsa; p=..."      (the DKIM key)
  _dmarc.DOMAIN       TXT "v=DMARC1; p=reject"             (DMARC)

@FILE: one DOMAIN:TTL a line (the cold runs' domains, a new one per message: too many for a
command line). Prints DOMAIN<TAB>size of its message for each.

The client to send it as: XFORWARD ADDR=192.0.2.10 HELO=mx.DOMAIN, MAIL FROM sender@DOMAIN.
Every check passes. Deterministic apart from the key (and so b= and p=): fixed text, Date,
Message-ID and t=; RSA PKCS#1 v1.5 signatures are deterministic for a given key.
Python standard library and the openssl command only.
"""
import base64
import hashlib
import os
import random
import re
import subprocess
import sys

CLIENT_IP = "192.0.2.10"
SELECTOR = "bench"
SIGNED = ["from", "to", "subject", "date", "message-id", "mime-version", "content-type"]
SIZE = 4096


def relaxed_header(name, value):
    value = re.sub(r"\r\n(?=[ \t])", "", value)
    value = re.sub(r"[ \t]+", " ", value).strip(" ")
    return f"{name.lower()}:{value}\r\n"


def relaxed_body(body):
    lines = body.split("\r\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [re.sub(r"[ \t]+", " ", line).rstrip(" ") for line in lines]
    while lines and lines[-1] == "":
        lines.pop()
    return "".join(line + "\r\n" for line in lines)


def body_text(domain, length):
    rnd = random.Random(20261202)
    words = ("the invoice shipment meeting agenda quarterly report attached please review "
             "regards thanks schedule budget update project deadline customer order").split()
    lines = [f"Hello from {domain},", ""]
    text = "\r\n".join(lines) + "\r\n"
    while len(text) < length:
        line = " ".join(rnd.choice(words) for _ in range(11)).capitalize() + "."
        text += line + "\r\n"
    return text[:length].rsplit("\r\n", 1)[0] + "\r\n"


def dkim_record(key):
    der = subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    p = base64.b64encode(der).decode()
    txt = f"v=DKIM1; k=rsa; p={p}"
    # A TXT string holds at most 255 bytes: several strings, concatenated by the reader.
    return " ".join(f'"{txt[i:i + 250]}"' for i in range(0, len(txt), 250))


def sign(key, data):
    return subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=data,
                          check=True, capture_output=True).stdout


def message(domain, key, body_len, signer=sign):
    headers = [
        ("From", f"Bench Sender <sender@{domain}>"),
        ("To", "<rcpt@example.org>"),
        ("Subject", f"Quarterly report from {domain}"),
        ("Date", "Wed, 02 Dec 2026 04:00:00 +0000"),
        ("Message-ID", f"<auth-bench.1@{domain}>"),
        ("MIME-Version", "1.0"),
        ("Content-Type", "text/plain; charset=us-ascii"),
    ]
    body = body_text(domain, body_len)
    bh = base64.b64encode(hashlib.sha256(relaxed_body(body).encode()).digest()).decode()
    sig = (f"v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s={SELECTOR};\r\n"
           f"\tt=1796184000; h={':'.join(SIGNED)};\r\n\tbh={bh};\r\n\tb=")
    data = "".join(relaxed_header(n, v) for n, v in headers)
    data += relaxed_header("DKIM-Signature", sig).rstrip("\r\n")
    b = signer(key, data.encode())
    b64 = base64.b64encode(b).decode()
    folded = "\r\n\t".join(b64[i:i + 72] for i in range(0, len(b64), 72))
    out = f"DKIM-Signature: {sig}{folded}\r\n"
    out += "".join(f"{n}: {v}\r\n" for n, v in headers)
    return out + "\r\n" + body


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    key = os.path.join(out, "dkim.key")
    if not os.path.exists(key):
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                        "rsa_keygen_bits:2048", "-out", key], check=True, capture_output=True)
    record = dkim_record(key)
    zone = []
    specs = []
    for arg in sys.argv[2:]:
        if arg.startswith("@"):
            specs += [line.strip() for line in open(arg[1:]) if line.strip()]
        else:
            specs.append(arg)
    # A 2048-bit key's signature is 256 bytes whatever it signs: a stand-in sizes the headers.
    key_bytes = len(sign(key, b"size"))
    for arg in specs:
        domain, ttl = arg.split(":")
        # Fill to SIZE bytes in all: the headers' length is known once signed (here: sized) once.
        head = len(message(domain, key, 100, lambda k, d: b"\0" * key_bytes).split("\r\n\r\n", 1)[0]) + 4
        msg = message(domain, key, SIZE - head)
        with open(os.path.join(out, f"{domain}.eml"), "w", newline="") as f:
            f.write(msg)
        zone += [
            f'{domain}. {ttl} IN TXT "v=spf1 ip4:198.51.100.0/24 include:_spf.{domain} -all"',
            f'_spf.{domain}. {ttl} IN TXT "v=spf1 ip4:192.0.2.0/24 -all"',
            f'mx.{domain}. {ttl} IN TXT "v=spf1 ip4:{CLIENT_IP} -all"',
            f"{SELECTOR}._domainkey.{domain}. {ttl} IN TXT {record}",
            f'_dmarc.{domain}. {ttl} IN TXT "v=DMARC1; p=reject"',
        ]
        print(f"{domain}\t{len(msg.encode())}")
    with open(os.path.join(out, "zone.txt"), "w") as f:
        f.write("\n".join(zone) + "\n")


if __name__ == "__main__":
    main()
