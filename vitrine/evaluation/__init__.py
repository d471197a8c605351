"""The study: cluster quality and suggestion accuracy of backbones on labelled photos."""
