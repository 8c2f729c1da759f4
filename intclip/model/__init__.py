"""The IntCLIP network: sight-semantic encoder, sight-assisted aggregation, class text and learned
prompts, the class head.
"""
