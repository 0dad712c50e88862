"""What outlives a request: the answer cache (Redis or in-process) and the interaction store
(a Redis stream or a file). May import the top-level modules only.
"""
