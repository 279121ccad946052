"""What tests (and benchmarks) share, as plain importable modules, never through ``conftest``:

- ``tiny_model``: the one tiny Llama + byte-level BPE builder, and a reply taught to it;
- ``model_references``: a random-weight folder of every family ``shared.hf_models`` opens and the
  independent references that read it; ``evaluator_references`` adds the scoring reference;
- ``hf_folders``: InternLM's original code and ``sentencepiece`` (downloaded once), and their
  session fixtures;
- ``data``: datasets the tests write;
- ``auth_tokens``, ``fake_registry``, ``sandbox_escapes``: helpers of single concerns.
"""
