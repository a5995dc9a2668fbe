"""Every Lambda function's dependencies exist as wheels for the platform it really runs on.

The platforms are read from what deploys, not restated: the synthesized template (each
function's package type, runtime and architecture; the layer's compatible runtimes), the image
asset's platform and the Dockerfile's FROM line. `pip download --only-binary=:all: --platform
... --python-version ... --implementation cp --require-hashes -r requirements/runtime.lock`
then has to find every package, transitive ones included, for each of them. The original break
(the python3.11 base, Amazon Linux 2, glibc 2.26) fails this check: see the last test.

Also here: the lock is complete, hashed and in step with runtime.txt; `make layer` builds a
layer for the zip runtime on this machine; `make deploy`'s preflight stops on a missing layer.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from infra import packaging
from tests.infra.conftest import REPO_ROOT

pytestmark = pytest.mark.slow
RUNTIME_TXT = REPO_ROOT / "requirements" / "runtime.txt"


def our_functions(synth) -> dict[str, dict]:
    return {
        k: f["Properties"]
        for k, f in synth.of_type("AWS::Lambda::Function").items()
        if f["Properties"].get("Environment", {}).get("Variables", {})
        .get("POWERTOOLS_SERVICE_NAME", "").startswith("artlens-")
    }


def deployed_platforms(synth) -> dict[tuple[packaging.LambdaPlatform, str], list[str]]:
    """(platform, architecture) -> the functions that run there, from the synthesized app."""
    (image,) = synth.assets["dockerImages"].values()
    context = synth.outdir / image["source"]["directory"]
    base = packaging.dockerfile_base(context / image["source"]["dockerFile"])
    image_platform = packaging.platform_for_base_image(base)
    image_arch = packaging.DOCKER_PLATFORM_ARCHITECTURE[image["source"]["platform"]]
    layers = synth.of_type("AWS::Lambda::LayerVersion")

    found: dict[tuple[packaging.LambdaPlatform, str], list[str]] = {}
    for logical_id, props in our_functions(synth).items():
        (arch,) = props["Architectures"]
        if props.get("PackageType") == "Image":
            assert arch == image_arch, f"{logical_id}: function {arch}, image built {image_arch}"
            platform = image_platform
        else:
            platform = packaging.platform_for_runtime(props["Runtime"])
            for ref in props.get("Layers", []):
                layer = layers[ref["Ref"]]["Properties"]
                assert props["Runtime"] in layer["CompatibleRuntimes"], logical_id
                assert arch in layer["CompatibleArchitectures"], logical_id
        found.setdefault((platform, arch), []).append(logical_id)
    return found


def pip_download(platform: packaging.LambdaPlatform, arch: str, dest: Path,
                 lock: Path = packaging.RUNTIME_LOCK) -> subprocess.CompletedProcess[str]:
    # Dependencies are resolved (no --no-deps): with --require-hashes any package the lock
    # misses fails the download, so this also proves the lock is transitively complete.
    return subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--require-hashes",
         *packaging.pip_platform_args(platform, arch), "--dest", str(dest), "-r", str(lock)],
        capture_output=True, text=True, timeout=900,
    )


def test_every_function_runs_on_a_platform_the_lock_has_wheels_for(dev, tmp_path):
    platforms = deployed_platforms(dev)
    assert sum(len(ids) for ids in platforms.values()) == 6  # 4 image + 2 zip functions
    for (platform, arch), function_ids in sorted(platforms.items(), key=str):
        dest = tmp_path / f"cp{platform.python}-{arch}"
        completed = pip_download(platform, arch, dest)
        assert completed.returncode == 0, (
            f"{function_ids} on {platform} {arch}:\n{completed.stderr[-3000:]}"
        )
        wheels = sorted(p.name for p in dest.glob("*.whl"))
        print(f"\n{platform.os_name} cp{platform.python} {arch} ({len(function_ids)} "
              f"functions): {len(wheels)} wheels")
        for wheel in wheels:
            print(f"  {wheel}")
        # Every pinned package has its wheel (a marker-only entry for another Python may not).
        names = {packaging.canonical_name(w.split("-")[0]) for w in wheels}
        assert set(top_level_pins()) <= names
        # Compiled wheels really are for this interpreter and no newer glibc than the OS has.
        tag = f"cp{platform.python.replace('.', '')}"
        for name in ("numpy", "onnxruntime", "pillow", "psycopg2_binary"):
            (wheel,) = [w for w in wheels if w.lower().startswith(name + "-")]
            assert f"-{tag}-" in wheel, wheel


def test_image_and_zip_functions_share_one_platform(dev):
    """One set of wheels for both packagings: the Dockerfile's base runs the zip runtime."""
    assert len(deployed_platforms(dev)) == 1
    base = packaging.dockerfile_base()
    assert packaging.platform_for_base_image(base) == packaging.platform_for_runtime(
        packaging.LAMBDA_RUNTIME
    )


