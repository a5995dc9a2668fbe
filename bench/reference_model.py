"""python -m bench.reference_model OUT: a stand-in for the shipped model (quick mode, or when
models/ is empty): the 'improved' architecture, untrained, exported to ONNX by training.export
with its Keras original saved beside it. Timing does not depend on the weights' values."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CLASSES = ("drawings", "engraving", "iconography", "painting", "sculpture")


def build(out_dir: Path, config_name: str = "improved") -> Path:
    import numpy as np

    from training.export import PARITY_MIN_IMAGES, export_onnx, write_card
    from training.models import CONFIGS, build_model

    out_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(CONFIGS[config_name], len(CLASSES), seed=0)
    rng = np.random.default_rng(0)
    parity = rng.random((PARITY_MIN_IMAGES, 150, 150, 3), dtype=np.float32)
    onnx_path = out_dir / "artlens.onnx"
    diffs = export_onnx(model, onnx_path, parity)
    model.save(out_dir / "artlens.keras")
    card_path = out_dir / "artlens.json"
    write_card(
        card_path, onnx_path, name="artlens-bench", version=f"bench-{config_name}",
        classes=list(CLASSES),
        extra={"export_parity": diffs, "keras_file": "artlens.keras",
               "architecture": {"config": config_name}},
    )
    return card_path


if __name__ == "__main__":
    build(Path(sys.argv[1]), *(sys.argv[2:3]))
