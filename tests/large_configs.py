"""Real configurations of four 1-1.5 B models, written out from their config.json (nothing is downloaded).

Used by tests/test_large_configs.py (built on the meta device) and bench/large_models.py (built with random
weights).  PARAMETERS holds each model's published parameter count, tied embeddings counted once.
"""

LARGE_CONFIGS = {
    "llama-3.2-1b": dict(
        model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True, hidden_act="silu",
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
        bos_token_id=128000, eos_token_id=128001,
    ),
    "qwen2.5-1.5b": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=131072, rms_norm_eps=1e-6,
        rope_theta=1000000.0, use_sliding_window=False, sliding_window=131072, max_window_layers=28,
        tie_word_embeddings=True, hidden_act="silu", bos_token_id=151643, eos_token_id=151643,
    ),
    "gemma-3-1b": dict(
        model_type="gemma3_text", vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
        max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0, rope_local_base_freq=10000.0,
        layer_types=[("full_attention" if (i + 1) % 6 == 0 else "sliding_attention") for i in range(26)],
        tie_word_embeddings=True, hidden_activation="gelu_pytorch_tanh", bos_token_id=2, eos_token_id=1,
        pad_token_id=0,
    ),
    "opt-1.3b": dict(
        model_type="opt", vocab_size=50272, hidden_size=2048, ffn_dim=8192, num_hidden_layers=24,
        num_attention_heads=32, max_position_embeddings=2048, word_embed_proj_dim=2048, do_layer_norm_before=True,
        activation_function="relu", tie_word_embeddings=True, bos_token_id=2, eos_token_id=2, pad_token_id=1,
    ),
}

# Published sizes (model cards / the parameter count of the released checkpoints).
PARAMETERS = {"llama-3.2-1b": 1.24e9, "qwen2.5-1.5b": 1.54e9, "gemma-3-1b": 1.00e9, "opt-1.3b": 1.32e9}


def build_config(name: str):
    """The transformers config object of LARGE_CONFIGS[name]."""
    from transformers import AutoConfig

    values = dict(LARGE_CONFIGS[name])
    return AutoConfig.for_model(values.pop("model_type"), **values)
