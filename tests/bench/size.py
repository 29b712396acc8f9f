#!/usr/bin/env python3
"""What each dependency and each stage adds to palisade.wasm (`make size`).

Issue 14 item 4: the whole product must stay within 1 MiB (a Kubernetes
ConfigMap's cap), so the size is budgeted per stage. This script reads two
builds of the filter made by `make size` with symbol names kept (the shipped
build is stripped):

- the cargo output (LLVM's code, before wasm-opt), DWARF stripped, names
  kept: every function is where the compiler put it, so attributing its
  bytes to a crate or stage by its (demangled) name is exact, except for
  what LLVM inlined into another crate's function;
- the same after `wasm-opt -Oz -g` (the release flags plus "keep names").
  wasm-opt inlines further (a function called once disappears into its
  caller), so its per-name figures move bytes to callers: shown, but the
  per-group estimate of the shipped size is the proportional one below.

Estimate of the shipped bytes of a group: its bytes before wasm-opt times the
shrink of their section in the shipped build (code section for functions,
data section for data, the rest of the module for the rest). The sum of the
estimates is the shipped file's size exactly; each group's share is an
estimate (wasm-opt does not shrink every crate by the same ratio).

Attribution by name: a function belongs to the crate its name starts with;
a generic of std/alloc/core or of serde/serde_json/serde_path_to_error whose
name mentions a type of the core crate (`palisade::stages::auth::...`) is
counted as "generic code monomorphized for" that stage (or shared part).
Both the core and the filter crate are named `palisade`: the core's paths
start with `palisade::{config,core,pipeline,stages,state}`, everything else
under `palisade::` is the filter's glue (filters/palisade). Data segments
(.rodata: strings, tables, the bot model) cannot be attributed by name.

Standard library only (no venv needed); twiggy is passed in (`make size`
installs it into target/tools).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1 << 20

# Parts of the core crate (`palisade::<module>`).
CORE_MODULES = ("config", "core", "pipeline", "stages", "state")

# Crate families shown as one row, with what in palisade uses them.
FAMILIES: dict[str, tuple[str, ...]] = {
    "rsa (RS*/PS* JWT): rsa, num-bigint-dig, num-*": (
        "rsa",
        "num_bigint_dig",
        "num_bigint",
        "num_integer",
        "num_traits",
        "num_iter",
        "pkcs1",
        "pkcs8",
        "spki",
        "der",
        "const_oid",
    ),
    "p384 (ES384 JWT)": ("p384",),
    "p256 (ES256 JWT)": ("p256",),
    "elliptic curves, shared: ecdsa, elliptic-curve, primeorder, crypto-bigint, ff, group": (
        "ecdsa",
        "elliptic_curve",
        "primeorder",
        "crypto_bigint",
        "ff",
        "group",
        "sec1",
        "base16ct",
        "rfc6979",
        "primefield",
        "hybrid_array",
        "ctutils",
        "cmov",
        "cpubits",
        "wnaf",
    ),
    "ed25519-compact (EdDSA JWT)": ("ed25519_compact",),
    "jwt-compact (JWK parsing, JWS algorithms)": ("jwt_compact",),
    "sha2, hmac, digest (JWT, signatures, digests, API keys)": (
        "sha2",
        "hmac",
        "digest",
        "block_buffer",
        "crypto_common",
        "generic_array",
        "subtle",
        "signature",
    ),
    "serde (derive support, de/ser traits)": ("serde", "serde_core"),
    "serde_json, itoa, zmij (number formatting)": ("serde_json", "itoa", "zmij"),
    "serde_path_to_error (config error paths)": ("serde_path_to_error",),
    "regex-lite (route patterns)": ("regex_lite",),
    "sfv (RFC 9421 Signature-Input)": ("sfv",),
    "form_urlencoded, percent-encoding (login/refresh bodies)": (
        "form_urlencoded",
        "percent_encoding",
    ),
    "base64": ("base64",),
    "siphasher": ("siphasher",),
    "log": ("log",),
    "proxy-wasm SDK": ("proxy_wasm",),
    "hashbrown (HashMap)": ("hashbrown",),
    "rand_core, getrandom": ("rand_core", "getrandom", "rand"),
    "anyhow, chrono (jwt-compact's)": ("anyhow", "chrono"),
    "std, alloc, core (not generic over a palisade type)": (
        "std",
        "alloc",
        "core",
        "compiler_builtins",
        "dlmalloc",
        "wasi",
        "panic_abort",
        "memchr",
        "adler2",
        "miniz_oxide",
        "gimli",
        "addr2line",
        "object",
        "unwind",
    ),
}

PANIC_ROW = "std: panic message and backtrace printing (default panic hook, rustc-demangle)"


GENERIC_HOSTS = frozenset(
    {"std", "alloc", "core", "serde", "serde_core", "serde_json", "serde_path_to_error", "hashbrown"}
)

HASH_SUFFIX = re.compile(r"::h[0-9a-f]{16}(\.\d+)?$|\.\d+$")
# v0 mangling (std's, and ours with `-Csymbol-mangling-version=v0`, which
# keeps generic arguments in the names) writes each crate as `name[hash]`.
CRATE_HASH = re.compile(r"\[[0-9a-f]+\]")
PANIC_PRINTING = re.compile(r"\bstd::(panicking|sys::backtrace|backtrace)|\bpanic_unwind\b|\bstd::panic\b")
# A path's first segment: an identifier followed by `::`, not itself after
# `::` or inside an identifier.
PATH_START = re.compile(r"(?<![A-Za-z0-9_:])([A-Za-z_][A-Za-z0-9_]*)::")
CORE_PATH = re.compile(r"palisade::(config|core|pipeline|stages|state)(?:::([a-z_0-9]+))?")
STAGE_PATH = re.compile(r"palisade::(stages)::([a-z_0-9]+)")


@dataclass
class Item:
    name: str
    size: int
    kind: str  # "function", "data" or "other"


@dataclass
class Groups:
    by_family: dict[str, int] = field(default_factory=dict)
    by_part: dict[str, dict[str, int]] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)

    def add_family(self, key: str, n: int) -> None:
        self.by_family[key] = self.by_family.get(key, 0) + n

    def add_part(self, part: str, column: str, n: int) -> None:
        row = self.by_part.setdefault(part, {"own": 0, "generic": 0})
        row[column] += n


def leb128(data: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def sections(path: Path) -> dict[str, int]:
    """Section sizes of a wasm module (payload bytes; custom ones by name)."""
    data = path.read_bytes()
    ids = {1: "type", 2: "import", 3: "function", 4: "table", 5: "memory", 6: "global",
           7: "export", 8: "start", 9: "element", 10: "code", 11: "data", 12: "datacount"}
    out: dict[str, int] = {}
    i = 8
    while i < len(data):
        sid = data[i]
        size, i = leb128(data, i + 1)
        name = ids.get(sid, str(sid))
        if sid == 0:
            n, j = leb128(data, i)
            name = "custom:" + data[j : j + n].decode("utf-8", "replace")
        out[name] = out.get(name, 0) + size
        i += size
    return out


def twiggy_items(twiggy: str, wasm: Path) -> list[Item]:
    raw = subprocess.run(
        [twiggy, "top", "-f", "json", str(wasm)], check=True, capture_output=True, text=True
    ).stdout
    items = []
    for entry in json.loads(raw):
        name, size = entry["name"], int(entry["shallow_size"])
        if name.startswith("data segment") or name.startswith("data["):
            kind = "data"
        elif (
            name.startswith(("custom section", "type[", "export ", "import ", "elem[", "table[",
                             "memory[", "global[", "wasm magic"))
            or name.endswith((" headers", "subsection"))
        ):
            kind = "other"
        else:
            kind = "function"
        items.append(Item(name, size, kind))
    return items


def crate_family(crate: str) -> str:
    if crate == "rustc_demangle":
        return PANIC_ROW
    for family, crates in FAMILIES.items():
        if crate in crates:
            return family
    return f"{crate} (other)"


def core_part(match: re.Match[str]) -> str:
    module, sub = match.group(1), match.group(2)
    if module == "stages" and sub:
        return f"stage {sub}"
    return module


def clean(name: str) -> str:
    return HASH_SUFFIX.sub("", CRATE_HASH.sub("", name))


def classify(item: Item) -> tuple[str, str | None, str]:
    """(family row, core part or None, "own"/"generic") for one item."""
    if item.kind == "data":
        return "data (.rodata/.data: strings, tables, the bot model)", None, "own"
    if item.kind == "other":
        if "names" in item.name or "custom section 'name'" in item.name:
            return "name section (not shipped)", None, "own"
        return "module structure (types, imports, exports, table, headers)", None, "own"
    name = clean(item.name)
    crates = PATH_START.findall(name)
    if not crates:
        if name.startswith("proxy_"):
            return "proxy-wasm SDK", None, "own"
        return "wasi-libc (malloc, string, math)", None, "own"
    first = crates[0]
    core = CORE_PATH.search(name)
    if first == "palisade":
        if core and name.find("palisade::") == core.start():
            # A generic of the configuration module made for one stage's
            # configuration type counts for that stage.
            stage = STAGE_PATH.search(name, core.end())
            if core.group(1) == "config" and stage:
                return "palisade core", core_part(stage), "generic"
            return "palisade core", core_part(core), "own"
        return "palisade filter glue (filters/palisade)", None, "own"
    if first in GENERIC_HOSTS and core:
        return "palisade core", core_part(core), "generic"
    if first in GENERIC_HOSTS:
        # std/serde generics made for a dependency's types count for it
        # (e.g. sorting regex-lite's class ranges, serde_json's maps).
        for other in crates[1:]:
            if other not in GENERIC_HOSTS and other != "palisade":
                return crate_family(other), None, "own"
    if first == "rustc_demangle" or (first in ("std", "core", "alloc") and PANIC_PRINTING.search(name)):
        return PANIC_ROW, None, "own"
    return crate_family(first), None, "own"


def group(items: list[Item], scale: dict[str, float] | None) -> Groups:
    groups = Groups()
    for item in items:
        family, part, column = classify(item)
        if family == "name section (not shipped)":
            continue
        n = item.size * (scale[item.kind] if scale else 1.0)
        groups.add_family(family, round(n))
        groups.kinds[item.kind] = groups.kinds.get(item.kind, 0) + item.size
        if part is not None:
            groups.add_part(part, column, round(n))
    return groups


def fmt(n: float) -> str:
    return f"{round(n):,}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--twiggy", required=True)
    ap.add_argument("--named-raw", type=Path, required=True, help="cargo output, names kept")
    ap.add_argument("--named-opt", type=Path, required=True, help="the same after wasm-opt -Oz -g")
    ap.add_argument("--shipped", type=Path, required=True, help="make build's palisade.wasm")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()

    shipped = sections(args.shipped)
    shipped_total = args.shipped.stat().st_size
    raw_items = twiggy_items(args.twiggy, args.named_raw)
    opt_items = twiggy_items(args.twiggy, args.named_opt)
    raw_kinds = group(raw_items, None).kinds
    rest = shipped_total - shipped.get("code", 0) - shipped.get("data", 0)
    scale = {
        "function": shipped.get("code", 0) / raw_kinds.get("function", 1),
        "data": shipped.get("data", 0) / raw_kinds.get("data", 1),
        "other": rest / raw_kinds.get("other", 1),
    }
    raw = group(raw_items, None)
    est = group(raw_items, scale)
    opt = group(opt_items, None)

    total_raw = sum(raw.by_family.values())
    total_est = sum(est.by_family.values())
    lines: list[str] = []
    lines.append("# palisade.wasm size by dependency and by stage")
    lines.append("")
    lines.append(
        f"Shipped `{args.shipped}`: **{shipped_total:,} bytes** "
        f"({shipped_total / MIB:.1%} of 1 MiB; {MIB - shipped_total:,} bytes left). "
        f"Before wasm-opt (names and DWARF removed): {total_raw:,} bytes. "
        f"wasm-opt -Oz kept {scale['function']:.1%} of the code bytes and "
        f"{scale['data']:.1%} of the data bytes."
    )
    lines.append("")
    lines.append(
        "Columns: *before wasm-opt* is exact per function (LLVM's output, attributed by "
        "symbol name; what LLVM inlined counts for the caller). *Shipped, est.* scales that "
        "by the shrink of its section (proportional estimate; the column sums to the shipped "
        "size). *After -Oz, by name* is measured on a names-kept wasm-opt build, where "
        "wasm-opt's own inlining moves bytes to callers (e.g. configuration parsing into the "
        "filter's on_configure)."
    )
    lines.append("")
    lines.append("## By crate")
    lines.append("")
    lines.append("| crate (family) | before wasm-opt | shipped, est. | share | after -Oz, by name |")
    lines.append("|---|---:|---:|---:|---:|")
    for family, n in sorted(raw.by_family.items(), key=lambda kv: -kv[1]):
        e = est.by_family.get(family, 0)
        lines.append(
            f"| {family} | {fmt(n)} | {fmt(e)} | {e / total_est:.1%} | "
            f"{fmt(opt.by_family.get(family, 0))} |"
        )
    lines.append(f"| **total** | {fmt(total_raw)} | {fmt(total_est)} | 100% | "
                 f"{fmt(sum(opt.by_family.values()))} |")
    lines.append("")
    lines.append("## The core crate by stage and shared part")
    lines.append("")
    lines.append(
        "*own*: functions under that module's path (serde-derived deserializers of its "
        "configuration included). *generic*: std/alloc/core/hashbrown/serde/serde_json/"
        "serde_path_to_error code instantiated for that module's types (drop glue, Vec/"
        "HashMap of its types, deserializing its configuration)."
    )
    lines.append("")
    lines.append("| part | own, before wasm-opt | generic, before wasm-opt | shipped, est. | after -Oz, by name |")
    lines.append("|---|---:|---:|---:|---:|")
    parts = sorted(raw.by_part, key=lambda p: -(raw.by_part[p]["own"] + raw.by_part[p]["generic"]))
    for part in parts:
        r = raw.by_part[part]
        e = est.by_part.get(part, {"own": 0, "generic": 0})
        o = opt.by_part.get(part, {"own": 0, "generic": 0})
        lines.append(
            f"| {part} | {fmt(r['own'])} | {fmt(r['generic'])} | {fmt(e['own'] + e['generic'])} | "
            f"{fmt(o['own'] + o['generic'])} |"
        )
    core_est = sum(v["own"] + v["generic"] for v in est.by_part.values())
    lines.append(f"| **core total** | {fmt(sum(v['own'] for v in raw.by_part.values()))} | "
                 f"{fmt(sum(v['generic'] for v in raw.by_part.values()))} | {fmt(core_est)} | "
                 f"{fmt(sum(v['own'] + v['generic'] for v in opt.by_part.values()))} |")
    lines.append("")
    lines.append(f"## Largest functions before wasm-opt (top {args.top})")
    lines.append("")
    lines.append("| bytes | function | counted for |")
    lines.append("|---:|---|---|")
    funcs = sorted((i for i in raw_items if i.kind == "function"), key=lambda i: -i.size)
    for item in funcs[: args.top]:
        family, part, column = classify(item)
        where = f"{family}: {part} ({column})" if part else family
        name = clean(item.name).replace("|", "\\|")
        if len(name) > 140:
            name = name[:137] + "..."
        lines.append(f"| {fmt(item.size)} | `{name}` | {where} |")
    lines.append("")

    args.out.mkdir(parents=True, exist_ok=True)
    md = "\n".join(lines)
    (args.out / "size.md").write_text(md)
    (args.out / "size.json").write_text(
        json.dumps(
            {
                "shipped_bytes": shipped_total,
                "budget_bytes": MIB,
                "shipped_sections": shipped,
                "scale": scale,
                "by_crate": {
                    f: {"before_wasm_opt": n, "shipped_estimate": est.by_family.get(f, 0),
                        "after_opt_by_name": opt.by_family.get(f, 0)}
                    for f, n in raw.by_family.items()
                },
                "core_by_part": {
                    p: {"before_wasm_opt": raw.by_part[p],
                        "shipped_estimate": sum(est.by_part.get(p, {}).values()),
                        "after_opt_by_name": sum(opt.by_part.get(p, {}).values())}
                    for p in raw.by_part
                },
            },
            indent=2,
        )
        + "\n"
    )
    print(md)
    print(f"written: {args.out / 'size.md'}, {args.out / 'size.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
