"""The `intclip-train` command and the demo: thin layers that parse arguments and call the packages
below.
"""
