"""The 1-D ``.npy`` layout the data stages stream: a header, then the raw elements.

Writers append elements after ``write_header`` instead of building the array in memory; readers
copy byte ranges after ``read_header`` instead of mapping the file.
"""

from __future__ import annotations

from typing import BinaryIO

import numpy as np

from rnn.errors import PipelineError


def write_header(f: BinaryIO, dtype: np.dtype, count: int) -> None:
    """The header of a C-order 1-D array of ``count`` elements; the elements follow."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
    np.lib.format.write_array_header_1_0(f, {**header, "shape": (count,)})


def read_header(f: BinaryIO) -> tuple[int, np.dtype, int]:
    """Length, dtype and byte offset of the 1-D array in an open ``.npy`` (versions 1 and 2)."""
    name = getattr(f, "name", "ids.npy")
    try:
        version = np.lib.format.read_magic(f)
        read = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }[version]
        shape, _, dtype = read(f)
    except (ValueError, KeyError):
        raise PipelineError(f"{name} is not a NumPy token-id file", "rerun `rnn vocab`") from None
    if len(shape) != 1:
        raise PipelineError(f"{name} holds a {len(shape)}-D array, not ids", "rerun `rnn vocab`")
    return shape[0], dtype, f.tell()
