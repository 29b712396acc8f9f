"""envoy/ratelimit-service/Dockerfile, the image envoy/k8s/plain/ratelimit.yaml
runs, checked without a container engine: its base images are pinned by
version, its build steps use files that exist in its build context (the
service's directory) the way `make ratelimit-service` uses them, and what
the image runs agrees with the service's defaults and the Kubernetes
manifest.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import tomllib

import pytest

import deploy

SERVICE = deploy.REPO_ROOT / "envoy" / "ratelimit-service"
DOCKERFILE = SERVICE / "Dockerfile"
RATELIMIT_MANIFEST = deploy.REPO_ROOT / "envoy" / "k8s" / "plain" / "ratelimit.yaml"
# Where the build stage puts the build context (`COPY . envoy/ratelimit-service/`
# under WORKDIR /src): the repository layout fetch-limitador.sh and
# Cargo.toml's [patch.crates-io] path expect.
CONTEXT_IN_BUILD = "envoy/ratelimit-service"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, lines
    continued with a trailing backslash joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, args = whole.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def stages(text: str) -> list[dict]:
    """Each stage: its image, its name, and its instructions after FROM."""
    out: list[dict] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            words = args.split()
            assert not any(w.startswith("--") for w in words), f"FROM {args}: no flags (--platform) expected"
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            assert len(words) == 1 or name, f"FROM {args}"
            out.append({"image": words[0], "name": name, "steps": []})
        else:
            assert out, f"{keyword} before FROM"
            out[-1]["steps"].append((keyword, args))
    return out


def _tag(image: str) -> tuple[str, str]:
    assert "@" not in image, f"{image}: pinned by tag, as the other shipped images are"
    repository, _, tag = image.rpartition(":")
    assert repository and tag, f"{image}: no tag"
    return repository, tag


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def _cargo() -> dict:
    return tomllib.loads((SERVICE / "Cargo.toml").read_text())


def _service_default(flag: str) -> str:
    """The default of one of the service's flags (src/config.rs)."""
    config = (SERVICE / "src" / "config.rs").read_text()
    m = re.search(r'flag: "' + re.escape(flag) + r'",\s*env: "[A-Z_]+",\s*default: "([^"]+)"', config)
    assert m, f"no default for {flag} in src/config.rs"
    return m.group(1)


@pytest.fixture(scope="module")
def build_and_run() -> tuple[dict, dict]:
    build, run = stages(DOCKERFILE.read_text())
    assert build["name"], "the build stage is named, for COPY --from"
    return build, run


def _steps(stage: dict, keyword: str) -> list[str]:
    return [args for k, args in stage["steps"] if k == keyword]


def test_base_images_are_pinned(build_and_run):
    """The builder is Rust on Debian 12 at a version no older than the
    service's rust-version; the runtime is Debian 12 slim (the glibc the
    binary was linked against); both pinned to a version, as
    test_compose.py asks of the compose images."""
    build, run = build_and_run
    repository, tag = _tag(build["image"])
    m = re.fullmatch(r"(\d+\.\d+\.\d+)-bookworm", tag)
    assert repository == "rust" and m, f"{build['image']}: the official rust image, X.Y.Z-bookworm"
    assert _version(m.group(1)) >= _version(_cargo()["package"]["rust-version"]), (
        f"{build['image']}: older than the rust-version of Cargo.toml"
    )
    repository, tag = _tag(run["image"])
    assert repository == "debian" and re.fullmatch(r"12\.\d+-slim|bookworm-\d{8}-slim", tag), (
        f"{run['image']}: a pinned Debian 12 slim (12.N-slim or bookworm-YYYYMMDD-slim)"
    )


