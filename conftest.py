"""Project-wide pytest settings for the harness's own tests and for staged verdicts.

The plugin itself is registered through the ``pytest11`` entry point of the installed package;
this file only makes every run hermetic: no hub access, no tokenizer thread pools.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
