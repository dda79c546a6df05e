"""Triton kernels. `_*_kernels.py` hold the @triton.jit kernels only; `idconv.py` / `osra.py` launch them and
register them as torch.library.triton_op custom ops (traceable by torch.compile)."""
