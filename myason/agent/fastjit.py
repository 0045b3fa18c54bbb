"""Transition shim: the kernel registry moved to myason.kernels (registry, loader, kernels).

Use `from myason import kernels` (kernels.load(), kernels.load_or_none()) and
`from myason.kernels.registry import RO_BYTES, helper, kernel`. Removed once no module imports it.
"""
from myason.kernels.registry import RO_BYTES, helper, kernel, load, load_or_none  # noqa: F401
