"""exif-keras: estimate how a photo was taken (shutter speed, aperture, ISO) from its pixels."""

__version__ = "0.1.0"
