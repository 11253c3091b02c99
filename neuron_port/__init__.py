"""Model ports. Each subpackage ports one HuggingFace architecture; shared blocks are ``pytest_autoport.blocks``."""
