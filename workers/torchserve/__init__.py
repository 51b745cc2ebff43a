"""TorchServe, a runtime other than ours, running a registered version through our engine.

``archive`` turns a registry version into a ``.mar`` (safetensors weights, manifest, handler)
plus ``config.properties`` and a model-config YAML; ``handler`` is what TorchServe's Python
worker runs, so its answers are ours: same decoders, same engine, same JSON, same error codes.
"""
