"""Mask R-CNN instance segmentation: annotations, data, training, evaluation and prediction."""
