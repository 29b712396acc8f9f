"""Install Wasmtime's C API headers for the NGINX build, with a matching conf.h.

`make nginx` builds Wasmtime's C API from the crates registry
(tests/nginx/wasmtime). The crate's build script writes wasmtime/conf.h with
cmake but knows no `wat` feature, so WASMTIME_FEATURE_WAT stays undefined and
ngx_wasm_module would then compile without `wasmtime_wat2wasm`. This script
copies the crate's include/ directory and writes wasmtime/conf.h from
conf.h.in itself: one `#define WASMTIME_FEATURE_<NAME>` per feature the
library was built with (the same list the Makefile passes to cargo), every
other `#cmakedefine` left undefined. conf.h.in itself defines
WASMTIME_FEATURE_COMPILER when cranelift is on.

    wasmtime_headers.py --manifest tests/nginx/wasmtime/Cargo.toml \
        --features "cranelift wasi ..." --out target/nginx/wasmtime/include
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

CRATE = "wasmtime-c-api-impl"
CMAKEDEFINE = re.compile(r"^#cmakedefine (WASMTIME_FEATURE_[A-Z0-9_]+)\s*$")


def crate_dir(manifest: Path, cargo: str) -> Path:
    """The source directory of the locked wasmtime-c-api-impl (cargo's registry copy)."""
    out = subprocess.run(
        [cargo, "metadata", "--format-version", "1", "--locked", "--manifest-path", str(manifest)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for package in json.loads(out)["packages"]:
        if package["name"] == CRATE:
            return Path(package["manifest_path"]).parent
    raise SystemExit(f"{CRATE} is not a dependency of {manifest}")


def render_conf(template: str, features: list[str]) -> str:
    """conf.h from conf.h.in: the enabled features defined, the others not."""
    wanted = {"WASMTIME_FEATURE_" + f.upper().replace("-", "_") for f in features}
    known: set[str] = set()
    lines = []
    for line in template.splitlines():
        m = CMAKEDEFINE.match(line)
        if m:
            name = m.group(1)
            known.add(name)
            line = f"#define {name}" if name in wanted else f"/* #undef {name} */"
        lines.append(line)
    unknown = sorted(wanted - known)
    if unknown:
        raise SystemExit(f"conf.h.in has no #cmakedefine for {', '.join(unknown)}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, required=True, help="the wrapper crate's Cargo.toml")
    parser.add_argument("--features", required=True, help="the cargo features the library was built with")
    parser.add_argument("--out", type=Path, required=True, help="include directory to (re)create")
    parser.add_argument("--cargo", default="cargo")
    args = parser.parse_args()

    src = crate_dir(args.manifest, args.cargo) / "include"
    conf = render_conf((src / "wasmtime" / "conf.h.in").read_text(), args.features.split())
    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(src, args.out, ignore=shutil.ignore_patterns("*.in"))
    (args.out / "wasmtime" / "conf.h").write_text(conf)
    defined = [line.split()[1] for line in conf.splitlines() if line.startswith("#define WASMTIME_FEATURE_")]
    print(f"wasmtime headers: {args.out} (conf.h: {' '.join(defined)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
