"""The `intclip-prompts` command: a thin layer that parses arguments and calls the stages below."""
