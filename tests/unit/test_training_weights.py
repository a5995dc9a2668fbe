"""The backbone weights check, and `python -m training --help` without TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from artlens.digests import sha256_file
from training.__main__ import main
from training.weights import (
    SHARED_WEIGHTS,
    SHARED_WEIGHTS_SHA256,
    BackboneWeightsError,
    resolve_backbone_weights,
)


def test_help_does_not_import_tensorflow(tmp_path):
    """As the README runs it: the venv's python, from anywhere, without the Makefile's
    PYTHONPATH (make puts the checkout on the venv's path)."""
    code = (
        "import runpy, sys\n"
        "sys.argv = ['python -m training', '--help']\n"
        "try:\n"
        "    runpy.run_module('training', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "print('TF-LOADED' if 'tensorflow' in sys.modules or 'keras' in sys.modules else 'NO-TF')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "--backbone-weights" in out.stdout and "--input-size" in out.stdout
    assert "--labels FILE" in out.stdout  # curator labels (training/data.py)
    assert out.stdout.strip().endswith("NO-TF")


def test_missing_weights_file_is_refused(tmp_path):
    with pytest.raises(BackboneWeightsError, match="not found"):
        resolve_backbone_weights(tmp_path / "absent.weights.h5")


def test_wrong_hash_is_refused(tmp_path):
    fake = tmp_path / "mobilenet.weights.h5"
    fake.write_bytes(b"not the weights")
    with pytest.raises(BackboneWeightsError, match="SHA-256"):
        resolve_backbone_weights(fake, expected_sha256=SHARED_WEIGHTS_SHA256)
    # without an expected hash a user's own file is accepted and its digest recorded
    assert resolve_backbone_weights(fake)["sha256"] == sha256_file(fake)


def test_wrong_suffix_is_refused(tmp_path):
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(BackboneWeightsError, match="weights.h5"):
        resolve_backbone_weights(other)


def test_shared_weights_pass_their_pinned_hash():
    got = resolve_backbone_weights(None)
    assert got["weights"] == str(SHARED_WEIGHTS)
    assert got["sha256"] == SHARED_WEIGHTS_SHA256
    assert resolve_backbone_weights("imagenet")["weights"] == "imagenet"


def test_job_exits_with_a_clear_message_before_any_training(tmp_path, capsys):
    rc = main(
        [
            "--data",
            str(tmp_path),
            "--backbone-weights",
            str(tmp_path / "missing.weights.h5"),
            "--out",
            str(tmp_path / "out"),
            "--model-dir",
            str(tmp_path / "m"),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "backbone weights not found" in err and "--backbone-weights" in err
    assert not (tmp_path / "m").exists()
