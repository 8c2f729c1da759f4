"""Images and labels in: annotation indexes, manifests, transforms, the image pipeline and loaders,
data checks, synthetic data.
"""
