"""Code shared by every Vitrine process: configuration, storage, vision and clustering."""
