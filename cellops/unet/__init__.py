"""U-Net mitochondria segmentation of EM volumes: data (``data``), training (``train``), prediction (``predict``)."""
