"""The model in service and what answers are made of: the onnxruntime model, the holder that
swaps versions, micro-batching and the recommendation logic. No web code.

May import `service.state` and the top-level modules, never `service.api`.
"""
