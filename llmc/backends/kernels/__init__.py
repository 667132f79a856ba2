"""Kernels: TE definitions shared by every target, scheduled CPU kernels, hand-written TIR."""
