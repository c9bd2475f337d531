#!/usr/bin/env python3
"""Writes bench/run's message mix: ten RFC 5322 files and mix.list, the order loadgen sends them in.

    bench/mix.py OUTDIR

The mix, per ten messages: six plain-text mails (1.5–6 KiB; two of them quoted-printable UTF-8),
three HTML newsletters (multipart/alternative, quoted-printable text and HTML, 25–35 KiB) and one
business mail of about 100 KiB with a PDF (text pages and a Flate image) and a zip (a CSV, a
text file and a JSON file) as base64 attachments. Nothing in it is banned or infected.

Deterministic: a fixed seed, fixed dates and Message-IDs, fixed boundaries, zip members with a
fixed timestamp, zlib at a fixed level; the same files byte for byte on every run (SHA256SUMS
is written beside them). Standard library only.
"""
import base64
import hashlib
import io
import os
import random
import sys
import zipfile
import zlib

SEED = 20261201

WORDS = (
    "the of and to in is for on that with as this be are by we it from at you your our will an "
    "have not or can all has more about new which their one also was but any time team project "
    "report meeting week month quarter customer order invoice delivery update schedule review "
    "please thanks regards attached document figures budget plan next today tomorrow monday "
    "friday office client service support issue release version change request draft final "
    "agreed price offer contract account payment due date shipping warehouse stock product sales "
    "market results growth summary notes call agenda minutes decision action item owner status"
).split()
NAMES = ["Alice Martin", "Bob Keller", "Carla Rossi", "David Chen", "Eva Novak", "Farid Haddad",
         "Greta Olsen", "Hugo Lambert", "Ines Duarte", "Jonas Weber"]
DOMAINS = ["example.com", "example.org", "example.net"]


def sentence(r, lo=6, hi=18):
    w = [r.choice(WORDS) for _ in range(r.randint(lo, hi))]
    return w[0].capitalize() + " " + " ".join(w[1:]) + r.choice([".", ".", ".", "?", "!"])


def paragraph(r, n=None):
    return " ".join(sentence(r) for _ in range(n or r.randint(2, 6)))


def fill(text, width=72):
    """Greedy word wrap."""
    out, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        out.append(line)
    return "\r\n".join(out)


def qp(text):
    """Quoted-printable (RFC 2045) of UTF-8 text with CRLF line ends; soft breaks at 76."""
    out = []
    for line in text.split("\r\n"):
        enc = ""
        for b in line.encode("utf-8"):
            c = chr(b)
            enc += c if (33 <= b <= 126 and c != "=") or b == 32 else f"={b:02X}"
        if enc.endswith(" "):
            enc = enc[:-1] + "=20"
        while len(enc) > 76:
            cut = 75
            while enc[cut - 1] == "=" or enc[cut - 2] == "=":  # don't split an =XX
                cut -= 1
            out.append(enc[:cut] + "=")
            enc = enc[cut:]
        out.append(enc)
    return "\r\n".join(out)


def b64(data):
    s = base64.b64encode(data).decode()
    return "\r\n".join(s[i:i + 76] for i in range(0, len(s), 76))


def headers(r, n, subject, extra):
    sender, rcpt = r.sample(NAMES, 2)
    addr = lambda name, d: f"{name.split()[0].lower()}.{name.split()[1].lower()}@{d}"
    d = r.choice(DOMAINS)
    return (
        f"Received: from mail.{d} (mail.{d} [192.0.2.{10 + n}])\r\n"
        f"\tby mx.example.com (Postfix) with ESMTPS id 4Mix{n:04d}\r\n"
        f"\tfor <{addr(rcpt, 'example.com')}>; Tue, 1 Dec 2026 09:{n:02d}:00 +0000 (UTC)\r\n"
        f"From: {sender} <{addr(sender, d)}>\r\n"
        f"To: {rcpt} <{addr(rcpt, 'example.com')}>\r\n"
        f"Subject: {subject}\r\n"
        f"Date: Tue, 1 Dec 2026 09:{n:02d}:00 +0000\r\n"
        f"Message-ID: <mix-{n:04d}.{SEED}@{d}>\r\n"
        f"MIME-Version: 1.0\r\n{extra}\r\n"
    )


def text_mail(r, n, size, utf8):
    body = []
    greeting = r.choice(["Hi", "Hello", "Dear", "Good morning"]) + " " + r.choice(NAMES).split()[0] + ","
    body.append(greeting)
    while sum(len(p) for p in body) < size - 300:
        body.append(fill(paragraph(r)))
    if utf8:
        body.append(fill("Schöne Grüße aus Zürich — bis nächste Woche, und danke für die Übersicht: "
                         "3 × 20 € sind 60 €."))
    body.append("Best regards,\r\n" + r.choice(NAMES) + "\r\n-- \r\nExample Ltd · 1 Example Street · "
                "+1 555 0100")
    text = "\r\n\r\n".join(body) + "\r\n"
    subject = sentence(r, 3, 7).rstrip(".?!")
    if utf8:
        h = headers(r, n, subject, "Content-Type: text/plain; charset=utf-8\r\n"
                    "Content-Transfer-Encoding: quoted-printable\r\n")
        return (h + qp(text)).encode()
    h = headers(r, n, subject, "Content-Type: text/plain; charset=us-ascii\r\n"
                "Content-Transfer-Encoding: 7bit\r\n")
    return (h + text).encode()


