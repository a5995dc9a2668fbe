"""The models: their cards (card), ONNX classifiers (classifier), the registry of servable
versions (registry), and the version lifecycle - register, current, switch, rollback, reindex
(versions)."""
