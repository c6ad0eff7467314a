"""One SHA-256 for a set of named tensors, independent of dict order and file format.

The digest covers, for every tensor in sorted key order, its name, dtype, shape and raw
(C-order) bytes, so two models hash equal exactly when they hold the same values. It names the
model in the audit log, checks checkpoints for corruption, and gives replies a canonical order.
"""

import hashlib

import numpy as np


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """Hex SHA-256 of ``arrays`` in canonical key order."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        array = np.ascontiguousarray(arrays[key])
        header = f"{key}\0{array.dtype.str}\0{list(array.shape)}\0"
        digest.update(header.encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
