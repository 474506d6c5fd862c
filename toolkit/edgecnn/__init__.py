"""edgecnn: compact image-classification CNNs from training to verified int8 on edge devices.

Importing this package imports nothing heavy: `edgecnn.runtime` must work on a device without torch.
"""

__version__ = "0.1.0"
