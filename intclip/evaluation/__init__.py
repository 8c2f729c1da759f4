"""Using a trained run: evaluating it on a split, predicting on new images, recording results."""
