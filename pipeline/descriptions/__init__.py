"""Stage 1: a taxonomy and prompt templates in, validated LLM class descriptions out (the reviewed
lock file), with review and diff.
"""
