"""Project-wide pytest settings for the harness's own tests and for staged verdicts.

The plugin itself is registered through the ``pytest11`` entry point of the installed package;
this file only makes every run hermetic: no hub access, no tokenizer thread pools.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from threads and a busy machine loses a lot to oversubscription; the same
# thread count everywhere also keeps low-precision kernels' sums in one order. Set yours to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
