#!/usr/bin/env python3
"""bench/hostile.py DIR [KIND...]: writes the hostile messages of issue 16 (one .eml per kind)
into DIR, and a clean 4 KiB message, for `bench/run hostile`. Deterministic; nothing is kept in
the repository. Prints "kind<TAB>bytes" per file.
`bench/hostile.py --report DIR TS` prints the markdown report from the TSV files bench/run wrote.

Kinds (all sent with the scanners off, as in the issue's probe):
  nest-rfc822     message/rfc822 nested 25,000 deep (a header, a blank line, repeated)
  zip-cd-overlap  a zip whose 2,000 central-directory entries all point at one 15 MiB member
                  (same base name in 2,000 folders; ~50:1, under the walk's ratio limit)
  zip-10k         10,000 central-directory entries of 1 MiB each, same base name in 10,000
                  folders, all pointing at one deflated 1 MiB member
  7z-solid        a solid 7z block of 2,000 members of 1 MiB each (needs `7z`, p7zip-full)
  xz-huge-dict    setup.exe.xz: a PE in an xz stream whose header asks for a 1.5 GiB dictionary
  trailing-dot    evil.js. / evil.vbs... / evil.hta. attached and as zip members
  multipart-deep  multipart/mixed nested 30,000 deep
  parts-100k      100,000 parts
  broken-base64   a 2 MiB attachment of base64 with junk, bad padding and broken lines
"""

import base64
import binascii
import bz2
import io
import lzma
import os
import struct
import subprocess
import sys
import tempfile
import zipfile

MiB = 1 << 20
HEAD = (
    "From: sender@example.org\r\nTo: rcpt@example.com\r\nSubject: hostile {kind}\r\n"
    "Message-ID: <{kind}@example.org>\r\nMIME-Version: 1.0\r\n"
)


def b64(data):
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def with_files(kind, files):
    """A multipart/mixed message with a short text and each (name, ctype, data) attached."""
    out = [HEAD.format(kind=kind).encode(),
           b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
           b"Content-Type: text/plain\r\n\r\nsee attached\r\n"]
    for name, ctype, data in files:
        out.append(
            f'--b\r\nContent-Type: {ctype}; name="{name}"\r\n'
            f'Content-Disposition: attachment; filename="{name}"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n".encode())
        out.append(b64(data))
    out.append(b"--b--\r\n")
    return b"".join(out)


def raw_zip(entries, shared=None):
    """A zip written by hand: entries are (name, method, crc, csize, usize, data); with `shared`
    (one such entry) every central-directory entry points at its one local header instead."""
    body = io.BytesIO()
    cd = []

    def local(name, method, crc, csize, usize, data):
        off = body.tell()
        n = name.encode()
        body.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21,
                               crc, csize, usize, len(n), 0) + n + data)
        return off

    if shared:
        off = local(*shared)
        for name, method, crc, csize, usize, _ in entries:
            cd.append((name, method, crc, csize, usize, off))
    else:
        for e in entries:
            cd.append(e[:5] + (local(*e),))
    start = body.tell()
    for name, method, crc, csize, usize, off in cd:
        n = name.encode()
        body.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21,
                               crc, csize, usize, len(n), 0, 0, 0, 0, 0, off) + n)
    size = body.tell() - start
    count = min(len(cd), 0xFFFF)
    body.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, size, start, 0))
    return body.getvalue()


def zip_cd_overlap():
    # Zeros with a random byte every 160: deflates about 50:1, under the walk's 100:1 ratio
    # limit, so the member is read in full (as in the 375 KB probe).
    import random
    rnd = random.Random(16)
    buf = bytearray(15 * MiB)
    for i in range(0, len(buf), 160):
        buf[i] = rnd.randrange(256)
    data = bytes(buf)
    packed = zlib_raw(data)
    crc = binascii.crc32(data)
    shared = ("d0/same.bin", 8, crc, len(packed), len(data), packed)
    entries = [(f"d{i}/same.bin", 8, crc, len(packed), len(data), b"") for i in range(2000)]
    return with_files("zip-cd-overlap", [("files.zip", "application/zip", raw_zip(entries, shared))])