def test_the_amazon_linux_2_runtime_would_have_been_caught(tmp_path):
    """The check fails for the platform the stack used before issue 12 (python3.11 on Amazon
    Linux 2, glibc 2.26): the pinned numpy, onnxruntime and Pillow have no wheel there."""
    old = packaging.platform_for_base_image("public.ecr.aws/lambda/python:3.11")
    assert old.glibc == (2, 26)
    completed = pip_download(old, "x86_64", tmp_path)
    assert completed.returncode != 0
    missing = re.search(r"No matching distribution found for (\S+)==", completed.stderr)
    assert missing and missing[1] in {"numpy", "onnxruntime", "pillow"}, completed.stderr[-2000:]


def test_manylinux_tags_cover_every_older_glibc():
    tags = packaging.manylinux_tags((2, 34), "x86_64")
    assert tags[0] == "manylinux_2_34_x86_64"
    assert {"manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
            "manylinux1_x86_64"} <= set(tags)
    assert "manylinux_2_35_x86_64" not in tags
    assert "manylinux_2_28_aarch64" in packaging.manylinux_tags((2, 34), "arm64")


def test_dockerfile_installs_the_lock_with_hashes():
    text = packaging.DOCKERFILE.read_text()
    (run,) = [line for line in text.replace("\\\n", " ").splitlines()
              if line.startswith("RUN pip install")]
    assert "--require-hashes" in run and "--only-binary=:all:" in run
    assert "requirements/runtime.lock" in text and "runtime.txt" not in text.split("FROM", 1)[1]


def top_level_pins(path: Path = RUNTIME_TXT) -> dict[str, str]:
    """A requirements file's `name==version` lines: name -> pinned version."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[packaging.canonical_name(name)] = version
    return pins


def test_lock_pins_every_package_with_hashes_and_matches_runtime_txt():
    lock = packaging.parse_lock()
    top_level = top_level_pins()
    assert top_level and set(top_level) <= set(lock)
    for name, version in top_level.items():
        assert lock[name].version == version, f"{name}: runtime.txt {version}, lock "\
            f"{lock[name].version}; run `make lock`"
    for entry in lock.values():
        assert entry.hashes and all(h.startswith("sha256:") for h in entry.hashes), entry.name
    # Transitive packages are there too (onnxruntime's, boto3's), not only the top level.
    assert {"flatbuffers", "protobuf", "s3transfer", "jmespath"} <= set(lock) - set(top_level)
    assert "tensorflow" not in lock and "tensorflow-cpu" not in lock


def test_infra_lock_is_in_step_with_infra_txt():
    """make synth/diff/deploy install .venv-infra from this lock (--require-hashes)."""
    requirements = REPO_ROOT / "requirements"
    lock = packaging.parse_lock(requirements / "infra.lock")
    pins = top_level_pins(requirements / "infra.txt")
    assert {"aws-cdk-lib", "constructs", "cdk-nag"} <= set(pins)
    for name, version in pins.items():
        assert lock[name].version == version, f"{name}: run `make lock`"
    assert all(entry.hashes for entry in lock.values())
    assert "jsii" in lock  # transitive


def test_make_layer_builds_for_the_zip_runtime_and_preflight_checks_it(tmp_path):
    out = tmp_path / "layer"
    manifest = packaging.build_layer(out)
    assert manifest["runtime"] == packaging.LAMBDA_RUNTIME
    python = out / "python"
    for package in ("numpy", "psycopg2", "pgvector", "PIL", "jwt", "aws_lambda_powertools",
                    "artlens"):
        assert (python / package).is_dir(), package
    assert not (python / "onnxruntime").exists()  # the image only
    # Extension modules built for the zip runtime's interpreter, not for this machine's 3.11.
    tag = packaging.platform_for_runtime(packaging.LAMBDA_RUNTIME).python.replace(".", "")
    extensions = [p.name for p in python.glob("numpy/**/*.so")]
    assert extensions and all(f"cpython-{tag}-x86_64-linux-gnu" in n for n in extensions)
    size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    print(f"\nlayer for {manifest['runtime']}: {size_mb:.1f} MB unzipped")
    assert size_mb < 250  # Lambda's limit for a function and its layers, unzipped

    packaging.check_layer(out)  # fresh: no error
    stale = json.loads((out / packaging.LAYER_MANIFEST).read_text())
    stale["lock_sha256"] = "0" * 64
    (out / packaging.LAYER_MANIFEST).write_text(json.dumps(stale))
    with pytest.raises(packaging.PackagingError, match="stale .*lock_sha256.*make layer"):
        packaging.check_layer(out)


def test_deploy_preflight_stops_early_with_a_clear_message(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    docker = fake_bin / "docker"
    docker.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    docker.chmod(0o755)
    problems = packaging.preflight(tmp_path / "no-layer", docker=str(docker))
    text = "\n".join(problems)
    assert "runtime layer is not built" in text and "make layer" in text
    assert "Docker engine is not reachable" in text
    completed = subprocess.run(
        [sys.executable, "-m", "infra.packaging", "preflight", "--layer-dir",
         str(tmp_path / "no-layer")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 1
    assert "deploy preflight: the runtime layer is not built" in completed.stderr
