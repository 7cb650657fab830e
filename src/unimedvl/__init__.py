"""UniMedVL platform: raw medical images and text -> a unified medical vision-language model."""

__version__ = "0.1.0"