def test_build_steps_use_files_of_the_build_context(build_and_run):
    """The context (this directory) is copied to where the repository layout
    puts it; fetch-limitador.sh runs before cargo, which builds from the
    committed lock file; Cargo.toml's limitador patch path is where the
    script puts limitador."""
    build, _ = build_and_run
    (workdir,) = _steps(build, "WORKDIR")
    (copy,) = _steps(build, "COPY")
    source, destination = copy.split()
    assert source == "." and posixpath.normpath(destination) == CONTEXT_IN_BUILD, f"COPY {copy}"
    runs = _steps(build, "RUN")
    fetch = [i for i, r in enumerate(runs) if "fetch-limitador.sh" in r]
    cargo = [i for i, r in enumerate(runs) if r.startswith("cargo build")]
    assert len(fetch) == 1 and len(cargo) == 1 and fetch[0] < cargo[0], runs

    (script,) = shlex.split(runs[fetch[0]])
    assert posixpath.dirname(script) == CONTEXT_IN_BUILD
    local = SERVICE / posixpath.basename(script)
    assert local.is_file() and local.stat().st_mode & 0o111, f"{local}: missing or not executable"

    words = shlex.split(runs[cargo[0]])
    assert {"--release", "--locked"} <= set(words), f"{runs[cargo[0]]}: --release --locked, as make does"
    manifest = words[words.index("--manifest-path") + 1]
    assert posixpath.dirname(manifest) == CONTEXT_IN_BUILD and (SERVICE / posixpath.basename(manifest)).is_file()
    assert (SERVICE / "Cargo.lock").is_file(), "--locked needs the committed Cargo.lock"

    # [patch.crates-io] limitador = { path = ... } relative to the manifest,
    # and fetch-limitador.sh's <repository>/target/vendor/limitador-<version>.
    patch = _cargo()["patch"]["crates-io"]["limitador"]["path"]
    patched = posixpath.normpath(posixpath.join(workdir, CONTEXT_IN_BUILD, patch))
    text = local.read_text()
    version = re.search(r"^version=(\S+)$", text, re.M).group(1)
    assert 'vendor="$repo/target/vendor"' in text and 'dest="$vendor/limitador-${version}"' in text
    assert patched == posixpath.join(workdir, "target", "vendor", f"limitador-{version}"), patched


def test_runtime_runs_the_built_binary_as_a_user(build_and_run):
    """The binary the build stage made (its target directory, the [[bin]]
    name) is what the entrypoint runs, as a numeric non-root user that the
    Kubernetes manifest's runAsUser agrees with; it exposes the service's
    default ports."""
    build, run = build_and_run
    (env,) = [a for a in _steps(build, "ENV") if a.startswith("CARGO_TARGET_DIR=")]
    target_dir = env.split("=", 1)[1]
    (binary,) = [b["name"] for b in _cargo()["bin"]]
    (copy,) = _steps(run, "COPY")
    words = copy.split()
    assert words[0] == f"--from={build['name']}", copy
    assert words[1] == posixpath.join(target_dir, "release", binary), copy
    (entrypoint,) = _steps(run, "ENTRYPOINT")
    assert json.loads(entrypoint) == [words[2]], f"ENTRYPOINT {entrypoint}: the exec form, running the binary"

    (user,) = _steps(run, "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, f"USER {user}: numeric (runAsNonRoot can check it) and not root"
    (deployment,) = [d for d in deploy.yaml_docs(RATELIMIT_MANIFEST) if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod.get("runAsGroup")) == (int(uid), int(gid) if gid else None)

    (expose,) = _steps(run, "EXPOSE")
    defaults = {int(_service_default(f).rsplit(":", 1)[1]) for f in ("--listen", "--health-listen")}
    assert {int(p) for p in expose.split()} == defaults == {8080, 8081}


@pytest.mark.parametrize(
    "text, why",
    [
        ("FROM rust:latest AS build\nFROM debian:12.10-slim\n", "an unpinned builder"),
        ("FROM rust:1.87.0-bookworm AS build\nFROM debian:12.10-slim\n", "a Rust older than rust-version"),
        ("FROM rust:1.88.0-bookworm AS build\nFROM debian:bookworm-slim\n", "an unpinned runtime"),
        ("FROM rust:1.88.0-bookworm AS build\nFROM debian:13.1-slim\n", "another Debian than the builder's"),
        ("FROM rust:1.88.0-alpine AS build\nFROM debian:12.10-slim\n", "a musl builder"),
    ],
)
def test_pin_check_catches_mistakes(text, why):
    with pytest.raises(AssertionError):
        test_base_images_are_pinned(tuple(stages(text)))


def test_parser_joins_continued_lines_and_drops_comments():
    text = "# c\nFROM a:1 AS b\nRUN x \\\n  # inner\n  && y\nUSER 1:1\n"
    assert instructions(text) == [("FROM", "a:1 AS b"), ("RUN", "x && y"), ("USER", "1:1")]
