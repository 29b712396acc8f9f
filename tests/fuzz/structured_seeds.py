#!/usr/bin/env python3
"""Writes seeds/structured/ from seeds/headers/: the same requests in the
`arbitrary` encoding the structured target reads (arbitrary 1.x: u8 and
u16 little-endian from the front; each Vec element after a continuation
byte 1, a 0 ends it). Run from tests/fuzz after changing either:
`python3 structured_seeds.py`."""
import pathlib, re, struct

src = pathlib.Path("fuzz_targets/structured.rs").read_text()
def table(name):
    body = re.search(r"const %s: [^=]*= &\[(.*?)\];" % name, src, re.S).group(1)
    return [s.encode() for s in re.findall(r'b?"([^"]*)"', body)]
NAMES, METHODS, PATHS = table("NAMES"), table("METHODS"), table("PATHS")

def decode_map(m):
    (count,) = struct.unpack_from("<I", m, 0)
    at, pairs = 4 + 8 * count, []
    for i in range(count):
        nl, vl = struct.unpack_from("<II", m, 4 + 8 * i)
        pairs.append((m[at:at + nl], m[at + nl + 1:at + nl + 1 + vl]))
        at += nl + vl + 2
    return pairs

def vec(items):
    return b"".join(b"\x01" + i for i in items) + b"\x00"

out = pathlib.Path("seeds/structured")
out.mkdir(exist_ok=True)
for seed in sorted(pathlib.Path("seeds/headers").iterdir()):
    data = seed.read_bytes()
    selector, (length,) = data[0], struct.unpack_from("<H", data, 1)
    pairs, body = decode_map(data[3:3 + length]), data[3 + length:]
    d = dict(pairs)
    method = METHODS.index(d.get(b":method", b"GET"))
    path = next((i for i, p in enumerate(PATHS) if p.startswith(d.get(b":path", b"/"))), len(PATHS) - 1)
    fields = [bytes([NAMES.index(n)]) + vec(bytes([b]) for b in v)
              for n, v in pairs if n in NAMES and n not in (b":method", b":path")]
    # twice, 1 s apart: replay, reuse and behaviour see a repeat
    head = bytes([selector, method, path, 1]) + struct.pack("<H", 1000)
    (out / seed.name).write_bytes(head + vec(fields) + vec(bytes([b]) for b in body))
