"""Talking to an LLM: settings, the OpenAI-compatible transport, the client with its answer cache,
and the local llama.cpp server.
"""
