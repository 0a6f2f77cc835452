"""ichtrain: stream an ichprep store into tf.data and train the reference study's models.

Not implemented yet: the data pipeline (issue 6) and the models, fit, evaluate and predict (issue 7)
are planned. Importing this package does not import TensorFlow.
"""

__version__ = "0.0.0"
