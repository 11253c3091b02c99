"""Model ports. Each subpackage ports one HuggingFace architecture; shared blocks live in ``common``."""
