"""What the model sees and does: the backbone, its transforms, the batch path, Grad-CAM."""
