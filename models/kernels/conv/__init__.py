"""Convolution kernels: the spike-driven conv of a CPU network's spike-fed layers (``spike_driven``);
the dense reference is torch's own conv."""
