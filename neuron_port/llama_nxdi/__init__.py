"""NxDI ports of Llama: NxDI's own model (``builtin``) and a small one written as an NxDI user would."""
