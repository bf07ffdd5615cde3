"""The endothelial-cell classifier family: data split and augmentation, training, scores, prediction and CAMs."""
