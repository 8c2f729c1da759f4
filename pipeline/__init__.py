"""The offline stages: taxonomy -> LLM class descriptions -> frozen CLIP text embeddings.

Subpackages, each importing only those listed before it; a test holds this: `common`,
`clip` and `llm`, `descriptions`, `embeddings`, `cli`. Nothing here imports `intclip`.
"""
