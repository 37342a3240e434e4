"""Training the segmentation model on the phantom (workstation side, PyTorch)."""