def zlib_raw(data):
    import zlib
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def zip_10k():
    # 10,000 central-directory entries, the same base name in 10,000 folders, all pointing at one
    # deflated 1 MiB member (a member may always expand to 1 MiB, whatever its ratio): 10,000 x
    # 1 MiB to inflate from a 0.6 MB zip, as in the 712 KB probe.
    data = bytes(MiB)
    packed = zlib_raw(data)
    crc = binascii.crc32(data)
    shared = ("d0/same.bin", 8, crc, len(packed), len(data), packed)
    entries = [(f"d{i}/same.bin", 8, crc, len(packed), len(data), b"") for i in range(10000)]
    return with_files("zip-10k", [("files.zip", "application/zip", raw_zip(entries, shared))])


def solid_7z():
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "src")
        os.mkdir(src)
        block = bytes(MiB)
        for i in range(2000):
            # Each member differs in its first bytes, so none is a duplicate.
            with open(os.path.join(src, f"f{i:04}.bin"), "wb") as f:
                f.write(i.to_bytes(4, "big") + block[4:])
        out = os.path.join(d, "a.7z")
        subprocess.run(["7z", "a", "-t7z", "-ms=on", "-mx=9", "-md=64m", out, src + "/"],
                       check=True, stdout=subprocess.DEVNULL)
        with open(out, "rb") as f:
            data = f.read()
    return with_files("7z-solid", [("files.7z", "application/x-7z-compressed", data)])


def pe():
    d = bytearray(b"MZ" + bytes(0x3E))
    d[0x3C] = 0x40
    return bytes(d) + b"PE\0\0" + bytes(512)


def xz_huge_dict():
    data = lzma.compress(pe(), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64,
                         filters=[{"id": lzma.FILTER_LZMA2, "dict_size": MiB}])
    b = bytearray(data)
    # Stream header (12 bytes), then the block header: size byte (real size = (b+1)*4), flags,
    # filter ID 0x21 (LZMA2), properties size 1, the dictionary byte; CRC32 in its last 4 bytes.
    hs = (b[12] + 1) * 4
    hdr = b[12:12 + hs]
    i = hdr.index(b"\x21\x01", 2)
    hdr[i + 2] = 37  # (2 | 1) << (37 // 2 + 11) = 3 << 29 = 1.5 GiB
    hdr[-4:] = struct.pack("<I", binascii.crc32(bytes(hdr[:-4])))
    b[12:12 + hs] = hdr
    return with_files("xz-huge-dict", [("setup.exe.xz", "application/x-xz", bytes(b))])


def trailing_dot():
    names = ["evil.js.", "evil.vbs...", "evil.hta. "]
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w") as zf:
        for n in names:
            zf.writestr("dir/" + n, b"WScript.Echo 1\r\n")
    files = [(n, "application/octet-stream", b"WScript.Echo 1\r\n") for n in names]
    return with_files("trailing-dot", files + [("files.zip", "application/zip", z.getvalue())])


def nest_rfc822(depth=25000):
    level = b"Subject: x\r\nContent-Type: message/rfc822\r\n\r\n"
    return HEAD.format(kind="nest-rfc822").encode() + level * depth + b"Subject: end\r\n\r\nend\r\n"


def multipart_deep(depth=30000):
    out = [HEAD.format(kind="multipart-deep").encode()]
    for i in range(depth):
        out.append(f'Content-Type: multipart/mixed; boundary="{i}"\r\n\r\n--{i}\r\n'.encode())
    out.append(b"Content-Type: text/plain\r\n\r\ndeep\r\n")
    for i in reversed(range(depth)):
        out.append(f"--{i}--\r\n".encode())
    return b"".join(out)