def newsletter(r, n, size):
    items, plain = [], []
    while sum(len(i) for i in items) < size * 0.55:
        title = sentence(r, 4, 9).rstrip(".?!")
        para = paragraph(r, r.randint(3, 6))
        url = f"https://news.example.com/r/{r.getrandbits(48):012x}?utm_source=newsletter&amp;utm_medium=email&amp;utm_campaign=dec26"
        items.append(
            '<tr><td style="padding:16px 24px;border-bottom:1px solid #e5e5e5;font-family:Helvetica,Arial,'
            'sans-serif;font-size:15px;line-height:22px;color:#333333;">\r\n'
            f'<h2 style="margin:0 0 8px 0;font-size:19px;color:#114477;">{title}</h2>\r\n'
            f'<img src="https://cdn.example.com/img/{r.getrandbits(32):08x}.jpg" width="552" height="200" '
            f'alt="" style="display:block;border:0;width:100%;max-width:552px;">\r\n'
            f'<p style="margin:8px 0;">{para}</p>\r\n'
            f'<a href="{url}" style="color:#1a73e8;text-decoration:underline;">Read more</a>\r\n</td></tr>\r\n')
        plain.append(f"{title}\r\n{'-' * len(title)}\r\n{fill(para)}\r\nRead more: {url.replace('&amp;', '&')}\r\n")
    html = (
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" '
        '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\r\n'
        '<html xmlns="http://www.w3.org/1999/xhtml"><head><meta http-equiv="Content-Type" '
        'content="text/html; charset=utf-8"><meta name="viewport" content="width=device-width">\r\n'
        '<title>Example News</title><style type="text/css">body{margin:0;padding:0;} '
        'table{border-collapse:collapse;} @media only screen and (max-width:600px){.wrap{width:100% '
        '!important;}}</style></head>\r\n<body style="margin:0;padding:0;background:#f4f4f4;">\r\n'
        '<table class="wrap" width="600" align="center" cellpadding="0" cellspacing="0" '
        'style="background:#ffffff;">\r\n<tr><td style="padding:24px;background:#114477;color:#ffffff;'
        'font-family:Helvetica,Arial,sans-serif;font-size:24px;">Example News — December</td></tr>\r\n'
        + "".join(items) +
        '<tr><td style="padding:24px;font-family:Helvetica,Arial,sans-serif;font-size:12px;color:#888888;">'
        'You receive this because you subscribed at example.com. <a href="https://news.example.com/'
        f'unsubscribe?u={r.getrandbits(64):016x}">Unsubscribe</a> · Example Ltd, 1 Example Street'
        f'<img src="https://news.example.com/o/{r.getrandbits(64):016x}.gif" width="1" height="1" alt="">'
        '</td></tr>\r\n</table>\r\n</body></html>\r\n')
    text = "Example News — December\r\n\r\n" + "\r\n".join(plain) + "\r\nUnsubscribe: https://news.example.com/unsubscribe\r\n"
    bd = f"=_alt_{n:04d}_{SEED}"
    h = headers(r, n, "Example News: " + sentence(r, 3, 6).rstrip(".?!"),
                "List-Unsubscribe: <https://news.example.com/unsubscribe>\r\n"
                "Precedence: bulk\r\n"
                f'Content-Type: multipart/alternative; boundary="{bd}"\r\n')
    return (h + f"This is a multi-part message in MIME format.\r\n\r\n--{bd}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            + qp(text) + f"\r\n--{bd}\r\n"
            "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            + qp(html) + f"\r\n--{bd}--\r\n").encode()


def pdf(r, pages=9):
    """A small valid PDF 1.4: text pages (Flate content streams) and one Flate gray image."""
    objs = {}
    objs[1] = b"<< /Type /Catalog /Pages 2 0 R >>"
    font = 3
    objs[font] = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    w, h = 200, 160
    # a noisy gradient: realistic scan-like data, compresses a little
    pix = bytes((x + y + r.randint(0, 90)) & 0xFF for y in range(h) for x in range(w))
    img = zlib.compress(pix, 6)
    objs[4] = (f"<< /Type /XObject /Subtype /Image /Width {w} /Height {h} /ColorSpace /DeviceGray "
               f"/BitsPerComponent 8 /Filter /FlateDecode /Length {len(img)} >>\nstream\n").encode() + img + b"\nendstream"
    kids = []
    nxt = 5
    for p in range(pages):
        lines = [fill(paragraph(r, 8), 90).split("\r\n") for _ in range(3)]
        ops = ["BT /F1 11 Tf 56 780 Td 14 TL", f"(Quarterly report, page {p + 1}) Tj T*"]
        for para in lines:
            for ln in para:
                ops.append("(" + ln.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") '")
            ops.append("T*")
        ops.append("ET")
        if p == 0:
            ops.append("q 320 0 0 240 140 80 cm /Im1 Do Q")
        content = zlib.compress("\n".join(ops).encode(), 6)
        cid, pid = nxt, nxt + 1
        nxt += 2
        objs[cid] = f"<< /Length {len(content)} /Filter /FlateDecode >>\nstream\n".encode() + content + b"\nendstream"
        objs[pid] = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents {cid} 0 R "
                     f"/Resources << /Font << /F1 {font} 0 R >> /XObject << /Im1 4 0 R >> >> >>").encode()
        kids.append(pid)
    objs[2] = f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] /Count {len(kids)} >>".encode()
    objs[nxt] = b"<< /Title (Quarterly report) /Producer (bench/mix.py) /CreationDate (D:20261201090000Z) >>"
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for i in sorted(objs):
        offsets[i] = len(out)
        out += f"{i} 0 obj\n".encode() + objs[i] + b"\nendobj\n"
    xref = len(out)
    size = max(objs) + 1
    out += f"xref\n0 {size}\n0000000000 65535 f \n".encode()
    for i in range(1, size):
        out += f"{offsets[i]:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {size} /Root 1 0 R /Info {nxt} 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def zip_archive(r):
    rows = ["date,region,product,units,revenue"]
    for i in range(1800):
        rows.append(f"2026-{1 + i % 12:02d}-{1 + i % 28:02d},{r.choice(['north', 'south', 'east', 'west'])},"
                    f"P-{r.randint(1000, 9999)},{r.randint(1, 500)},{r.randint(100, 99999)}.{r.randint(0, 99):02d}")
    members = [
        ("q4/sales.csv", "\r\n".join(rows).encode() + b"\r\n"),
        ("q4/notes.txt", "\r\n\r\n".join(fill(paragraph(r, 6)) for _ in range(8)).encode()),
        ("q4/summary.json", ("{\"quarter\": \"2026-Q4\", \"figures\": [" + ", ".join(
            str(r.randint(0, 10 ** 6)) for _ in range(400)) + "]}").encode()),
    ]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members:
            zi = zipfile.ZipInfo(name, date_time=(2026, 12, 1, 9, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            zi.create_system = 3
            z.writestr(zi, data, compresslevel=6)
    return buf.getvalue()


def attachments(r, n):
    bd = f"=_mixed_{n:04d}_{SEED}"
    body = "Hi team,\r\n\r\n" + "\r\n\r\n".join(fill(paragraph(r)) for _ in range(5)) + \
        "\r\n\r\nThe report and the raw figures are attached.\r\n\r\nRegards,\r\nFinance\r\n"
    p, z = pdf(r), zip_archive(r)
    h = headers(r, n, "Q4 report and figures", f'Content-Type: multipart/mixed; boundary="{bd}"\r\n')
    return (h + f"--{bd}\r\nContent-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
            + body + f"\r\n--{bd}\r\n"
            'Content-Type: application/pdf; name="Q4-report.pdf"\r\n'
            'Content-Disposition: attachment; filename="Q4-report.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
            + b64(p) + f"\r\n--{bd}\r\n"
            'Content-Type: application/zip; name="Q4-figures.zip"\r\n'
            'Content-Disposition: attachment; filename="Q4-figures.zip"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
            + b64(z) + f"\r\n--{bd}--\r\n").encode(), len(p), len(z)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    r = random.Random(SEED)
    files = {}
    for i, (size, utf8) in enumerate([(1500, False), (2500, True), (3500, False), (4000, False),
                                      (5000, True), (6000, False)]):
        files[f"text-{i + 1}.eml"] = text_mail(r, i + 1, size, utf8)
    for i, size in enumerate([25000, 30000, 35000]):
        files[f"news-{i + 1}.eml"] = newsletter(r, 11 + i, size)
    att, plen, zlen = attachments(r, 21)
    files["attach-1.eml"] = att
    # One in ten: text, news, text, text, news, text, attach, text, news, text.
    order = ["text-1.eml", "news-1.eml", "text-2.eml", "text-3.eml", "news-2.eml", "text-4.eml",
             "attach-1.eml", "text-5.eml", "news-3.eml", "text-6.eml"]
    sums = []
    for name, data in sorted(files.items()):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        sums.append(f"{hashlib.sha256(data).hexdigest()}  {name}")
    with open(os.path.join(out, "mix.list"), "w") as f:
        f.write("\n".join(order) + "\n")
    with open(os.path.join(out, "SHA256SUMS"), "w") as f:
        f.write("\n".join(sums) + "\n")
    mean = sum(len(files[n]) for n in order) / len(order)
    for name in sorted(files):
        print(f"{name}\t{len(files[name])}")
    print(f"pdf\t{plen}\nzip\t{zlen}\nmean\t{mean:.0f}")


if __name__ == "__main__":
    main()
