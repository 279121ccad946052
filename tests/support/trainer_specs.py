"""A micro train spec the trainer tests share: a model and run small enough for seconds on a CPU."""

from contracts.events import ModelArchitecture, TrainSpec


def micro_spec(**overrides: object) -> TrainSpec:
    arch = ModelArchitecture(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        vocab_size=320,
    )
    values: dict[str, object] = dict(
        architecture=arch,
        seq_len=32,
        micro_batch_size=8,
        max_steps=40,
        learning_rate=1e-2,
        min_learning_rate=1e-3,
        warmup_steps=4,
        num_threads=2,
    )
    values.update(overrides)
    return TrainSpec.model_validate(values)
