"""ichtrain: stream an ichprep store into tf.data, train the reference study's models, calibrate,
evaluate them, and predict a submission CSV from raw DICOMs.

Modules: :mod:`ichtrain.data` (splits, sampling, the tf.data stream), :mod:`ichtrain.models`,
:mod:`ichtrain.calibration`, :mod:`ichtrain.metrics`, :mod:`ichtrain.fit`, :mod:`ichtrain.evaluate`,
:mod:`ichtrain.predict`. Importing this package does not import TensorFlow (install ``ichprep[train]``).
"""

from ichprep import __version__  # one distribution, one version

__all__ = ["__version__"]
