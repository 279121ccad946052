"""The inference engine as plain Python: paged KV cache, model runner, scheduler, sampling, output.

No bus, gRPC or HTTP here; the serving side (router, OpenAI API, gRPC, bus handlers) calls it.
"""
