"""S-TLLR / BPTT learning engine for spiking neural networks."""
