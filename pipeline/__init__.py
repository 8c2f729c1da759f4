"""Offline stages of intclip: taxonomy -> LLM descriptions -> CLIP text embeddings."""
