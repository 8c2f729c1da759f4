"""CLIP itself, kept apart from what is done with it: the one loader of weights, whether weights
can be fetched, token counts without torch, text features, CLIP's image transform.
"""
