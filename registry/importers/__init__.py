"""Networks trained elsewhere in, and ours out: SpikingJelly ResNets, the Spikeformer authors'
checkpoints and NIR graphs become registry versions; DANet versions become NIR graphs.

Each importer renames foreign tensors onto one of our architectures (every tensor accounted for)
and registers the result through ``Registry.register``, with the source in the manifest's tags.
Nothing here imports torch or nir at module level.
"""
