"""exif-keras: estimate how a photo was taken (shutter speed, aperture, ISO) from its pixels."""

import os

# TensorFlow's C++ start-up chatter (CUDA probing, CPU instruction sets) drowns the tools' own
# output; errors still show. Set TF_CPP_MIN_LOG_LEVEL yourself to see everything.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
