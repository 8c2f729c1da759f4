"""Stage 2: frozen CLIP text embeddings of the class descriptions, their cache, and zero-shot
scores from them.
"""
