"""NxDI's own Qwen3, judged by ``port_specs/qwen3_nxdi.toml``."""
