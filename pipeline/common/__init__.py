"""Plumbing every stage shares: errors and exit codes, atomic files, safe loading of user files,
the console, start-up of heavy imports, devices, the HTTP retry policy.
"""
