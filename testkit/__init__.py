"""Stand-ins shared by the tests and the bench (not installed): a loopback OpenAI-compatible
server that both drive the real `openai` client against."""
