"""ichprep: head-CT DICOM slices -> a chunked Zarr store of windowed float16 images, fast and exact.

The public API: :mod:`ichprep.build` (``build``, ``BuildConfig``), :mod:`ichprep.store`
(``open_store``), :mod:`ichprep.windows`, :mod:`ichprep.labels`, :mod:`ichprep.synth`.
No TensorFlow is imported anywhere in this package.
"""

__version__ = "0.1.0"
