"""The gateway's core as plain Python: the engine (paged KV cache, model runner, scheduler,
sampling, output), the model pool (load, warm, switch, drain), the routing policy over a table of
worker loads, tool-call parsing and the admission limits.

No bus, gRPC or HTTP here; the serving side (router, OpenAI API, gRPC, bus handlers) calls it.
"""
