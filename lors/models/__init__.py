"""Models built on the lors core: ViT/DeiT classifier and the AdaMixer detector."""
