"""Compiled forms of the selective scan: Numba (CPU training, ``scan_numba``) and OpenAI Triton
(GPU inference, ``scan_triton``). Leaves: they import nothing of the package, and nothing heavy is
imported with this package (``numba`` and ``triton`` load with their own module)."""
