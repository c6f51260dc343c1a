"""Image similarity pipeline: ResNet50 local descriptors, bag of visual words, nearest neighbours."""

__version__ = "0.1.0"
