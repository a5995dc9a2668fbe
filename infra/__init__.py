"""The ArtLens CDK app: `python -m infra.app` (what `cdk synth` runs, see cdk.json).

Lake prefixes, CORS headers and environment variable names exist once, in the runtime library's
`artlens.names` (pure constants that import nothing), and the CDK app imports them from there.
The library lives in the layer's folder, so it is put on the path here: synth needs neither the
runtime's dependencies nor an installed package.
"""

import sys
from pathlib import Path

_LAYER_PYTHON = str(Path(__file__).resolve().parents[1] / "layers" / "python")
if _LAYER_PYTHON not in sys.path:
    sys.path.append(_LAYER_PYTHON)
