"""Classical (non-learned) analyses: OpenCV, scikit-image and scipy on numpy arrays."""
