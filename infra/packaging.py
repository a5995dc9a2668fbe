"""Where ArtLens Lambda code runs, and how its Python packages are fetched for that place.

Standard library only (no aws_cdk, no artlens): the Makefile runs it before anything else, and
the infra tests use the same table to check every function's platform against the wheels.

Platform decision (issue 12). Every ArtLens function runs on Python 3.12 on Amazon Linux 2023
(glibc 2.34), x86_64: the container image from `public.ecr.aws/lambda/python:3.12` and the zip
functions on the managed `python3.12` runtime, so one set of wheels serves both packagings.
The pinned onnxruntime, numpy and Pillow publish manylinux_2_27/2_28 wheels only, which Amazon
Linux 2 (the python3.11 runtime and image, glibc 2.26) cannot install. The tests run on
Python 3.11; `tests/infra/test_platforms.py` resolves the lock for every function's real
platform (derived from the synthesized template and the Dockerfile) and for the test host.

    python3 -m infra.packaging layer [--out build/layer]     (make layer)
    python3 -m infra.packaging preflight [--layer-dir DIR]   (make deploy, before cdk deploy)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNTIME_LOCK = REPO_ROOT / "requirements" / "runtime.lock"
DOCKERFILE = REPO_ROOT / "lambdas" / "Dockerfile"
LIBRARY_DIR = REPO_ROOT / "layers" / "python" / "artlens"
MODEL_FILES = (REPO_ROOT / "models" / "artlens.onnx", REPO_ROOT / "models" / "artlens.json")
DEFAULT_LAYER_DIR = REPO_ROOT / "build" / "layer"
LAYER_MANIFEST = "layer.json"

# The zip functions' managed runtime and every function's architecture (the construct helper
# in infra/constructs/lambda_defaults.py builds its Runtime from these names).
LAMBDA_RUNTIME = "python3.12"
LAMBDA_ARCHITECTURE = "x86_64"


@dataclass(frozen=True)
class LambdaPlatform:
    """What a wheel must support to import on a Lambda runtime."""

    python: str  # "3.12"
    glibc: tuple[int, int]  # the OS's glibc: manylinux_<major>_<minor> and older install
    os_name: str


# Lambda's managed Python runtimes and the OS each runs on (AWS Lambda runtimes table).
MANAGED_RUNTIMES: dict[str, LambdaPlatform] = {
    "python3.11": LambdaPlatform("3.11", (2, 26), "Amazon Linux 2"),
    "python3.12": LambdaPlatform("3.12", (2, 34), "Amazon Linux 2023"),
    "python3.13": LambdaPlatform("3.13", (2, 34), "Amazon Linux 2023"),
}
# AWS's base images run the managed runtime of the same version (same OS, same interpreter).
_AWS_BASE_IMAGE = re.compile(
    r"^public\.ecr\.aws/lambda/python:(?P<version>3\.\d+)(?:[.\-][\w.\-]*)?"
    r"(?:@sha256:[0-9a-f]{64})?$"
)
# Lambda architecture names and Docker platforms -> the machine name in wheel tags.
WHEEL_MACHINE = {"x86_64": "x86_64", "arm64": "aarch64"}
DOCKER_PLATFORM_ARCHITECTURE = {"linux/amd64": "x86_64", "linux/arm64": "arm64"}

# Packages the layer leaves out: model inference runs only in the image (the zip functions,
# authorizer and migrate, never load the model). Their own dependencies go with them.
IMAGE_ONLY = frozenset({"onnxruntime"})


class PackagingError(RuntimeError):
    """A deploy artifact is missing or does not match what the stack expects."""


def platform_for_runtime(runtime: str) -> LambdaPlatform:
    if runtime not in MANAGED_RUNTIMES:
        raise PackagingError(f"unknown Lambda runtime {runtime!r}; add it to MANAGED_RUNTIMES")
    return MANAGED_RUNTIMES[runtime]


def dockerfile_base(dockerfile: Path = DOCKERFILE) -> str:
    """The image the Dockerfile builds FROM (single-stage; ARG-substituted bases are refused)."""
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words and words[0].upper() == "FROM":
            if "$" in words[1]:
                raise PackagingError(f"{dockerfile}: FROM {words[1]} is not a literal image")
            return words[1]
    raise PackagingError(f"{dockerfile} has no FROM line")


def platform_for_base_image(image: str) -> LambdaPlatform:
    match = _AWS_BASE_IMAGE.match(image)
    if not match:
        raise PackagingError(
            f"base image {image!r} is not an AWS Lambda Python base image; its platform is unknown"
        )
    return platform_for_runtime(f"python{match['version']}")


def manylinux_tags(glibc: tuple[int, int], architecture: str) -> list[str]:
    """Every manylinux tag a system with this glibc installs, newest first.

    pip's `--platform manylinux_2_34_x86_64` means exactly that tag (it does not imply the
    older ones a real glibc 2.34 system accepts), so each one is listed.
    """
    machine = WHEEL_MACHINE[architecture]
    major, minor = glibc
    tags = [f"manylinux_{major}_{m}_{machine}" for m in range(minor, 4, -1)]
    if minor >= 17:
        tags.append(f"manylinux2014_{machine}")
    if machine == "x86_64":
        tags += [f"manylinux2010_{machine}"] if minor >= 12 else []
        tags += [f"manylinux1_{machine}"]
    return tags


def pip_platform_args(platform: LambdaPlatform, architecture: str) -> list[str]:
    """pip options that select wheels for `platform` whatever machine pip runs on."""
    args: list[str] = []
    for tag in manylinux_tags(platform.glibc, architecture):
        args += ["--platform", tag]
    return args + [
        "--python-version", platform.python, "--implementation", "cp", "--only-binary=:all:",
    ]


# --- the lock ---------------------------------------------------------------------------------


@dataclass
class LockEntry:
    name: str
    version: str
    lines: list[str]  # the requirement line and its --hash lines, as written
    via: list[str] = field(default_factory=list)  # dependents, "-r ..." for top-level pins

    @property
    def hashes(self) -> list[str]:
        return [h for line in self.lines for h in re.findall(r"--hash=(\S+)", line)]


_LOCK_LINE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)")


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(path: Path = RUNTIME_LOCK) -> dict[str, LockEntry]:
    """name -> entry, from a `uv pip compile --generate-hashes` (or pip-compile) output."""
    entries: dict[str, LockEntry] = {}
    current: LockEntry | None = None
    in_via = False
    for raw in path.read_text().splitlines():
        match = _LOCK_LINE.match(raw)
        if match:
            current = LockEntry(canonical_name(match["name"]), match["version"], [raw])
            entries[current.name] = current
            in_via = False
            continue
        stripped = raw.strip()
        if current is None or not stripped:
            continue
        if stripped.startswith("--hash="):
            current.lines.append(raw)
        elif stripped.startswith("# via"):
            rest = stripped.removeprefix("# via").strip()
            in_via = not rest
            if rest:
                current.via.append(rest)
        elif in_via and stripped.startswith("#"):
            current.via.append(stripped.lstrip("#").strip())
    return entries


def layer_entries(lock: dict[str, LockEntry]) -> dict[str, LockEntry]:
    """The lock minus IMAGE_ONLY packages and what only they pull in."""
    dropped = {canonical_name(n) for n in IMAGE_ONLY}
    changed = True
    while changed:
        changed = False
        for name, entry in lock.items():
            top_level = any(v.startswith("-r") for v in entry.via)
            if name in dropped or top_level or not entry.via:
                continue
            if all(canonical_name(v) in dropped for v in entry.via):
                dropped.add(name)
                changed = True
    return {name: entry for name, entry in lock.items() if name not in dropped}


def file_digest(paths: Iterable[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def library_digest(library: Path = LIBRARY_DIR) -> str:
    files = [p for p in library.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return file_digest(files, library)


def layer_manifest(
    lock: Path = RUNTIME_LOCK,
    library: Path = LIBRARY_DIR,
    runtime: str = LAMBDA_RUNTIME,
    architecture: str = LAMBDA_ARCHITECTURE,
) -> dict[str, str]:
    """What a built layer must have been built from; compared before every deploy."""
    return {
        "runtime": runtime,
        "architecture": architecture,
        "lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest(),
        "library_sha256": library_digest(library),
    }


def build_layer(
    out: Path = DEFAULT_LAYER_DIR,
    *,
    lock: Path = RUNTIME_LOCK,
    library: Path = LIBRARY_DIR,
    runtime: str = LAMBDA_RUNTIME,
    architecture: str = LAMBDA_ARCHITECTURE,
    pip: Sequence[str] = (sys.executable, "-m", "pip"),
) -> dict[str, str]:
    """Build the zip functions' layer into `out` (`out/python/...` is what Lambda mounts).

    Wheels only, for the runtime's platform, installed from the lock with --require-hashes:
    works on any machine (no Docker) and installs exactly what the image installs.
    """
    platform = platform_for_runtime(runtime)
    if out.exists():
        shutil.rmtree(out)
    target = out / "python"
    target.mkdir(parents=True)
    wanted = layer_entries(parse_lock(lock))
    requirements = out / "requirements.lock"
    requirements.write_text("".join("\n".join(e.lines) + "\n" for e in wanted.values()))
    subprocess.run(
        [*pip, "install", "--quiet", "--no-deps", "--require-hashes", "--no-compile",
         *pip_platform_args(platform, architecture), "--target", str(target),
         "-r", str(requirements)],
        check=True,
    )
    shutil.copytree(library, target / library.name,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    manifest = layer_manifest(lock, library, runtime, architecture)
    (out / LAYER_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def check_layer(layer_dir: Path, expected: dict[str, str] | None = None) -> None:
    manifest_path = layer_dir / LAYER_MANIFEST
    if not manifest_path.is_file():
        raise PackagingError(
            f"the runtime layer is not built ({manifest_path} is missing): run `make layer` "
            "(the zip functions would deploy without their dependencies)"
        )
    built = json.loads(manifest_path.read_text())
    wanted = expected or layer_manifest()
    stale = sorted(k for k in wanted if built.get(k) != wanted[k])
    if stale:
        raise PackagingError(
            f"the runtime layer in {layer_dir} is stale ({', '.join(stale)} changed since it "
            "was built): run `make layer`"
        )


def preflight(layer_dir: Path = DEFAULT_LAYER_DIR, *, docker: str = "docker") -> list[str]:
    """Everything `cdk deploy` needs that synth does not check; [] when ready."""
    problems = []
    try:
        check_layer(layer_dir)
    except PackagingError as exc:
        problems.append(str(exc))
    for model in MODEL_FILES:
        if not model.is_file():
            problems.append(
                f"{model.relative_to(REPO_ROOT)} is missing: the image bakes the model in "
                "(restore models/ from git or run `make train`)"
            )
    if not RUNTIME_LOCK.is_file():
        problems.append(f"{RUNTIME_LOCK.relative_to(REPO_ROOT)} is missing: run `make lock`")
    if shutil.which(docker) is None:
        problems.append("no `docker` on PATH: cdk deploy builds the serving image with it")
    else:
        probe = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            problems.append(
                "the Docker engine is not reachable (`docker info` failed): cdk deploy builds "
                "the serving image with it"
            )
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.packaging", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    layer = commands.add_parser("layer", help="build the zip functions' layer")
    layer.add_argument("--out", type=Path, default=DEFAULT_LAYER_DIR)
    check = commands.add_parser("preflight", help="check deploy artifacts before cdk deploy")
    check.add_argument("--layer-dir", type=Path, default=DEFAULT_LAYER_DIR)
    args = parser.parse_args(argv)
    if args.command == "layer":
        manifest = build_layer(args.out)
        print(f"layer built in {args.out} for {manifest['runtime']} {manifest['architecture']}")
        return 0
    problems = preflight(args.layer_dir)
    for problem in problems:
        print(f"deploy preflight: {problem}", file=sys.stderr)
    if problems:
        return 1
    print("deploy preflight: layer, model, lock and Docker are ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