def parts_100k(n=100000):
    out = [HEAD.format(kind="parts-100k").encode(),
           b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n']
    out.append(b"--b\r\n\r\nx\r\n" * n)
    out.append(b"--b--\r\n")
    return b"".join(out)


def broken_base64():
    good = b64(bytes(range(256)) * (2 * MiB // 256)).split(b"\r\n")
    lines = []
    for i, l in enumerate(good):
        if i % 7 == 0:
            l = l[:30] + b"!!==**" + l[30:]
        if i % 11 == 0:
            l = l[:-3] + b"="
        lines.append(l)
    return (HEAD.format(kind="broken-base64").encode()
            + b'Content-Type: application/octet-stream; name="data.bin"\r\n'
              b"Content-Transfer-Encoding: base64\r\n\r\n" + b"\r\n".join(lines) + b"\r\n")


def clean():
    line = b"X" * 78 + b"\r\n"
    return (HEAD.format(kind="clean").replace("hostile ", "").encode()
            + b"Content-Type: text/plain\r\n\r\n" + line * 52)


KINDS = {
    "nest-rfc822": nest_rfc822,
    "zip-cd-overlap": zip_cd_overlap,
    "zip-10k": zip_10k,
    "7z-solid": solid_7z,
    "xz-huge-dict": xz_huge_dict,
    "trailing-dot": trailing_dot,
    "multipart-deep": multipart_deep,
    "parts-100k": parts_100k,
    "broken-base64": broken_base64,
}


def tsv(path):
    try:
        with open(path) as f:
            rows = [l.rstrip("\n").split("\t") for l in f if l.strip()]
    except FileNotFoundError:
        return []
    return [dict(zip(rows[0], r)) for r in rows[1:]]


def report(d, ts):
    """The markdown report of `bench/run hostile` from DIR's one/once/clean.tsv."""
    one, once, clean = tsv(f"{d}/one.tsv"), tsv(f"{d}/once.tsv"), tsv(f"{d}/clean.tsv")
    p = print
    p(f"# bench/run hostile — {ts}\n")
    p("postsift with its defaults, scanners off (the MIME walk runs), on loopback; "
      "bench/hostile.py's messages (issue 16).\n")
    p("## Each hostile message alone\n")
    p("CPU: postsift's user+system time from the start of the session until it is idle again "
      "(the walk may go on after the reply). Peak RSS: postsift's VmHWM after `clear_refs`. "
      "Target: no message over 2 s of CPU.\n")
    p("| kind | message bytes | CPU s | wall s | peak RSS MiB | reply | postsift survived | ≤ 2 s CPU |")
    p("|---|---:|---:|---:|---:|---|---|---|")
    for r in one:
        cpu = float(r["cpu_s"])
        ok = r["alive"] == "yes" and cpu <= 2.0
        p(f"| {r['kind']} | {int(r['bytes']):,} | {cpu:.2f} | {r['wall_s']} | "
          f"{int(r['hwm_kb'] or 0) / 1024:.0f} | {r['reply'][:70].replace('|', '/')} | {r['alive']} | "
          f"{'met' if ok else '**missed**'} |")
    dead = [r["kind"] for r in one if r["alive"] != "yes"]
    if dead:
        p(f"\nLeft out of the runs below because postsift died on them: {', '.join(dead)}.")
    p("\n## Hostile messages at once\n")
    for r in once:
        limit = int(r["max_memory"] or 134217728)
        hwm = int(r["hwm_kb"] or 0) * 1024
        target = limit + 64 * (1 << 20)
        p(f"{r['at_once']} messages at once ({r['kinds']} in turn): peak RSS "
          f"**{hwm / (1 << 20):.0f} MiB** against the target < server.max_memory + 64 MiB = "
          f"{target / (1 << 20):.0f} MiB: {'met' if hwm < target and r['alive'] == 'yes' else '**missed**'}; "
          f"{r['ok']} got a 2xx; postsift survived: {r['alive']}.")
    if not once:
        p("(not run: no hostile kind left that postsift survives)")
    p("\n## Clean mail beside hostile mail\n")
    p("| run | clean sessions | hostile sessions | clean messages | ok | wall s | clean msgs/s | postsift survived |")
    p("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in clean:
        p(f"| {r['run']} | {r['clean_conc']} | {r['hostile_conc']} | {r['clean_msgs']} | {r['clean_ok']} | "
          f"{r['wall_s']} | {r['mps']} | {r['alive']} |")
    base = [r for r in clean if r["run"] == "alone"]
    mix = [r for r in clean if r["run"] == "beside"]
    if base and mix and float(base[0]["mps"] or 0) > 0:
        ratio = float(mix[0]["mps"] or 0) / float(base[0]["mps"])
        p(f"\nClean throughput with one hostile session in {int(mix[0]['clean_conc']) + 1}: "
          f"**{ratio * 100:.0f} %** of the run without hostile mail (target ≥ 50 %: "
          f"{'met' if ratio >= 0.5 else '**missed**'}).")


def main():
    if sys.argv[1] == "--report":
        report(sys.argv[2], sys.argv[3])
        return
    d = sys.argv[1]
    kinds = sys.argv[2:] or list(KINDS)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "clean.eml"), "wb") as f:
        f.write(clean())
    for k in kinds:
        data = KINDS[k]()
        with open(os.path.join(d, k + ".eml"), "wb") as f:
            f.write(data)
        print(f"{k}\t{len(data)}", flush=True)


if __name__ == "__main__":
    main()
